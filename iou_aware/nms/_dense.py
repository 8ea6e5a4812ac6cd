"""Pairwise terms and the matrix iterations shared by the matrix-form NMS types (pure torch).

They work on the size-bucketed padded layout of :mod:`._layout` (one :class:`~._layout.Rows` per
bucket, each processed on its own): :func:`pair_terms` gives the IoU (with the arithmetic of
torchvision's NMS kernel) and the DIoU distance ratio ``rho^2 / c^2`` of every pair of two row
blocks, :func:`cluster_fixed_point` is the matrix iteration of Cluster-NMS (TCYB 2021,
Algorithm 1), :func:`greedy_keep` greedy NMS for any pairwise criterion in bounded memory (with,
on request, the kept box that removed each removed box), :func:`column_blocks` the blocks of a
pass over the columns, each over the rows that still have boxes there, and :func:`scratch_for`
reusable buffers for the pairwise temporaries.

Masks over pairs are float 0/1 tensors and reductions are ``amax`` / ``amin`` / ``sum``: on the
CPU, comparisons into bool tensors, bool ``&`` and ``any`` cost several times a float operation.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ._layout import Rows, pack

# Pairwise blocks hold at most about this many elements (bounds the temporaries).
_CHUNK_ELEMENTS = 1 << 22
# column_blocks keeps a block within about this many elements (cache) unless that leaves fewer
# than 32 columns.
_CACHE_ELEMENTS = 1 << 18
# Columns per block of a pass over the columns (column_blocks): over the upper triangle, and
# against the kept boxes. Multiples of 32, so that the innermost dimension of every pairwise
# operation fills whole vector loops (a 24- or 48-wide block ran 1.5-2x slower than 32 or 64).
_COLUMN_BLOCK = 32
_KEPT_COLUMN_BLOCK = 256
# CPU scratch slots of up to this many elements are kept for the next pass of the thread.
_SCRATCH_KEEP_ELEMENTS = 1 << 20
_LEFT = threading.local()
# Rank blocks of greedy_keep: the first _GREEDY_FIRST columns, then twice as many each time up to
# _GREEDY_BLOCK. Each settles by a few (R, block, block) iterations, the kept boxes of earlier
# blocks are tested in one (R, K, block) product.
_GREEDY_FIRST = 32
_GREEDY_BLOCK = 256


class Scratch:
    """Reusable buffers for the pairwise temporaries of a pass (named slots, each a flat tensor
    grown as needed and viewed in the requested shape); a view stays valid until its slot is
    requested again.

    On the CPU fresh multi-megabyte tensors cost page faults, several times the arithmetic itself
    (two live 2 MB temporaries per block: 3 ns per element, against 0.2 ns written into existing
    buffers, one thread), so the pairwise operations write into these slots; see also
    :func:`scratch_for`."""

    def __init__(self, like: Tensor, slots: Optional[dict] = None):
        self.like = like
        self.slots = {} if slots is None else slots

    def __call__(self, name: str, shape) -> Tensor:
        n = 1
        for d in shape:
            n *= d
        buf = self.slots.get(name)
        if buf is None or buf.numel() < n:
            grown = 2 * buf.numel() if buf is not None else 0
            buf = self.slots[name] = self.like.new_empty(max(n, grown))
        return buf[:n].view(shape)


@contextlib.contextmanager
def scratch_for(like: Tensor):
    """A :class:`Scratch` for one pass. On the CPU it takes over the slots (up to
    ``_SCRATCH_KEEP_ELEMENTS`` elements each) that the last pass of this thread and dtype left,
    and leaves its own at the end, so that repeated calls reuse memory; a pass that starts while
    another one holds them starts empty, so no two share a buffer."""
    if like.device.type != "cpu":
        yield Scratch(like)
        return
    left = _LEFT.__dict__.setdefault("slots", {})
    scratch = Scratch(like, left.pop(like.dtype, None))
    try:
        yield scratch
    finally:
        left[like.dtype] = {
            k: v for k, v in scratch.slots.items() if v.numel() <= _SCRATCH_KEEP_ELEMENTS
        }


def pair_terms(
    a: Tensor, b: Tensor, distance: bool = False, scratch: Optional[Scratch] = None
) -> Tuple[Tensor, Optional[Tensor]]:
    """IoU and (with ``distance``) the DIoU ratio ``rho^2 / c^2`` of every pair ``(a_i, b_j)`` of
    two row blocks ``a`` (R, P, 4), ``b`` (R, Q, 4) -> (R, P, Q), in ``scratch``'s slots ``iou``
    and ``ratio`` (with ``t1``-``t3`` as temporaries) when given.

    IoU is ``inter / (area_a + area_b - inter)`` with ``area = (x2 - x1) * (y2 - y1)``: the
    arithmetic of torchvision's NMS kernel, so that thresholding it decides every pair as the
    kernel does. A pair whose union is not positive (two zero-area boxes) gets IoU 0, a pair with
    ``c^2 = 0`` (two equal point boxes) ratio 0, so degenerate boxes give finite values.
    ``rho`` is the distance of the box centres, ``c`` the diagonal of the smallest box enclosing
    both (the DIoU penalty term of Zheng et al., AAAI 2020).

    Both are exact quotients of the same operands as the formulas: the positive-union case never
    needs a mask (``inter > 0`` implies ``union > 0``; ``union <= 0`` leaves ``0 / union``, 0 or
    ``-0``, or ``0 / 0``, which becomes 0), and ``rho^2`` is zeroed where ``c^2 = 0`` (an
    overflowing quotient still clamps to 1). Boxes stored coordinate-major
    (:func:`~._layout.planar_zeros`) are read contiguously."""
    scratch = scratch or Scratch(a)
    shape = (a.shape[0], a.shape[1], b.shape[1])
    ax1, ay1, ax2, ay2 = (t.unsqueeze(2) for t in a.unbind(2))
    bx1, by1, bx2, by2 = (t.unsqueeze(1) for t in b.unbind(2))
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    inter = torch.minimum(ax2, bx2, out=scratch("iou", shape))
    t1, t2 = scratch("t1", shape), scratch("t2", shape)
    inter.sub_(torch.maximum(ax1, bx1, out=t1)).clamp_(min=0)
    h = torch.minimum(ay2, by2, out=t1).sub_(torch.maximum(ay1, by1, out=t2)).clamp_(min=0)
    inter.mul_(h)
    union = torch.add(area_a, area_b, out=t1).sub_(inter)
    iou = inter.div_(union).nan_to_num_(nan=0.0)
    if not distance:
        return iou, None
    dx = torch.sub(ax1 + ax2, bx1 + bx2, out=scratch("ratio", shape))
    dy = torch.sub(ay1 + ay2, by1 + by2, out=t1)
    rho2 = dx.mul_(dx).add_(dy.mul_(dy)).mul_(0.25)
    t3 = scratch("t3", shape)
    cw = torch.maximum(ax2, bx2, out=t1).sub_(torch.minimum(ax1, bx1, out=t2))
    ch = torch.maximum(ay2, by2, out=t2).sub_(torch.minimum(ay1, by1, out=t3))
    c2 = cw.mul_(cw).add_(ch.mul_(ch))
    # rho^2 * sign(c^2): 0 / 0 where c^2 = 0 (rho^2 may be > 0 there for inverted boxes)
    ratio = rho2.mul_(torch.sign(c2, out=t2)).div_(c2).nan_to_num_(nan=0.0).clamp_(max=1.0)
    return iou, ratio


def strict_upper(n: int, like: Tensor) -> Tensor:
    """(n, n) float mask, 1 where ``i < j``."""
    return torch.ones((n, n), dtype=like.dtype, device=like.device).triu_(1)


def column_blocks(rows: Rows, depth: Optional[int] = None):
    """Blocks of columns ``(c0, c1, ra)``: columns ``[c0, c1)`` (``_COLUMN_BLOCK``, or
    ``_KEPT_COLUMN_BLOCK`` against ``depth`` kept boxes) and the
    number ``ra`` of rows with a box in column ``c0`` (a prefix; the other rows have none left
    there), sized so that an (ra, depth, c1 - c0) block stays within ``_CHUNK_ELEMENTS``.
    ``depth``: the other side of the pairs (default ``c1``: the boxes ranked above the block's and
    its own, a pass over the upper triangle)."""
    w, c0 = rows.width, 0
    cols = _COLUMN_BLOCK if depth is None else _KEPT_COLUMN_BLOCK
    while c0 < w:
        ra = rows.active(c0)
        d = min(w, c0 + cols) if depth is None else depth
        pairs = max(1, ra * d)
        q = min(cols, max(32, _CACHE_ELEMENTS // pairs), max(1, _CHUNK_ELEMENTS // pairs))
        c1 = min(w, c0 + (q - q % 32 if q > 32 else q))
        yield c0, c1, ra
        c0 = c1


def first_nonzero(mask: Tensor) -> Tuple[Tensor, Tensor]:
    """For a float 0/1 ``mask`` (R, P, Q): ``(any, first)`` (R, Q), whether a column holds a 1 and
    the index of its first 1 along P (0 where none): ``amax`` of the mask weighted ``P - i``
    (``argmax`` is many times slower on the CPU). Overwrites ``mask``."""
    p = mask.shape[1]
    down = torch.arange(p, 0, -1, dtype=mask.dtype, device=mask.device).view(1, -1, 1)
    top = mask.mul_(down).amax(1)
    return top > 0, (p - top).long().remainder_(p)


def greedy_keep(
    rows: Rows,
    criterion: Callable[[Tensor, Tensor, Scratch], Tensor],
    threshold: float,
    suppressors: bool = False,
):
    """Greedy NMS of every row at once for a pairwise ``criterion(a, b, scratch)`` ((R, P, 4),
    (R, Q, 4) -> (R, P, Q), possibly in ``scratch``): a box is kept unless a kept box ranked above
    it has ``criterion > threshold``.

    The columns are taken in blocks in rank order, growing from ``_GREEDY_FIRST`` to
    ``_GREEDY_BLOCK`` columns, each over the rows that have boxes in it. The boxes of a block that
    a box kept in an earlier block suppresses are removed (the kept boxes packed into an (R, K)
    block, K the most kept in a row so far), and :func:`cluster_fixed_point` settles the rest of
    the block among themselves. By induction over the blocks this is the greedy result, with
    (R, K + block, block) temporaries instead of (R, W, W); a row of ``n`` boxes costs about
    ``n x (kept + block)`` pairs.

    Returns ``kept`` (R, W) bool or, with ``suppressors``, ``(kept, by)``: ``by`` (R, W) int64 the
    layout column of the first kept box ranked above each removed box with ``criterion >
    threshold`` (the box that removes it in the greedy loop); meaningless for kept and padding
    boxes."""
    r, w = rows.pos.shape
    cap = min(_GREEDY_BLOCK, max(16, _CHUNK_ELEMENTS // max(1, r * w)))
    kept = torch.zeros_like(rows.valid)
    by = torch.zeros_like(rows.pos) if suppressors else None
    a0, size, most_kept = 0, min(_GREEDY_FIRST, cap), 0
    with scratch_for(rows.boxes) as scratch:
        while a0 < w:
            ra = rows.active(a0)  # the rows with boxes in this block
            while size > _GREEDY_FIRST and ra * size * max(size, most_kept) > _CACHE_ELEMENTS:
                size //= 2
            a1 = min(w, a0 + size)
            boxes = rows.boxes[:ra, a0:a1]
            cand = rows.valid[:ra, a0:a1]
            if a0 > 0:
                earlier = pack(rows.prefix(ra, a0), kept[:ra, :a0])
                most_kept = earlier.rank.shape[1]
                over = criterion(earlier.boxes, boxes, scratch).gt_(threshold)
                over.mul_(earlier.valid.to(over.dtype).unsqueeze(2))
                if suppressors:
                    hit, first = first_nonzero(over)
                    by[:ra, a0:a1] = earlier.rank.gather(1, first)
                else:
                    hit = over.amax(1) > 0
                cand = cand & ~hit
            x = criterion(boxes, boxes, scratch).gt_(threshold)
            x.mul_(strict_upper(x.shape[1], x))
            k = cluster_fixed_point(x, cand)
            kept[:ra, a0:a1] = k
            if suppressors:
                _, first = first_nonzero(x.mul_(k.to(x.dtype).unsqueeze(2)))
                if a0 > 0:
                    by[:ra, a0:a1] = torch.where(hit, by[:ra, a0:a1], first + a0)
                else:
                    by[:ra, a0:a1] = first + a0
            a0, size = a1, min(cap, 2 * size)
    return (kept, by) if suppressors else kept


def cluster_fixed_point(x: Tensor, candidates: Tensor) -> Tensor:
    """Cluster-NMS's matrix iteration (Zheng et al., TCYB 2021, Algorithm 1) on a 0/1 matrix.

    ``x`` (R, W, W) float: ``x[r, i, j] = 1`` where box ``i`` (ranked above ``j``) would suppress
    box ``j``; ``candidates`` (R, W) bool: the boxes taking part. With ``E`` the diagonal of the
    rows currently kept (all candidates at first, ``C = X``), each step computes
    ``b_j = max_i (E X)_ij`` and keeps ``b_j = 0``; it stops when the kept set no longer changes
    (then ``C = E X`` no longer changes either). The fixed point is the greedy NMS result (shown
    in TCYB 2021); the number of steps is at most the longest chain of suppressions plus one.
    One host sync per step (the stopping test). The products are of 0/1 values, exact in any
    matmul precision (TF32 included)."""
    kept = candidates
    while True:
        hit = torch.bmm(kept.to(x.dtype).unsqueeze(1), x).squeeze(1) > 0
        new = candidates & ~hit
        if torch.equal(new, kept):
            return kept
        kept = new


def weighted_sum(weights: Tensor, boxes: Tensor, tmp: Optional[Tensor] = None) -> Tensor:
    """``sum_j weights[r, i, j] * boxes[r, j]`` -> (R, P, 4), as elementwise products and sums
    rather than a matrix product, which TF32 (when enabled on CUDA) would round to 10 bits;
    ``tmp``: a buffer shaped like ``weights`` for the products."""
    tmp = torch.empty_like(weights) if tmp is None else tmp
    return torch.stack(
        [torch.mul(weights, boxes[:, :, c].unsqueeze(1), out=tmp).sum(2) for c in range(4)], 2
    )


def weighted_mean(
    num: Tensor, den: Tensor, boxes: Tensor, self_weight: Tensor, at: Tensor
) -> Tensor:
    """``(num + w b) / (den + w)`` (the weighted mean of a box ``b`` of weight ``w`` and the voters
    summed in ``num`` / ``den``) where ``at`` and the voters' weights sum to a positive value,
    else ``boxes`` unchanged (so a box without voters keeps its exact coordinates)."""
    ok = at & (den > 0)
    num = num + self_weight.unsqueeze(-1) * boxes
    den = torch.where(ok, den + self_weight, 1.0)
    return torch.where(ok.unsqueeze(-1), num / den.unsqueeze(-1), boxes)
