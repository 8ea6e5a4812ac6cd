"""IoU-guided NMS (IoU-Net, Jiang et al. 2018, Algorithm 1), class-aware and vectorized.

How it is computed (kept set from torchvision's kernel, suppressor search, scatter-max) and why
it equals Algorithm 1: ``docs/nms.md``, "IoU-guided NMS".
"""

from __future__ import annotations

from typing import Tuple

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.nms)
from torch import Tensor

from . import suppressor
from ._common import (
    check_inputs,
    check_real,
    compute_dtype,
    empty_result,
    group_by_class,
    order_by_score,
)

# Boxes per kernel call: per-call overhead vs. the kernel's quadratic work (CPU) or bit mask (CUDA).
_NMS_GROUP_BOXES_CPU = 512
_NMS_GROUP_BOXES_CUDA = 16384


def _grouped_classwise_nms(
    boxes: Tensor, cls: Tensor, starts: Tensor, counts: Tensor, iou_threshold: float
) -> Tuple[Tensor, Tensor]:
    """Per-class greedy NMS of class-major, rank-ordered float64 ``boxes``.

    Consecutive classes are packed into groups of about ``_NMS_GROUP_BOXES_*`` boxes; inside a group
    each class is translated by its own multiple of the coordinate span (exact in float64) so that
    classes cannot overlap, and one torchvision kernel call, fed a strictly decreasing ramp so that
    it visits the boxes in the given order, handles the group. A negative threshold gives every
    class its own call (the zero IoU between shifted classes would count).

    Returns ``(keep_mask, shifted_boxes)``; the shifted boxes let later overlap tests reproduce the
    kernel's arithmetic bit for bit.
    """
    n = boxes.shape[0]
    device = boxes.device
    num_classes = counts.shape[0]
    lo = boxes.min()
    span = torch.ceil(boxes.max() - lo) + 1.0
    group_boxes = _NMS_GROUP_BOXES_CUDA if device.type == "cuda" else _NMS_GROUP_BOXES_CPU
    if iou_threshold < 0:  # IoU 0 of shifted classes would exceed t: one kernel call per class
        group = torch.arange(num_classes, device=device)
    else:
        group = torch.div(starts, group_boxes, rounding_mode="floor")
    first_of_group = torch.ones(num_classes, dtype=torch.bool, device=device)
    first_of_group[1:] = group[1:] != group[:-1]
    class_ids = torch.arange(num_classes, device=device)
    first_class = torch.cummax(torch.where(first_of_group, class_ids, 0), 0).values
    slot = (class_ids - first_class).to(boxes.dtype)
    shifted = (boxes - lo) + (slot * span).index_select(0, cls).unsqueeze(1)
    ramp = torch.arange(n, 0, -1, dtype=boxes.dtype, device=device)

    bounds = starts[first_of_group].tolist() + [n]
    nms = torch.ops.torchvision.nms
    if len(bounds) == 2:
        kept = nms(shifted, ramp, iou_threshold)
    else:
        kept = torch.cat(
            [
                nms(shifted[a:b], ramp[a:b], iou_threshold) + a
                for a, b in zip(bounds[:-1], bounds[1:])
            ]
        )
    keep_mask = torch.zeros(n, dtype=torch.bool, device=device)
    keep_mask[kept] = True
    return keep_mask, shifted


def iou_guided_nms(
    boxes: Tensor, scores: Tensor, ious: Tensor, idxs: Tensor, iou_threshold: float
) -> Tuple[Tensor, Tensor]:
    """IoU-guided NMS (IoU-Net, Jiang et al. 2018, Algorithm 1), class-aware.

    Boxes are ranked by their predicted localization confidence ``ious`` (ties: lower index
    first). The highest-ranked remaining box ``b_m`` is kept and every remaining box of its class
    with ``IoU(b_m, b_j) > iou_threshold`` is removed; the kept box's output score is
    ``max(s_m, max_j s_j)`` over itself and the boxes it removed, so the box that localizes best
    survives and carries the best classification score of its cluster.

    Vectorized (no Python loop over boxes): the kept set is the standard NMS result when ranking
    by ``ious`` (decisions in float64); each removed box's suppressor is the first kept box of its
    class, in rank order, that overlaps it above the threshold (:mod:`.suppressor`); the scores
    are combined with a scatter-max.

    Returns ``(keep, out_scores)``, sorted by output score (highest first, ties by index).
    """
    check_inputs(boxes, scores=scores, ious=ious, idxs=idxs)
    iou_threshold = check_real(iou_threshold, "iou_threshold")
    dtype = compute_dtype(scores)
    n = boxes.shape[0]
    if n == 0:
        return empty_result(boxes, dtype)
    scores = scores.to(dtype)
    rank_key = ious.to(compute_dtype(ious))
    order = torch.argsort(rank_key, descending=True, stable=True)
    perm, cls, starts, counts = group_by_class(idxs, order)
    sorted_boxes = boxes[perm].to(torch.float64)
    keep_mask, shifted = _grouped_classwise_nms(sorted_boxes, cls, starts, counts, iou_threshold)

    removed_idx, kept_idx = suppressor._suppressor_of_removed(
        sorted_boxes, shifted, keep_mask, cls, iou_threshold
    )
    sorted_scores = scores.index_select(0, perm)
    keep = perm[keep_mask]
    out = sorted_scores[keep_mask]
    out = out.scatter_reduce(
        0,
        kept_idx,
        sorted_scores[~keep_mask].index_select(0, removed_idx),
        reduce="amax",
        include_self=True,
    )
    return order_by_score(keep, out)
