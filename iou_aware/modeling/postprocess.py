"""The NMS chosen by ``MODEL.IOU_AWARE.NMS``, shared by both detectors."""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .. import nms as nms_ops


@dataclass(frozen=True)
class NMSConfig:
    type: str = "standard"
    iou_threshold: float = 0.5
    fusion_alpha: float = 0.5
    soft_method: str = "gaussian"
    soft_sigma: float = 0.5
    soft_score_thresh: float = 0.001

    @classmethod
    def from_config(cls, cfg, iou_threshold: float, type_override: Optional[str] = None):
        c = cfg.MODEL.IOU_AWARE.NMS
        return cls(
            type=type_override or c.TYPE,
            iou_threshold=iou_threshold,
            fusion_alpha=c.FUSION_ALPHA,
            soft_method=c.SOFT_METHOD,
            soft_sigma=c.SOFT_SIGMA,
            soft_score_thresh=c.SOFT_SCORE_THRESH,
        )

    @property
    def needs_ious(self) -> bool:
        return self.type in ("score_fused", "iou_guided")


def run_nms(
    cfg: NMSConfig, boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
    ious: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Class-aware NMS of the configured type: ``(keep, scores of the kept boxes)``, best first.

    The returned scores are what the detector outputs: the classification score (standard), the
    fused score (score_fused), the cluster's best classification score (iou_guided) or the decayed
    score (soft).
    """
    if cfg.type == "standard":
        keep = nms_ops.batched_nms(boxes, scores, classes, cfg.iou_threshold)
        return keep, scores[keep]
    if cfg.type == "soft":
        return nms_ops.soft_nms(
            boxes, scores, classes, sigma=cfg.soft_sigma, iou_threshold=cfg.iou_threshold,
            method=cfg.soft_method, score_threshold=cfg.soft_score_thresh,
        )
    if ious is None:
        raise ValueError(f"NMS type {cfg.type!r} needs predicted IoUs (enable the IoU head)")
    if cfg.type == "score_fused":
        return nms_ops.score_fused_nms(boxes, scores, ious, classes, cfg.iou_threshold, alpha=cfg.fusion_alpha)
    if cfg.type == "iou_guided":
        return nms_ops.iou_guided_nms(boxes, scores, ious, classes, cfg.iou_threshold)
    raise ValueError(f"Unknown NMS type {cfg.type!r}")
