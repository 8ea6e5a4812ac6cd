"""The NMS chosen by ``MODEL.IOU_AWARE.NMS.TYPE``, shared by both detectors: any type of
``iou_aware.nms.NMS_REGISTRY``, called with the arguments its config keys declare."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ..config import registered_values
from ..nms import NMS_REGISTRY, nms_needs_ious


@dataclass(frozen=True)
class NMSConfig:
    """The NMS type, the detector's IoU threshold, the type's config values
    (``{dotted key under MODEL.IOU_AWARE: value}``, e.g. ``{"NMS.FUSION_ALPHA": 0.5}``), and the
    options of every type: suppression across classes (``NMS.CLASS_AGNOSTIC``) and the threshold
    on the output scores (``NMS.OUTPUT_SCORE_THRESH``)."""

    type: str = "standard"
    iou_threshold: float = 0.5
    values: Dict[str, Any] = field(default_factory=dict)
    class_agnostic: bool = False
    output_score_thresh: float = 0.0

    @classmethod
    def from_config(cls, cfg, iou_threshold: float, type_override: Optional[str] = None):
        c = cfg.MODEL.IOU_AWARE
        name = type_override or c.NMS.TYPE
        return cls(
            type=name, iou_threshold=iou_threshold, values=registered_values(c, NMS_REGISTRY, name),
            class_agnostic=c.NMS.CLASS_AGNOSTIC, output_score_thresh=c.NMS.OUTPUT_SCORE_THRESH,
        )

    @property
    def is_stock(self) -> bool:
        """Detectron2's own per-class NMS would give the same detections."""
        return self.type == "standard" and not self.class_agnostic and self.output_score_thresh <= 0


def run_nms(
    cfg: NMSConfig, boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
    ious: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The configured NMS: ``(keep, out_scores, out_boxes)``, best first.

    Per class, or across classes with ``class_agnostic`` (every box in one group; the caller keeps
    each box's own class). ``out_scores`` are what the detector outputs: the classification score
    (standard), the fused score (score_fused), the cluster's best classification score
    (iou_guided), the decayed score (soft), or what a registered type returns; outputs whose score
    is below ``output_score_thresh`` are dropped, after the NMS (the caller then keeps the best
    DETECTIONS_PER_IMAGE). ``out_boxes`` are ``boxes[keep]``, or the boxes a type returns as its
    third value (box fusion).
    """
    groups = torch.zeros_like(classes) if cfg.class_agnostic else classes
    keep, out_scores, out_boxes = _run_type(cfg, boxes, scores, groups, ious)
    if cfg.output_score_thresh > 0:
        ok = out_scores >= cfg.output_score_thresh
        keep, out_scores, out_boxes = keep[ok], out_scores[ok], out_boxes[ok]
    return keep, out_scores, out_boxes


def _run_type(cfg: NMSConfig, boxes, scores, classes, ious):
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
