"""Box parameterizations and the configured box-regression loss, shared by both detectors."""

from typing import Tuple

import torch
from detectron2.modeling.box_regression import Box2BoxTransform

from ..geometry import aligned_iou
from ..losses import build_box_loss, smooth_l1_loss
from ..losses.registry import BOX_LOSS_INPUTS

# Detectron2's own BBOX_REG_LOSS_TYPE values and the registry loss that computes the same thing.
STOCK_LOSS_NAMES = {"smooth_l1": "smooth_l1", "giou": "giou", "diou": "diou", "ciou": "ciou"}


def sqrt_area(boxes: torch.Tensor, min_scale: float = 1e-3) -> torch.Tensor:
    """``S = sqrt(area)`` of each box (Peng & Yu Algorithm 1), at least ``min_scale``."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return (wh[:, 0] * wh[:, 1]).sqrt().clamp(min=min_scale)


class CornerBoxTransform:
    """Corner parameterization of Peng & Yu (sec. IV, Algorithm 1).

    With ``S = sqrt(area(src))`` the regression targets are the four corner offsets divided by S:
    ``d = (target - src) / S``, and ``apply_deltas(d, src) = src + d * S``. Unlike Detectron2's
    centre/size deltas, one scale S normalizes all four coordinates, so the width/height ratio of the
    boxes is kept (the paper's argument). Same interface as ``Box2BoxTransform``: deltas may be
    ``(N, 4 * k)`` for ``k`` class-specific boxes.
    """

    def __init__(self, min_scale: float = 1e-3):
        self.min_scale = min_scale
        # Detectron2's box predictors read the box dimension from len(weights); corners take none.
        self.weights = (1.0, 1.0, 1.0, 1.0)

    def scale(self, boxes: torch.Tensor) -> torch.Tensor:
        return sqrt_area(boxes, self.min_scale)

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        return (target_boxes - src_boxes) / self.scale(src_boxes)[:, None]

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        boxes = boxes.to(deltas.dtype)
        n = deltas.shape[0]
        d = deltas.view(n, deltas.shape[1] // 4, 4)
        out = boxes[:, None, :] + d * self.scale(boxes)[:, None, None]
        return out.reshape(deltas.shape)


def build_box_transform(cfg, weights):
    """Box2BoxTransform(weights) for "deltas", CornerBoxTransform for "corners"."""
    if cfg.MODEL.IOU_AWARE.BOX_PARAMETERIZATION == "corners":
        return CornerBoxTransform()
    return Box2BoxTransform(weights=weights)


class BoxRegressionLoss:
    """The box loss chosen by ``MODEL.IOU_AWARE.BOX_LOSS``, per positive.

    ``__call__(src_boxes, pred_deltas, gt_boxes)`` (all ``(P, 4)``: anchors or proposals, predicted
    deltas, matched ground truth) returns ``(loss, ious)``: the weighted box loss of each positive
    ``(P,)`` and the IoU of each decoded box with its ground truth ``(P,)``, detached, which the
    IoU-balanced classification loss, the IoU head and the Task-Contrastive loss use.

    Losses of kind "deltas" (smooth_l1, focal_l1, iou_balanced_smooth_l1) compare predicted and
    target deltas of the chosen parameterization, summed over the 4 coordinates. IoU-type losses
    compare decoded boxes expressed in units of ``sqrt(area(src))`` (Peng & Yu Algorithm 1). All
    IoU-type values are invariant to that scaling; only the steady optimization technique of
    Smooth-EIoU (gradient times U_e, eq. 28) depends on it, and is thereby scale-invariant as the
    paper intends, whichever parameterization is used.
    """

    def __init__(self, name: str, params: dict, box2box_transform, weight: float = 1.0,
                 hiou_smooth_l1_beta: float = None):
        self.name = name
        self.kind = BOX_LOSS_INPUTS[name]
        self.loss_fn = build_box_loss(name, **params)
        self.transform = box2box_transform
        self.weight = weight
        # harmonic_iou with ADD_SMOOTH_L1: smooth-L1 + alpha * HIoU (Wang & Zhang eq. 11)
        self.hiou_smooth_l1_beta = hiou_smooth_l1_beta
        self.hiou_alpha = 1.0

    @classmethod
    def from_config(cls, cfg, box2box_transform, stock_loss_type: str, stock_beta: float):
        c = cfg.MODEL.IOU_AWARE
        name = c.BOX_LOSS or STOCK_LOSS_NAMES.get(stock_loss_type)
        if name is None:
            raise ValueError(
                f"MODEL.IOU_AWARE.BOX_LOSS is '' and the detector's BBOX_REG_LOSS_TYPE "
                f"{stock_loss_type!r} has no counterpart here; set MODEL.IOU_AWARE.BOX_LOSS"
            )
        beta = stock_beta if c.SMOOTH_L1_BETA < 0 else c.SMOOTH_L1_BETA
        params = {
            "smooth_l1": dict(beta=beta),
            "iou": dict(mode=c.IOU_MODE),
            "alpha_iou": dict(
                alpha=c.ALPHA_IOU.ALPHA,
                penalty=c.ALPHA_IOU.PENALTY,
                alpha_penalty=None if c.ALPHA_IOU.ALPHA_PENALTY < 0 else c.ALPHA_IOU.ALPHA_PENALTY,
                box_cox=c.ALPHA_IOU.BOX_COX,
            ),
            "focal_efficient_iou": dict(gamma=c.FOCAL_EIOU.GAMMA),
            "harmonic_iou": dict(gamma=c.HIOU.GAMMA),
            "smooth_extended_iou": dict(power=c.SMOOTH_EIOU.POWER, sot=c.SMOOTH_EIOU.SOT),
            "focal_l1": dict(beta=c.FOCAL_L1.BETA),
            "iou_balanced_smooth_l1": dict(
                lam=c.IOU_BALANCED_LOC.LAMBDA,
                beta=beta,
                loc_weight=c.IOU_BALANCED_LOC.LOC_WEIGHT,
                normalize=c.IOU_BALANCED_LOC.NORMALIZE,
            ),
        }.get(name, {})
        obj = cls(name, params, box2box_transform, weight=c.BOX_LOSS_WEIGHT,
                  hiou_smooth_l1_beta=beta if (name == "harmonic_iou" and c.HIOU.ADD_SMOOTH_L1) else None)
        if obj.hiou_smooth_l1_beta is not None:
            obj.hiou_alpha = c.HIOU.ALPHA
        return obj

    def __call__(self, src_boxes, pred_deltas, gt_boxes) -> Tuple[torch.Tensor, torch.Tensor]:
        pred_boxes = self.transform.apply_deltas(pred_deltas, src_boxes)
        with torch.no_grad():
            ious = aligned_iou(pred_boxes.float(), gt_boxes.float()).clamp(0.0, 1.0)
        if self.kind == "deltas":
            gt_deltas = self.transform.get_deltas(src_boxes, gt_boxes)
            if self.name == "iou_balanced_smooth_l1":
                loss = self.loss_fn(pred_deltas, gt_deltas, ious)
            else:
                loss = self.loss_fn(pred_deltas, gt_deltas).sum(dim=1)
        else:
            s = sqrt_area(src_boxes)[:, None]
            loss = self.loss_fn(pred_boxes / s, gt_boxes / s)
            if self.name == "focal_efficient_iou" and loss.numel():
                # eq. 11 normalizes by the sum of the IoU^gamma weights, not the number of boxes:
                # rescale so that summing and dividing by the detector's positive count gives it
                w = ious.pow(self.loss_fn.keywords["gamma"])
                loss = loss * (loss.numel() / w.sum().clamp(min=1e-6))
            if self.hiou_smooth_l1_beta is not None:
                gt_deltas = self.transform.get_deltas(src_boxes, gt_boxes)
                l1 = smooth_l1_loss(pred_deltas, gt_deltas, beta=self.hiou_smooth_l1_beta).sum(dim=1)
                loss = l1 + self.hiou_alpha * loss
        return loss * self.weight, ious
