"""Non-maximum suppression and ranking variants (pure torch + torchvision ops, no Detectron2).

All functions follow torchvision's argument order (``boxes, scores, ..., idxs, iou_threshold``),
take ``(N, 4)`` absolute ``x1, y1, x2, y2`` boxes, are class-aware (``idxs`` is the class of each
box; boxes of different classes never suppress each other), run on CPU and CUDA tensors, and
return ``keep``: int64 indices into the input, sorted by the returned score, highest first, ties
by ascending index.

- :func:`batched_nms`: the stock baseline (torchvision's ``batched_nms``).
- :func:`iou_guided_nms`: IoU-guided NMS (IoU-Net, Jiang et al. 2018, Algorithm 1; used by Peng &
  Yu with their IoU head): rank by predicted localization confidence, keep the box that localizes
  best and give it the best classification score of the cluster it suppresses.
- :func:`score_fused_nms`: NMS on ``score^(1 - alpha) * iou^alpha`` (IoU-aware RetinaNet, PAA).
- :func:`soft_nms`: Soft-NMS (Bodla et al. 2017), linear and gaussian decay.

Conventions shared by the functions here:

- "IoU > threshold" suppresses, as in torchvision (a pair exactly at the threshold survives).
- Ties in the ranking key are broken by ascending input index (stable sort), so results are
  deterministic and identical on CPU and CUDA.
- float16/bfloat16 (and integer) boxes and scores are computed in float32; float64 stays float64.
  Returned scores have that computation dtype.
- The overlap decisions of :func:`iou_guided_nms` are made in float64 (exact for float32 and
  float16 coordinates of ordinary magnitude), so they agree with a float64 reference of
  Algorithm 1; torchvision's class-offset trick rounds shifted float32 coordinates and can decide
  a pair whose IoU lies within about 1e-5 of the threshold the other way.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.nms)
from torch import Tensor
from torchvision.ops import batched_nms as _tv_batched_nms

__all__ = ["batched_nms", "iou_guided_nms", "score_fused_nms", "soft_nms", "fuse_scores"]

# Classes are handed to torchvision's NMS kernel in groups of about this many boxes (class-major,
# each class shifted by its own offset). One kernel call costs ~50 us of fixed overhead on CPU, and
# inside a group the kernel compares every kept box with all later boxes of the group, so the best
# group size balances calls against that quadratic work. On CUDA the kernel is parallel and one call
# for everything is best, up to the size where its N x N / 64 bit mask gets large (as torchvision).
_NMS_GROUP_BOXES_CPU = 512
_NMS_GROUP_BOXES_CUDA = 16384
# About how many (kept, suppressed) candidate pairs IoU-guided NMS tests at once. It bounds the
# memory; on CPU, chunks this small also stay in cache (the pair tests ran about 1.5x faster per
# pair in chunks of 16k than 100k at once). On CUDA, where every chunk costs kernel launches and a
# host sync, chunks are large.
_MAX_PAIRS_PER_CHUNK_CPU = 1 << 14
_MAX_PAIRS_PER_CHUNK_CUDA = 1 << 20
# IoU-guided NMS tests every (kept, removed) pair of a class at once while the padded per-class
# blocks hold at most this many pairs, and searches a spatial grid beyond (see
# _suppressor_of_removed). Set with tools/benchmark_nms_detector.py on the candidates of trained
# detectors on the synthetic data (CPU, one thread, 24 images each): Faster R-CNN's 56-377 per
# image (300-12k pairs) took 37.8 ms in all with the dense test, 49.5 ms with the grid;
# RetinaNet's 500-1,950 (23k-220k pairs) were about even up to 85k pairs and faster with the grid
# above 100k (134 against 125 ms in all; 123 with this limit). On CUDA, where the pairs are tested
# in parallel, the limit is a memory bound (a few float64 blocks of 4M elements), not a measured
# crossover.
_DENSE_PAIRS_CPU = 1 << 15
_DENSE_PAIRS_CUDA = 1 << 22


# ----------------------------------------------------------------------------------------------
# validation and small helpers
# ----------------------------------------------------------------------------------------------


def _check_inputs(boxes: Tensor, **per_box: Tensor) -> None:
    """Raise a clear ``ValueError`` unless ``boxes`` is ``(N, 4)`` and the others are ``(N,)``."""
    if not isinstance(boxes, Tensor):
        raise ValueError(
            f"boxes must be a torch.Tensor of shape (N, 4), got {type(boxes).__name__}"
        )
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    for name, t in per_box.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (N,), got {type(t).__name__}")
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(
                f"{name} must have shape (N,) with N = {n} (one per box), got {tuple(t.shape)}"
            )
        if t.device != boxes.device:
            raise ValueError(f"{name} is on {t.device} but boxes are on {boxes.device}")


def _check_threshold(value: float, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if math.isnan(value):
        raise ValueError(f"{name} must be a real number, got nan")
    return value


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16/integers are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _empty(boxes: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    return (
        torch.empty(0, dtype=torch.int64, device=boxes.device),
        torch.empty(0, dtype=dtype, device=boxes.device),
    )


def _order_by_score(keep: Tensor, score: Tensor) -> Tuple[Tensor, Tensor]:
    """Sort ``keep`` by ``score`` (aligned with it) descending, ties by ascending index."""
    keep, by_index = keep.sort()
    score = score[by_index]
    order = torch.argsort(score, descending=True, stable=True)
    return keep[order], score[order]


def _group_by_class(idxs: Tensor, order: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Regroup the permutation ``order`` class-major, keeping ``order``'s sequence within a class.

    Returns ``perm`` (positions -> input index), ``cls`` (dense class id 0..C-1 per position,
    non-decreasing), ``starts`` and ``counts`` (first position and size of each class).
    """
    n = order.shape[0]
    by_class = torch.argsort(idxs[order], stable=True)
    perm = order[by_class]
    sorted_idxs = idxs[perm]
    new = torch.ones(n, dtype=torch.bool, device=idxs.device)
    new[1:] = sorted_idxs[1:] != sorted_idxs[:-1]
    cls = torch.cumsum(new, 0) - 1
    starts = torch.nonzero(new).squeeze(1)
    counts = torch.diff(starts, append=starts.new_tensor([n]))
    return perm, cls, starts, counts


