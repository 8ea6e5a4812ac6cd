"""The classification side of ``MODEL.IOU_AWARE.CLS_LOSS``, shared by the detectors.

The detectors reduce their classification loss to one value per sample (RetinaNet and FCOS: the
sigmoid focal loss summed over classes of an anchor, :func:`dense_cls_and_box_losses`; Faster
R-CNN: the softmax cross-entropy of a proposal) and call :func:`combine_cls_and_box_losses` with
the per-positive box losses. The dense detectors' joint classification-quality losses (Quality
Focal Loss, Varifocal Loss) replace the focal loss element-wise: :func:`quality_cls_loss`.
"""

from typing import Dict

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss

from ..config import ONE_STAGE_CLS_LOSSES
from ..losses import (
    harmonic_loss,
    iou_balanced_classification_weights,
    quality_focal_loss,
    task_contrastive_loss,
    varifocal_loss,
)


def harmonic_detach(cfg, detector: str) -> bool:
    """Resolve HARMONIC.DETACH_FACTORS ("auto" -> per detector, see config.py)."""
    mode = cfg.MODEL.IOU_AWARE.HARMONIC.DETACH_FACTORS
    if mode == "auto":
        return detector == "rcnn"
    return mode == "both"


def combine_cls_and_box_losses(
    c, cls_pos: torch.Tensor, cls_neg_sum: torch.Tensor, loc: torch.Tensor, ious: torch.Tensor,
    p_gt: torch.Tensor, probs: torch.Tensor, detach_factors: bool,
) -> Dict[str, torch.Tensor]:
    """Sums (not yet normalized) of the loss terms for ``c = cfg.MODEL.IOU_AWARE``.

    Args:
        cls_pos: (P,) classification loss of each positive sample.
        cls_neg_sum: scalar, classification loss summed over negative samples.
        loc: (P,) box loss of each positive (``BoxRegressionLoss``).
        ious: (P,) detached IoU of each positive's decoded box with its ground truth.
        p_gt: (P,) predicted probability of each positive's ground-truth class.
        probs: (P, C) class probabilities of the positives (softmax rows or sigmoid scores),
            for the entropy weight of the Task-Contrastive loss.

    Returns: ``loss_cls`` and ``loss_box_reg``, or with CLS_LOSS "harmonic" ``loss_cls`` (negatives)
    and ``loss_harmonic`` (Wang & Zhang eq. 12 summed over positives) and optionally ``loss_tc``.
    """
    if c.CLS_LOSS == "":
        return {"loss_cls": cls_pos.sum() + cls_neg_sum, "loss_box_reg": loc.sum()}
    if c.CLS_LOSS == "iou_balanced":
        # Wu & Li eq. 1-2: positives re-weighted by IoU^eta, normalized to keep their loss sum
        w = iou_balanced_classification_weights(ious, cls_pos, eta=c.IOU_BALANCED_CLS.ETA)
        return {"loss_cls": (w * cls_pos).sum() + cls_neg_sum, "loss_box_reg": loc.sum()}
    # Wang & Zhang eq. 12-13: harmonic pairing of each positive's classification and full
    # localization loss, plus the Task-Contrastive term; negatives keep their plain loss
    out = {
        "loss_cls": cls_neg_sum,
        "loss_harmonic": harmonic_loss(cls_pos, loc, detach_factors=detach_factors, reduction="sum"),
    }
    if c.HARMONIC.TC_LOSS:
        tc = task_contrastive_loss(p_gt, ious, probs, margin=c.HARMONIC.TC_MARGIN, reduction="sum")
        out["loss_tc"] = tc * c.HARMONIC.TC_WEIGHT
    return out


def quality_targets(logits: torch.Tensor, labels: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:
    """Soft targets of the joint classification-quality losses: ``(M, K)`` zeros, except the IoU
    of each positive's decoded box with its ground truth at its ground-truth class (GFL's ``y``,
    VarifocalNet's ``q``).

    ``logits``: ``(M, K)``; ``labels``: ``(M,)`` in ``[0, K]`` (``K`` = background); ``ious``:
    ``(P,)`` detached IoUs of the positives, in the order in which ``labels < K`` selects them.
    """
    num_classes = logits.shape[1]
    pos = labels < num_classes
    targets = torch.zeros_like(logits, dtype=torch.promote_types(logits.dtype, torch.float32))
    targets[pos, labels[pos]] = ious.detach().to(targets.dtype)
    return targets


def quality_cls_loss(c, logits: torch.Tensor, labels: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:
    """``CLS_LOSS`` "quality_focal" (Li et al., GFL) or "varifocal" (Zhang et al., VarifocalNet)
    summed over the ``(M, K)`` logits of the anchors that count, for ``c = cfg.MODEL.IOU_AWARE``;
    the caller normalizes the sum as it does the focal loss's."""
    targets = quality_targets(logits, labels, ious)
    if c.CLS_LOSS == "quality_focal":
        return quality_focal_loss(logits, targets, beta=c.QFL.BETA, reduction="sum")
    if c.CLS_LOSS == "varifocal":
        return varifocal_loss(logits, targets, alpha=c.VFL.ALPHA, gamma=c.VFL.GAMMA, reduction="sum")
    raise ValueError(f"MODEL.IOU_AWARE.CLS_LOSS {c.CLS_LOSS!r} is not a joint classification-quality loss")


def dense_cls_and_box_losses(
    c, logits: torch.Tensor, labels: torch.Tensor, loc: torch.Tensor, ious: torch.Tensor,
    focal_alpha: float, focal_gamma: float, detach_factors: bool,
) -> Dict[str, torch.Tensor]:
    """The classification and box loss sums of a dense (sigmoid) detector: ``loss_cls`` and
    ``loss_box_reg`` (or the harmonic terms, see :func:`combine_cls_and_box_losses`).

    Args:
        logits: ``(M, K)`` classification logits of the anchors that count (RetinaNet: not ignored).
        labels: ``(M,)`` their labels in ``[0, K]``, ``K`` = background.
        loc, ious: ``(P,)`` box loss and detached IoU of the positives (``labels < K``, in order).
        focal_alpha, focal_gamma: the detector's sigmoid focal loss (Lin et al.), used unless
            ``c.CLS_LOSS`` is a joint classification-quality loss.
    """
    if c.CLS_LOSS in ONE_STAGE_CLS_LOSSES:
        return {"loss_cls": quality_cls_loss(c, logits, labels, ious), "loss_box_reg": loc.sum()}
    num_classes = logits.shape[1]
    targets = F.one_hot(labels, num_classes=num_classes + 1)[:, :-1]
    cls_elem = sigmoid_focal_loss(
        logits, targets.to(logits.dtype), alpha=focal_alpha, gamma=focal_gamma, reduction="none"
    )
    cls_per_anchor = cls_elem.sum(dim=1)
    pos = labels < num_classes
    pos_probs = logits[pos].sigmoid()
    p_gt = pos_probs.gather(1, labels[pos][:, None]).squeeze(1)
    return combine_cls_and_box_losses(
        c, cls_per_anchor[pos], cls_per_anchor[~pos].sum(), loc, ious, p_gt, pos_probs, detach_factors,
    )
