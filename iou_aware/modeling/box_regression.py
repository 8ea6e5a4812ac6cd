"""Box parameterizations and the configured box-regression loss, shared by both detectors."""

import torch
from detectron2.modeling.box_regression import Box2BoxTransform

from ..config import registered_values
from ..losses import BOX_LOSS_REGISTRY, BoxLoss
from ..losses.composition import sqrt_area

# Detectron2's own BBOX_REG_LOSS_TYPE values and the registry loss that computes the same thing.
STOCK_LOSS_NAMES = {"smooth_l1": "smooth_l1", "giou": "giou", "diou": "diou", "ciou": "ciou"}


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


class BoxRegressionLoss(BoxLoss):
    """The box loss chosen by ``MODEL.IOU_AWARE.BOX_LOSS``, per positive: the Detectron2 side of
    :class:`iou_aware.losses.composition.BoxLoss`, built from a config.

    ``__call__(src_boxes, pred_deltas, gt_boxes)`` (all ``(P, 4)``: anchors or proposals, predicted
    deltas, matched ground truth) returns ``(loss, ious)``: the weighted box loss of each positive
    ``(P,)`` and the IoU of each decoded box with its ground truth ``(P,)``, detached, which the
    IoU-balanced classification loss, the IoU head and the Task-Contrastive loss use.

    "deltas" losses compare predicted and target deltas of the chosen parameterization, summed
    over the 4 coordinates; "boxes" losses compare decoded boxes in units of ``sqrt(area(src))``
    (Peng & Yu Algorithm 1); what else a loss needs (Focal-EIoU's eq. 11 normalization, HIoU's
    added smooth-L1) is its registered ``compose`` hook.
    """

    @classmethod
    def from_config(cls, cfg, box2box_transform, stock_loss_type: str, stock_beta: float):
        """``MODEL.IOU_AWARE.BOX_LOSS`` (or, when "", the registry loss equal to the detector's
        ``stock_loss_type``) with its config keys; ``stock_beta`` is the detector's smooth-L1 beta,
        used where ``SMOOTH_L1_BETA`` is negative."""
        c = cfg.MODEL.IOU_AWARE
        name = c.BOX_LOSS or STOCK_LOSS_NAMES.get(stock_loss_type)
        if name is None:
            raise ValueError(
                f"MODEL.IOU_AWARE.BOX_LOSS is '' and the detector's BBOX_REG_LOSS_TYPE "
                f"{stock_loss_type!r} has no counterpart here; set MODEL.IOU_AWARE.BOX_LOSS"
            )
        return cls.from_values(
            name, registered_values(c, BOX_LOSS_REGISTRY, name), box2box_transform,
            weight=c.BOX_LOSS_WEIGHT, detector_defaults={"smooth_l1_beta": stock_beta},
        )