# ----------------------------------------------------------------------------------------------
# stock baseline
# ----------------------------------------------------------------------------------------------


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: torchvision's ``batched_nms`` (the stock Detectron2 behaviour).

    Greedily keeps the highest-scoring box and removes every remaining box of its class whose IoU
    with it is ``> iou_threshold``. Returns int64 indices of the kept boxes, sorted by score
    (highest first, ties by ascending index). fp16/bf16 input is computed in float32.
    """
    _check_inputs(boxes, scores=scores, idxs=idxs)
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    dtype = _compute_dtype(boxes, scores)
    if boxes.shape[0] == 0:
        return _empty(boxes, dtype)[0]
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    keep = _tv_batched_nms(boxes, scores, idxs, iou_threshold)
    return _order_by_score(keep, scores[keep])[0]


# ----------------------------------------------------------------------------------------------
# score-fused NMS
# ----------------------------------------------------------------------------------------------


def fuse_scores(scores: Tensor, ious: Tensor, alpha: float = 0.5) -> Tensor:
    """``scores^(1 - alpha) * ious^alpha`` with ``ious`` clamped to ``[0, 1]``.

    ``alpha = 0`` returns the scores unchanged (plain NMS), ``alpha = 1`` the clamped IoUs, and
    ``alpha = 0.5`` the geometric mean ``sqrt(score * iou)`` of IoU-aware RetinaNet and PAA.
    For ``0 < alpha < 1`` negative scores are clamped to 0 (a fractional power needs them >= 0).
    """
    alpha = _check_threshold(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    dtype = _compute_dtype(scores, ious)
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
    _check_inputs(boxes, scores=scores, ious=ious, idxs=idxs)
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    fused = fuse_scores(scores, ious, alpha)
    dtype = _compute_dtype(boxes, fused)
    if boxes.shape[0] == 0:
        return _empty(boxes, dtype)
    fused = fused.to(dtype)
    keep = _tv_batched_nms(boxes.to(dtype), fused, idxs, iou_threshold)
    return _order_by_score(keep, fused[keep])


# ----------------------------------------------------------------------------------------------
# IoU-guided NMS
# ----------------------------------------------------------------------------------------------


def _grouped_classwise_nms(
    boxes: Tensor, cls: Tensor, starts: Tensor, counts: Tensor, iou_threshold: float
) -> Tuple[Tensor, Tensor]:
    """Per-class greedy NMS of class-major, rank-ordered float64 ``boxes``.

    Consecutive classes are packed into groups of about ``_NMS_GROUP_BOXES_*`` boxes; inside a group
    each class is translated by its own multiple of the coordinate span so that classes cannot
    overlap, and one torchvision kernel call (fed a strictly decreasing ramp, so it visits boxes in
    exactly the given order) handles the group. The translation is exact in float64 for ordinary
    coordinates, so IoUs of the shifted boxes equal those of the input boxes. (A negative
    threshold would let the zero IoU between shifted classes count: then every class gets its own
    call.)

    Returns ``(keep_mask, shifted_boxes)``; the shifted boxes are returned so that later overlap
    tests reproduce the kernel's arithmetic bit for bit.
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


