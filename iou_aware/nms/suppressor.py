"""IoU-guided NMS's suppressor search: for each removed box, the kept box that removed it.

Two searches with the same result, chosen from the class sizes: a dense test of every (kept,
removed) pair of a class, and a spatial grid for large classes. Why the first overlapping kept box
in rank order is the suppressor, the grid's window bound (with its proof) and how the limits below
were measured: ``docs/nms.md``, "Suppressor search" and "Limits".
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

# (kept, removed) pairs the grid search tests at once: memory and cache (CPU) vs. launches and syncs.
_MAX_PAIRS_PER_CHUNK_CPU = 1 << 14
_MAX_PAIRS_PER_CHUNK_CUDA = 1 << 20
# Dense search up to this many padded pairs, grid beyond: few tensor ops vs. quadratic pairs.
_DENSE_PAIRS_CPU = 1 << 15
_DENSE_PAIRS_CUDA = 1 << 22
# Grid cell side in multiples of the median search window: pairs per cell vs. cells per query.
_CELL_FACTOR = 3.0


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


def _centre_window(iou_threshold: float) -> float:
    """``g(t) = (1 - t) / (2t)``: ``IoU(k, r) > t`` (``0 < t < 1``) implies
    ``|cx_k - cx_r| < g(t) * min(w_k, w_r)`` and the same for heights (a tight bound; proof in
    ``docs/nms.md``, "The grid's window"). ``g(1/2) = 1/2``, ``g(0.7) = 0.21``."""
    t = iou_threshold
    return (1.0 - t) / (2.0 * t)


def _suppressor_of_removed(
    boxes: Tensor, shifted: Tensor, keep_mask: Tensor, cls: Tensor, iou_threshold: float
) -> Tuple[Tensor, Tensor]:
    """For every removed box, the first kept box (in rank order) of its class that overlaps it.

    ``boxes`` (float64) are class-major and rank-ordered within a class, ``shifted`` the same boxes
    as the NMS kernel saw them, ``keep_mask`` its result. That first overlapping kept box is the
    one that removed the box in Algorithm 1 (``docs/nms.md``, "Suppressor search").

    The dense search (:func:`_suppressor_dense`) runs while the padded per-class blocks hold at most
    ``_DENSE_PAIRS_*`` pairs, the grid search (:func:`_suppressor_by_grid`) beyond; both give the
    same answer.

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
    in rank order. (The rank condition is implied on CPU, where the overlap decisions are the
    kernel's; on CUDA it keeps a near-threshold pair decided differently from handing a score to a
    box ranked below, as in the grid search.)
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
    one that removed it is among them) whose centre lies within ``g(t) * w_r`` of ``r``'s (and
    ``g(t) * h_r`` vertically), ``g`` = :func:`_centre_window`: no pair farther apart can overlap
    above ``t`` (``docs/nms.md``, "The grid's window").

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

    # Split the queries into chunks of about _MAX_PAIRS_PER_CHUNK_* pairs.
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

