"""The classification side of ``MODEL.IOU_AWARE.CLS_LOSS``, shared by both detectors.

Both detectors reduce their classification loss to one value per sample (RetinaNet: the sigmoid
focal loss summed over classes of an anchor; Faster R-CNN: the softmax cross-entropy of a
proposal) and call :func:`combine_cls_and_box_losses` with the per-positive box losses.
"""

from typing import Dict

import torch

from ..losses import harmonic_loss, iou_balanced_classification_weights, task_contrastive_loss


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