def _overlap_above(k: Tuple[Tensor, ...], r: Tuple[Tensor, ...], threshold: float) -> Tensor:
    """``IoU(k_i, r_i) > threshold`` for aligned pairs given as ``x1, y1, x2, y2, area`` columns
    (``area = (x2 - x1) * (y2 - y1)``, computed once per box as the kernel does).

    Same arithmetic, operand order and comparison as torchvision's CPU NMS kernel (``k`` plays its
    kept box), so on the same coordinates every decision agrees with the kernel's. The CUDA kernel
    compares with a float32 threshold (the caller passes that) and may be compiled with fused
    multiply-adds, which could decide a pair whose IoU is within the last bit of rounding of the
    threshold the other way; on CUDA that edge case is not verified.
    """
    kx1, ky1, kx2, ky2, k_area = k
    rx1, ry1, rx2, ry2, r_area = r
    w = torch.minimum(kx2, rx2).sub_(torch.maximum(kx1, rx1)).clamp_(min=0)
    h = torch.minimum(ky2, ry2).sub_(torch.maximum(ky1, ry1)).clamp_(min=0)
    inter = w.mul_(h)
    union = (k_area + r_area).sub_(inter)
    return inter.div_(union) > threshold


_CELL_FACTOR = 3.0


def _centre_window(iou_threshold: float) -> float:
    """``g(t) = (1 - t) / (2t)``: ``IoU(k, r) > t`` (``0 < t < 1``) implies
    ``|cx_k - cx_r| < g(t) * min(w_k, w_r)`` and the same for heights (proof in
    :func:`_suppressor_by_grid`; the bound is tight). ``g(1/2) = 1/2``, ``g(0.7) = 0.21``."""
    t = iou_threshold
    return (1.0 - t) / (2.0 * t)


def _suppressor_of_removed(
    boxes: Tensor, shifted: Tensor, keep_mask: Tensor, cls: Tensor, iou_threshold: float
) -> Tuple[Tensor, Tensor]:
    """For every removed box, the first kept box (in rank order) of its class that overlaps it.

    ``boxes`` (float64) are class-major and rank-ordered within a class, ``shifted`` the same boxes
    as the NMS kernel saw them, ``keep_mask`` its result. In Algorithm 1 a box is removed by the
    first kept box that overlaps it above the threshold. That box is also the first, in rank order,
    of all kept boxes of the class that overlap it above the threshold: a kept box ranked before it
    that overlapped the removed box would have removed it first. So no rank condition between the
    two boxes is needed, only same class and overlap.

    Two searches give the same answer; the cheaper is chosen from the class sizes:

    - dense (:func:`_suppressor_dense`): every (kept, removed) pair of a class, one padded block per
      class. Few tensor operations; used while the padded blocks hold at most
      ``_DENSE_PAIRS_*`` pairs (detector outputs: hundreds to a few thousand candidates spread
      over classes).
    - grid (:func:`_suppressor_by_grid`): only pairs close enough in space to reach the threshold,
      for large classes where the dense blocks would be big.

    Returns ``(removed_idx, kept_idx)``: for each removed box that found its suppressor, its index
    into ``nonzero(~keep_mask)`` and the suppressor's index into ``nonzero(keep_mask)``.
    """
    empty = torch.empty(0, dtype=torch.int64, device=boxes.device)
    kept_pos = torch.nonzero(keep_mask).squeeze(1)
    removed_pos = torch.nonzero(~keep_mask).squeeze(1)
    if removed_pos.numel() == 0:
        return empty, empty
    # torchvision's CUDA kernel compares with the threshold as a float32; its CPU kernel as given
    if boxes.device.type == "cuda":
        iou_threshold = float(torch.tensor(iou_threshold, dtype=torch.float32))
    # kept and removed boxes per class (cls is a dense, non-decreasing class id per position)
    num_classes = int(cls[-1]) + 1
    kept_per_class = torch.bincount(cls.index_select(0, kept_pos), minlength=num_classes)
    removed_per_class = torch.bincount(cls.index_select(0, removed_pos), minlength=num_classes)
    most_kept, most_removed = torch.stack([kept_per_class.max(), removed_per_class.max()]).tolist()
    limit = _DENSE_PAIRS_CUDA if boxes.device.type == "cuda" else _DENSE_PAIRS_CPU
    if num_classes * most_kept * most_removed <= limit:
        return _suppressor_dense(
            shifted, cls, kept_pos, removed_pos, kept_per_class, removed_per_class,
            most_kept, most_removed, iou_threshold,
        )
    return _suppressor_by_grid(boxes, shifted, cls, kept_pos, removed_pos, iou_threshold)


def _box_columns(shifted: Tensor) -> Tensor:
    """``(5, N)`` rows ``x1, y1, x2, y2, area``, each area computed once, as the kernel does."""
    x1, y1, x2, y2 = shifted.t()
    return torch.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)])


