"""Pure-torch losses of the five papers (no Detectron2 import).

Box losses take aligned ``(N, 4)`` ``x1, y1, x2, y2`` pairs ``pred, target``; element-wise
regression losses (smooth-L1, FocalL1, IoU-balanced smooth-L1) take any matching shapes.
Every loss takes ``reduction="none" | "sum" | "mean"``. Box losses are registered where they are
defined (``registry``: :func:`register_box_loss`, the names ``MODEL.IOU_AWARE.BOX_LOSS`` accepts and
their config keys); ``composition`` composes the per-positive box loss as the detectors do.
"""

from .iou_losses import (
    alpha_iou_loss,
    ciou_loss,
    diou_loss,
    efficient_iou_loss,
    focal_efficient_iou_loss,
    giou_loss,
    harmonic_iou_loss,
    iou_loss,
    smooth_extended_iou_loss,
)
from .regression import focal_l1_loss, iou_balanced_smooth_l1_loss, smooth_l1_loss
from .classification import (
    harmonic_loss,
    iou_balanced_classification_weights,
    iou_kl_loss,
    task_contrastive_loss,
)
from .registry import BOX_LOSS_REGISTRY, BOX_LOSSES, build_box_loss, register_box_loss
from .composition import BoxLoss, BoxPairs
from .quality import quality_focal_loss, varifocal_loss

__all__ = [
    "smooth_l1_loss",
    "iou_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "efficient_iou_loss",
    "focal_efficient_iou_loss",
    "alpha_iou_loss",
    "harmonic_iou_loss",
    "smooth_extended_iou_loss",
    "focal_l1_loss",
    "iou_balanced_smooth_l1_loss",
    "iou_balanced_classification_weights",
    "harmonic_loss",
    "task_contrastive_loss",
    "iou_kl_loss",
    "BOX_LOSS_REGISTRY",
    "BOX_LOSSES",
    "build_box_loss",
    "register_box_loss",
    "BoxLoss",
    "BoxPairs",
    "quality_focal_loss",
    "varifocal_loss",
]
