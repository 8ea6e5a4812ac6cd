"""Score-fused NMS: NMS on ``score^(1 - alpha) * iou^alpha`` (IoU-aware RetinaNet, PAA)."""

from __future__ import annotations

from typing import Tuple

from torch import Tensor
from torchvision.ops import batched_nms as _tv_batched_nms

from ._common import check_inputs, check_real, compute_dtype, empty_result, order_by_score


def fuse_scores(scores: Tensor, ious: Tensor, alpha: float = 0.5) -> Tensor:
    """``scores^(1 - alpha) * ious^alpha`` with ``ious`` clamped to ``[0, 1]``.

    ``alpha = 0`` returns the scores unchanged (plain NMS), ``alpha = 1`` the clamped IoUs, and
    ``alpha = 0.5`` the geometric mean ``sqrt(score * iou)`` of IoU-aware RetinaNet and PAA.
    For ``0 < alpha < 1`` negative scores are clamped to 0 (a fractional power needs them >= 0).
    """
    alpha = check_real(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    dtype = compute_dtype(scores, ious)
    scores = scores.to(dtype)
    if alpha == 0.0:
        return scores.clone()
    ious = ious.to(dtype).clamp(0.0, 1.0)
    if alpha == 1.0:
        return ious
    return scores.clamp(min=0.0).pow(1.0 - alpha) * ious.pow(alpha)


def score_fused_nms(
    boxes: Tensor,
    scores: Tensor,
    ious: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    alpha: float = 0.5,
) -> Tuple[Tensor, Tensor]:
    """Score-fused NMS: class-aware NMS on ``fused = scores^(1 - alpha) * ious^alpha``.

    ``ious`` are predicted localization qualities (clamped to ``[0, 1]``); ``alpha`` in ``[0, 1]``
    (0: plain NMS on scores; 0.5: ``sqrt(score * iou)`` of IoU-aware RetinaNet / PAA; 1: rank by
    IoU alone). The fused value is the returned detection score, since it is what AP ranks by.

    Returns ``(keep, fused_scores[keep])``, sorted by fused score (highest first, ties by index).
    """
    check_inputs(boxes, scores=scores, ious=ious, idxs=idxs)
    iou_threshold = check_real(iou_threshold, "iou_threshold")
    fused = fuse_scores(scores, ious, alpha)
    dtype = compute_dtype(boxes, fused)
    if boxes.shape[0] == 0:
        return empty_result(boxes, dtype)
    fused = fused.to(dtype)
    keep = _tv_batched_nms(boxes.to(dtype), fused, idxs, iou_threshold)
    return order_by_score(keep, fused[keep])