def _slot_in_class(cls_of: Tensor, per_class: Tensor) -> Tuple[Tensor, Tensor]:
    """For a class-major list of boxes with classes ``cls_of``: each box's place within its class
    and the list index where each class begins."""
    begins = torch.cumsum(per_class, 0) - per_class
    slot = torch.arange(cls_of.numel(), device=cls_of.device) - begins.index_select(0, cls_of)
    return slot, begins


def _suppressor_dense(
    shifted: Tensor,
    cls: Tensor,
    kept_pos: Tensor,
    removed_pos: Tensor,
    kept_per_class: Tensor,
    removed_per_class: Tensor,
    most_kept: int,
    most_removed: int,
    iou_threshold: float,
) -> Tuple[Tensor, Tensor]:
    """:func:`_suppressor_of_removed` by testing every (kept, removed) pair of each class.

    Kept boxes fill a ``(classes, most_kept)`` block in rank order, removed boxes a
    ``(classes, most_removed)`` one; padding slots hold NaN, whose IoU and rank comparisons are
    always false, so they need no mask. The pairs of the broadcast
    ``(classes, most_kept, most_removed)`` block that overlap above the threshold, with the kept box
    ranked above the removed one, are the candidates; the first along the kept axis is the first
    in rank order. (The rank condition is implied when the overlap decisions are the kernel's,
    which they are on CPU; it is kept so that a near-threshold pair decided differently on CUDA can
    never hand a score to a box ranked below, as in the grid search.)
    """
    num_classes = kept_per_class.shape[0]
    rank = torch.arange(shifted.shape[0], dtype=shifted.dtype, device=shifted.device)
    columns = torch.cat([_box_columns(shifted), rank.unsqueeze(0)])  # x1, y1, x2, y2, area, rank
    kept_cls, removed_cls = cls.index_select(0, kept_pos), cls.index_select(0, removed_pos)
    kept_slot, kept_begins = _slot_in_class(kept_cls, kept_per_class)
    removed_slot, _ = _slot_in_class(removed_cls, removed_per_class)

    def padded(pos: Tensor, flat: Tensor, width: int) -> Tensor:
        block = columns.new_full((6, num_classes * width), math.nan)
        block[:, flat] = columns.index_select(1, pos)
        return block

    kept_flat = kept_cls * most_kept + kept_slot
    removed_flat = removed_cls * most_removed + removed_slot
    *kept, kept_rank = padded(kept_pos, kept_flat, most_kept).view(6, num_classes, most_kept, 1)
    removed = padded(removed_pos, removed_flat, most_removed)
    *removed, removed_rank = removed.view(6, num_classes, 1, most_removed)
    hit = _overlap_above(tuple(kept), tuple(removed), iou_threshold).logical_and_(
        kept_rank < removed_rank
    )
    # argmax (which takes no bool) returns the first maximum: the first candidate in rank order
    first = hit.to(torch.uint8).argmax(1, keepdim=True)
    first_hits = hit.gather(1, first).view(-1).index_select(0, removed_flat)
    found = torch.nonzero(first_hits).squeeze(1)
    kept_idx = kept_begins.index_select(0, removed_cls.index_select(0, found))
    return found, kept_idx + first.view(-1).index_select(0, removed_flat.index_select(0, found))


