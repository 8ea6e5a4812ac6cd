"""The NMS chosen by ``MODEL.IOU_AWARE.NMS.TYPE``, shared by both detectors: any type of
``iou_aware.nms.NMS_REGISTRY``, called with the arguments its config keys declare."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ..config import registered_values
from ..nms import NMS_REGISTRY, nms_needs_ious


@dataclass(frozen=True)
class NMSConfig:
    """The NMS type, the detector's IoU threshold and the type's config values
    (``{dotted key under MODEL.IOU_AWARE: value}``, e.g. ``{"NMS.FUSION_ALPHA": 0.5}``)."""

    type: str = "standard"
    iou_threshold: float = 0.5
    values: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg, iou_threshold: float, type_override: Optional[str] = None):
        c = cfg.MODEL.IOU_AWARE
        name = type_override or c.NMS.TYPE
        return cls(type=name, iou_threshold=iou_threshold, values=registered_values(c, NMS_REGISTRY, name))


def run_nms(
    cfg: NMSConfig, boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
    ious: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-aware NMS of the configured type: ``(keep, out_scores, out_boxes)``, best first.

    ``out_scores`` are what the detector outputs: the classification score (standard), the fused
    score (score_fused), the cluster's best classification score (iou_guided), the decayed score
    (soft), or what a registered type returns. ``out_boxes`` are ``boxes[keep]``, or the boxes a
    type returns as its third value (box fusion).
    """
    entry = NMS_REGISTRY.get(cfg.type)
    kwargs = NMS_REGISTRY.arguments(cfg.type, cfg.values)
    if nms_needs_ious(cfg.type):
        if ious is None:
            raise ValueError(f"NMS type {cfg.type!r} needs predicted IoUs (enable the IoU head)")
        kwargs["ious"] = ious
    result = entry.fn(boxes, scores, classes, cfg.iou_threshold, **kwargs)
    return _check_result(cfg.type, result, boxes)


def _check_result(name, result, boxes):
    """``(keep, out_scores, out_boxes)`` from what NMS type ``name`` returned, or a ValueError
    saying what the protocol asks for."""
    fn = NMS_REGISTRY.get(name).fn
    what = f"NMS type {name!r} ({getattr(fn, '__qualname__', repr(fn))})"
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        got = _describe(result) + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        raise ValueError(f"{what} must return (keep, out_scores) or (keep, out_scores, out_boxes), got {got}")
    keep, out_scores, *out_boxes = result
    integer = isinstance(keep, torch.Tensor) and not (
        keep.is_floating_point() or keep.is_complex() or keep.dtype == torch.bool
    )
    if not (integer and keep.dim() == 1):
        raise ValueError(f"{what}: keep must be 1-D int64 indices into the input boxes, got {_describe(keep)}")
    keep = keep.long()
    k = keep.shape[0]
    if not (isinstance(out_scores, torch.Tensor) and tuple(out_scores.shape) == (k,)):
        raise ValueError(f"{what}: out_scores must have shape ({k},), aligned with keep, got {_describe(out_scores)}")
    if not out_boxes:
        return keep, out_scores, boxes[keep]
    out_boxes = out_boxes[0]
    if not (isinstance(out_boxes, torch.Tensor) and tuple(out_boxes.shape) == (k, 4)):
        raise ValueError(f"{what}: out_boxes must have shape ({k}, 4), aligned with keep, got {_describe(out_boxes)}")
    return keep, out_scores, out_boxes


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