def _suppressor_by_grid(
    boxes: Tensor,
    shifted: Tensor,
    cls: Tensor,
    kept_pos: Tensor,
    removed_pos: Tensor,
    iou_threshold: float,
) -> Tuple[Tensor, Tensor]:
    """:func:`_suppressor_of_removed` by a spatial search, for large classes.

    The candidates of a removed box ``r`` are the kept boxes of its class ranked above it (the
    one that removed it is among them) that can overlap it above ``t``.
    ``IoU(k, r) > t`` with ``0 < t < 1`` implies ``|cx_k - cx_r| < g(t) * min(w_k, w_r)`` (and
    the same for heights), ``g(t) = (1 - t) / (2t)`` (:func:`_centre_window`). Proof, with ``o``
    and ``o_h`` the overlap width and height and ``m <= M`` the two widths: ``IoU > t`` is
    ``inter * (1 + t) > t * (area_k + area_r)``; ``inter = o * o_h`` and each area is at least
    its width times ``o_h``, so ``o > t * (m + M) / (1 + t)``. For two intervals
    ``o <= (m + M) / 2 - |cx_k - cx_r|``, so ``|cx_k - cx_r| < (m + M) (1 - t) / (2 (1 + t))``,
    and ``o <= m`` gives ``m + M < m (1 + t) / t``: together ``|cx_k - cx_r| < m (1 - t) / (2t)``.
    (Tight: a box of width ``m`` flush inside one of width just under ``m / t``.) The search
    uses ``g(t) * w_r``, as ``m <= w_r``.

    Kept boxes are bucketed by (class, grid cell of their centre) and sorted by (bucket, rank);
    each removed box visits the cells its window touches and, in each, the run of kept boxes ranked
    above it (two binary searches). So only same-class pairs that are close in space and correctly
    ordered are materialized: no dense kept x all matrix and no cross-class pairs.
    """
    device = boxes.device
    n = boxes.shape[0]
    num_kept, num_removed = kept_pos.numel(), removed_pos.numel()

    x1, y1, x2, y2 = boxes.t()
    lo = torch.minimum(x1.min(), y1.min())
    span = float(torch.maximum(x2.max(), y2.max()) - lo) + 1.0
    cx, cy = (x1 + x2) * 0.5 - lo, (y1 + y2) * 0.5 - lo  # in [0, span)
    rcx, rcy = cx.index_select(0, removed_pos), cy.index_select(0, removed_pos)
    if 0.0 < iou_threshold < 1.0:
        ratio = _centre_window(iou_threshold) * (1.0 + 1e-9)
        margin = 1e-6 * span  # far above the float64 rounding of the centres
        half_w = (x2 - x1).index_select(0, removed_pos).clamp_(min=0).mul_(ratio).add_(margin)
        half_h = (y2 - y1).index_select(0, removed_pos).clamp_(min=0).mul_(ratio).add_(margin)
        # cell side: about three times the median window, at most 64 cells per axis
        cell = min(
            max(_CELL_FACTOR * float(torch.median(torch.maximum(half_w, half_h))), span / 64.0),
            span,
        )
    else:  # any overlap may count: one cell, every kept box of the class ranked above r
        half_w = half_h = torch.full_like(rcx, span)
        cell = span
    cells = int(math.ceil(span / cell))
    # Bucket ids and sort keys are exact integers held in float64 (< 2**53 for any realistic
    # input), which avoids slow int64 divisions.
    dtype = boxes.dtype

    def cell_of(v: Tensor) -> Tensor:
        return torch.div(v, cell, rounding_mode="floor").clamp_(0, cells - 1)

    kept_bucket = (
        cls.index_select(0, kept_pos)
        .to(dtype)
        .mul_(cells)
        .add_(cell_of(cy.index_select(0, kept_pos)))
    )
    kept_bucket = kept_bucket.mul_(cells).add_(cell_of(cx.index_select(0, kept_pos)))
    # sort key (bucket, position); positions are rank order within a class
    kept_key, by_key = torch.sort(kept_bucket.mul_(n).add_(kept_pos.to(dtype)))

    gx0, gx1 = cell_of(rcx - half_w), cell_of(rcx + half_w)
    gy0, gy1 = cell_of(rcy - half_h), cell_of(rcy + half_h)
    nx = gx1.sub_(gx0).add_(1)
    num_cells = (gy1 - gy0 + 1).mul_(nx).long()
    total_cells = int(num_cells.sum())
    q_r = torch.repeat_interleave(
        torch.arange(num_removed, device=device), num_cells, output_size=total_cells
    )
    local = (
        torch.arange(total_cells, device=device)
        - (torch.cumsum(num_cells, 0) - num_cells).index_select(0, q_r)
    ).to(dtype)
    q_nx = nx.index_select(0, q_r)
    q_dy = torch.div(local, q_nx, rounding_mode="floor")
    q_dx = local.sub_(q_dy * q_nx)
    r_bucket = (
        cls.index_select(0, removed_pos)
        .to(dtype)
        .mul_(cells)
        .add_(gy0)
        .mul_(cells)
        .add_(gx0)
        .mul_(n)
    )
    q_key = r_bucket.index_select(0, q_r).add_(q_dy.mul_(cells).add_(q_dx).mul_(n))
    first = torch.searchsorted(kept_key, q_key)
    num_cand = (
        torch.searchsorted(kept_key, q_key.add_(removed_pos.to(dtype).index_select(0, q_r))) - first
    )
    cum = torch.cumsum(num_cand, 0)
    entry_shift = first - (
        cum - num_cand
    )  # pair p of query q: sorted kept entry p + entry_shift[q]

    # kept columns in key order, so that a pair's sorted entry indexes them directly
    columns = _box_columns(shifted)
    kept_cols = columns.index_select(1, kept_pos.index_select(0, by_key)).unbind(0)
    removed_cols = columns.index_select(1, removed_pos).unbind(0)

    # Split the queries into chunks of about _MAX_PAIRS_PER_CHUNK_* pairs (memory, cache).
    chunk = _MAX_PAIRS_PER_CHUNK_CUDA if device.type == "cuda" else _MAX_PAIRS_PER_CHUNK_CPU
    total = int(cum[-1])
    if total <= chunk:
        cuts = [0, total_cells]
    else:
        marks = torch.arange(chunk, total, chunk, device=device)
        inner = torch.searchsorted(cum, marks).add_(1).clamp_(max=total_cells).tolist()
        cuts = sorted(set([0, total_cells] + inner))

    best = torch.full((num_removed,), num_kept, dtype=torch.int64, device=device)
    for a, b in zip(cuts[:-1], cuts[1:]):
        pair_base = int(cum[a - 1]) if a > 0 else 0
        num_pairs = int(cum[b - 1]) - pair_base
        if num_pairs == 0:
            continue
        pair_q = torch.repeat_interleave(
            torch.arange(a, b, device=device), num_cand[a:b], output_size=num_pairs
        )
        entry = entry_shift.index_select(0, pair_q)
        entry += torch.arange(pair_base, pair_base + num_pairs, device=device)
        pair_r = q_r.index_select(0, pair_q)
        hit = _overlap_above(
            tuple(c.index_select(0, entry) for c in kept_cols),
            tuple(c.index_select(0, pair_r) for c in removed_cols),
            iou_threshold,
        )
        hit = torch.nonzero(hit).squeeze(1)
        # the first suppressor in rank order is the smallest kept index among the hits
        pair_k = by_key.index_select(0, entry.index_select(0, hit))
        best.scatter_reduce_(0, pair_r.index_select(0, hit), pair_k, "amin")
    found = torch.nonzero(best < num_kept).squeeze(1)
    return found, best.index_select(0, found)


def iou_guided_nms(
    boxes: Tensor, scores: Tensor, ious: Tensor, idxs: Tensor, iou_threshold: float
) -> Tuple[Tensor, Tensor]:
    """IoU-guided NMS (IoU-Net, Jiang et al. 2018, Algorithm 1), class-aware.

    Boxes are ranked by their predicted localization confidence ``ious`` (ties: lower index
    first). The highest-ranked remaining box ``b_m`` is kept and every remaining box of its class
    with ``IoU(b_m, b_j) > iou_threshold`` is removed; the kept box's output score is
    ``max(s_m, max_j s_j)`` over itself and the boxes it removed, so the box that localizes best
    survives and carries the best classification score of its cluster.

    Vectorized (no Python loop over boxes): the kept set is exactly the standard NMS result when
    ranking by ``ious`` (torchvision's kernel, a few classes per call, decisions in float64); a
    removed box belongs to the first kept box of its class, in rank order, that overlaps it above
    the threshold (the one that removed it in Algorithm 1), found by testing the same-class pairs
    (all of them for small classes, those close enough in space to reach the threshold for large
    ones); the scores are combined with a scatter-max.

    Returns ``(keep, out_scores)``, sorted by output score (highest first, ties by index).
    """
    _check_inputs(boxes, scores=scores, ious=ious, idxs=idxs)
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    dtype = _compute_dtype(scores)
    n = boxes.shape[0]
    if n == 0:
        return _empty(boxes, dtype)
    scores = scores.to(dtype)
    rank_key = ious.to(_compute_dtype(ious))
    order = torch.argsort(rank_key, descending=True, stable=True)
    perm, cls, starts, counts = _group_by_class(idxs, order)
    sorted_boxes = boxes[perm].to(torch.float64)
    keep_mask, shifted = _grouped_classwise_nms(sorted_boxes, cls, starts, counts, iou_threshold)

    removed_idx, kept_idx = _suppressor_of_removed(
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
    return _order_by_score(keep, out)


# ----------------------------------------------------------------------------------------------
# Soft-NMS
# ----------------------------------------------------------------------------------------------


def _iou_rows(a: Tensor, area_a: Tensor, b: Tensor, area_b: Tensor) -> Tensor:
    """Row-batched pairwise IoU: ``a`` (4, R, k), ``b`` (4, R, W) -> (R, k, W).

    A zero union (two zero-area boxes) gives IoU 0 instead of 0/0.
    """
    ax1, ay1, ax2, ay2 = a.unsqueeze(3).unbind(0)
    bx1, by1, bx2, by2 = b.unsqueeze(2).unbind(0)
    w = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)
    h = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0)
    inter = w.mul_(h)
    union = torch.add(area_a.unsqueeze(2), area_b.unsqueeze(1)).sub_(inter)
    return inter.div_(union.clamp_(min=torch.finfo(union.dtype).tiny))


def _decay_weight(iou: Tensor, gaussian: bool, sigma: float, iou_threshold: float) -> Tensor:
    """Soft-NMS score multiplier (Bodla et al. 2017), in place on ``iou`` where possible.

    gaussian: ``exp(-iou^2 / sigma)``; linear: ``1 - iou`` where ``iou > Nt``, else 1.
    """
    if gaussian:
        return iou.square_().mul_(-1.0 / sigma).exp_()
    return torch.where(iou > iou_threshold, 1.0 - iou, torch.ones_like(iou))


# Soft-NMS precomputes every class's box-to-box multipliers when rows x width^2 stays below this,
# and tries several picks per class and step once at most this many classes have boxes left.
_SOFT_NMS_DENSE_ELEMENTS = 1 << 20
_SOFT_NMS_MULTI_PICK_MAX_CLASSES = 16


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    method: str = "gaussian",
    score_threshold: float = 0.001,
) -> Tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017), class-aware.

    Within each class: repeatedly take the remaining box ``M`` with the highest current score
    (ties: lower index), output it with that score, and decay every other remaining box ``b_i``:

    - ``method="linear"``:   ``s_i <- s_i * (1 - IoU(M, b_i))`` if ``IoU(M, b_i) > iou_threshold``;
    - ``method="gaussian"``: ``s_i <- s_i * exp(-IoU(M, b_i)^2 / sigma)``;

    boxes whose score falls below ``score_threshold`` are discarded. Returns ``(keep, new_scores)``:
    every box whose score when selected is ``>= score_threshold``, sorted by that score (highest
    first, ties by index).

    Vectorized across classes: one padded row per class (columns in index order), and every
    step of the loop picks in all classes at once, so the loop runs over the picks of the busiest
    class, not over all boxes. Dead boxes and finished classes are compacted away as it goes, and
    small inputs precompute each class's box-to-box multipliers. When few classes remain (one
    class is the hard case), a step may take several picks of a class: its current top boxes, in
    order, for as long as none of them is decayed by an earlier one of the run (IoU 0 for
    gaussian, ``<= iou_threshold`` for linear). That run is exactly what the sequential algorithm
    picks next, because a box that no earlier pick decays keeps its score while every other box
    only loses score; the multipliers of one step's picks are applied as one product (the same
    product, in another order, so scores agree to rounding).
    """
    _check_inputs(boxes, scores=scores, idxs=idxs)
    if method not in ("gaussian", "linear"):
        raise ValueError(f"method must be 'gaussian' or 'linear', got {method!r}")
    sigma = _check_threshold(sigma, "sigma")
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    score_threshold = _check_threshold(score_threshold, "score_threshold")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"sigma must be > 0 for the gaussian method, got {sigma}")
    dtype = _compute_dtype(boxes, scores)
    device = boxes.device
    if boxes.shape[0] == 0:
        return _empty(boxes, dtype)
    scores = scores.to(dtype)
    # A box below the threshold is never output and, being picked after every higher box, never
    # decays a box that is output: drop those boxes first.
    alive_in = torch.nonzero(scores >= score_threshold).squeeze(1)
    if alive_in.numel() == 0:
        return _empty(boxes, dtype)
    perm, cls, starts, counts = _group_by_class(idxs, alive_in)
    m = perm.shape[0]
    rows = counts.shape[0]
    width = int(counts.max())

    # Padded layout: one row per class, columns in ascending input index (the tie-break order).
    flat = cls * width + (torch.arange(m, device=device) - starts.index_select(0, cls))
    S = torch.full((rows * width,), -math.inf, dtype=dtype, device=device)
    S[flat] = scores.index_select(0, perm)
    S = S.view(rows, width)
    B = torch.zeros((4, rows * width), dtype=dtype, device=device)
    B[:, flat] = boxes.index_select(0, perm).to(dtype).t()
    B = B.view(4, rows, width)
    A = (B[2] - B[0]) * (B[3] - B[1])
    index = torch.full((rows * width,), -1, dtype=torch.int64, device=device)
    index[flat] = perm
    index = index.view(rows, width)

    gaussian = method == "gaussian"

    def weights_of(cand: Tensor, cand_area: Tensor) -> Tensor:
        return _decay_weight(_iou_rows(cand, cand_area, B, A), gaussian, sigma, iou_threshold)

    # Dense mode: M[r, i, j] = multiplier that picking box i of class r applies to box j.
    M = None
    if rows * width * width <= _SOFT_NMS_DENSE_ELEMENTS:
        M = weights_of(B, A)

    out_index: List[Tensor] = []
    out_score: List[Tensor] = []
    k = 1  # candidates per class and step (1: one sequential step); adapted as we go
    since_probe = 0
    steps = 0
    earlier = None
    while True:
        kk = min(k, width)
        if kk == 1:
            # first occurrence: lowest index wins ties (argmax + gather rather than max(dim), which
            # runs a parallel region per call on CPU even for tiny inputs)
            cols = S.argmax(dim=1, keepdim=True)
            vals = S.gather(1, cols)
            accept = vals >= score_threshold
            if not bool(accept.any()):
                break
        else:
            vals, cols = S.topk(kk, dim=1)
            # topk orders tied values arbitrarily: the first pick is the first-occurrence argmax,
            # and a candidate tied with a neighbour in the list (or the last one, whose successor
            # is unknown) ends the run.
            cols[:, :1] = S.argmax(dim=1, keepdim=True)
            tied = vals[:, 1:] == vals[:, :-1]
            ok = vals >= score_threshold
            ok[:, 1:] &= ~tied
            ok[:, 1:-1] &= ~tied[:, 1:]
            if kk < width:
                ok[:, -1] = False
            if M is not None:
                cand_w = M.gather(1, cols.unsqueeze(2).expand(-1, -1, width))  # (rows, kk, width)
                cc = cand_w.gather(2, cols.unsqueeze(1).expand(-1, kk, -1))
            else:
                cand = B.gather(2, cols.unsqueeze(0).expand(4, -1, -1))
                cand_area = A.gather(1, cols)
                cc = _decay_weight(
                    _iou_rows(cand, cand_area, cand, cand_area), gaussian, sigma, iou_threshold
                )
            if earlier is None or earlier.shape[0] != kk:
                ar = torch.arange(kk, device=device)
                earlier = ar.unsqueeze(1) < ar  # [i, j]: candidate i comes before j
            ok &= ~((cc != 1.0) & earlier).any(dim=1)  # decayed by an earlier candidate: stop there
            accept = ok.cumprod(dim=1).bool()
            num_accepted = accept.sum(dim=1)
            most = int(num_accepted.max())
            if most == 0:
                break
        steps += 1
        out_index.append(index.gather(1, cols)[accept])
        out_score.append(vals[accept])

        # decay every box of the class by the accepted picks, then retire the picks
        if kk == 1:  # a class without a pick has no live box left: its multipliers do not matter
            if M is not None:
                w = M.gather(1, cols.unsqueeze(2).expand(-1, -1, width))
            else:
                w = weights_of(B.gather(2, cols.unsqueeze(0).expand(4, -1, -1)), A.gather(1, cols))
            S.mul_(w.squeeze(1))
            S.scatter_(1, cols, -math.inf)
        else:
            pick_row, pick_slot = torch.nonzero(accept, as_tuple=True)
            if M is not None or pick_row.numel() * 2 >= rows * most:  # (rows, most, width) block
                if M is not None:
                    w = cand_w[:, :most]
                else:
                    w = weights_of(cand[:, :, :most], cand_area[:, :most])
                S.mul_(w.masked_fill_(~accept[:, :most].unsqueeze(2), 1.0).prod(dim=1))
            else:  # ragged: one row of multipliers per accepted pick, summed as logs per class
                iou = _iou_rows(
                    cand[:, pick_row, pick_slot].unsqueeze(2),
                    cand_area[pick_row, pick_slot].unsqueeze(1),
                    B.index_select(1, pick_row),
                    A.index_select(0, pick_row),
                ).squeeze(1)
                log_w = _decay_weight(iou, gaussian, sigma, iou_threshold).log_()
                S.mul_(torch.zeros_like(S).index_add_(0, pick_row, log_w).exp_())
            S[pick_row, cols[pick_row, pick_slot]] = -math.inf
        alive = S >= score_threshold
        S.masked_fill_(~alive, -math.inf)

        # Adapt: stay sequential while classes take one pick per step; with few classes left,
        # probe for multi-pick steps every 8 steps. (With many classes a multi-pick step costs
        # more than the sequential steps it saves: the busiest class sets the number of steps.)
        if kk == 1:
            since_probe += 1
            if since_probe >= 8 and rows <= _SOFT_NMS_MULTI_PICK_MAX_CLASSES:
                k, since_probe = 4, 0
        else:
            active = int((num_accepted > 0).sum())
            k = max(4, min(64, 2 * most)) if int(num_accepted.sum()) >= 2 * active else 1

        # compaction: drop finished classes and dead boxes when the layout is at most half alive
        if steps % 4 == 0:
            alive_count = alive.sum(dim=1)
            new_width = int(alive_count.max())
            if new_width == 0:
                break
            live_rows = alive_count > 0
            if new_width <= width // 2 or int(live_rows.sum()) <= rows // 2:
                keep_rows = torch.nonzero(live_rows).squeeze(1)
                S, A, index, alive = S[keep_rows], A[keep_rows], index[keep_rows], alive[keep_rows]
                B = B.index_select(1, keep_rows)
                order = torch.argsort((~alive).to(torch.uint8), dim=1, stable=True)[:, :new_width]
                S, A, index = S.gather(1, order), A.gather(1, order), index.gather(1, order)
                B = B.gather(2, order.unsqueeze(0).expand(4, -1, -1))
                if M is not None:
                    M = M.index_select(0, keep_rows).gather(
                        1, order.unsqueeze(2).expand(-1, -1, width)
                    )
                    M = M.gather(2, order.unsqueeze(1).expand(-1, new_width, -1))
                rows, width = S.shape

    keep = torch.cat(out_index)
    new_scores = torch.cat(out_score)
    return _order_by_score(keep, new_scores)
