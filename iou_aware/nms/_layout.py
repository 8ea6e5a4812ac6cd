"""The padded, size-bucketed row layout of the matrix-form NMS types (pure torch).

Cluster-NMS, Matrix NMS, weighted NMS, DIoU-NMS and score voting all work on the same picture: the
boxes of one class (of one image) sorted by score, highest first (ties: lower input index first),
and pairwise terms between them. :func:`prepare` validates the input (one image ``(N, 4)`` or a
padded batch ``(B, N, 4)`` with a ``valid`` mask), :func:`padded_rows` lays the boxes out as one
padded row per (image, class), grouped into buckets of rows of similar size that each pad only to
their own widest row (:class:`Rows`), :func:`pack` packs a subset of a layout's boxes (the kept
ones) to the left, and :func:`finish` turns the per-row results of every bucket into ``keep`` /
``out_scores`` / ``out_boxes``, sorted by score (ties by index), cut to ``max_det`` per image.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._common import check_inputs, compute_dtype, order_by_score

# Rows are taken widest first; a new bucket starts at a row when giving it and the narrower rows
# their own width saves at least max(this, boxes) padded slots, (W - w) x rows left. Within a
# bucket the passes over columns skip the rows that have no box left (rows.active), so padding
# costs memory and linear work, not pairs.
_BUCKET_MIN_SLOTS = 1 << 16


def check_finite(**tensors: Tensor) -> None:
    """Raise ``ValueError`` naming the first argument that holds a NaN or an infinity."""
    for name, t in tensors.items():
        if (
            t is not None
            and t.is_floating_point()
            and t.numel()
            and not bool(torch.isfinite(t).all())
        ):
            raise ValueError(
                f"{name} contains NaN or infinite values; NMS needs finite {name} "
                "(filter or clamp them before calling)"
            )


def check_max_det(max_det: Optional[int]) -> Optional[int]:
    if max_det is None:
        return None
    if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 0:
        raise ValueError(f"max_det must be None or an integer >= 0, got {max_det!r}")
    return max_det


@dataclass
class Prepared:
    """Validated input, flattened: ``boxes`` (M, 4) and ``scores`` (M,) in the computation dtype,
    ``key`` (M,) the row key ((image, class) or image alone when class-agnostic), ``image`` (M,)
    and ``index`` (M,) the image and the index within the image of each box; ``batch`` is ``None``
    for one image, else ``(B, N)``."""

    boxes: Tensor
    scores: Tensor
    key: Tensor
    image: Tensor
    index: Tensor
    batch: Optional[Tuple[int, int]]
    dtype: torch.dtype


def prepare(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    *,
    class_agnostic: bool = False,
    valid: Optional[Tensor] = None,
    batch_ok: bool = False,
) -> Prepared:
    """Check the arguments of an NMS call and flatten them (see :class:`Prepared`).

    One image: ``boxes`` (N, 4), ``scores`` and ``idxs`` (N,). A padded batch (where
    ``batch_ok``): ``boxes`` (B, N, 4), ``scores`` and ``idxs`` (B, N) and optionally ``valid``
    (B, N) bool, False for padding slots (ignored whatever they hold)."""
    if not isinstance(class_agnostic, bool):
        raise ValueError(f"class_agnostic must be True or False, got {class_agnostic!r}")
    if isinstance(boxes, Tensor) and boxes.dim() == 3 and batch_ok:
        b, n = boxes.shape[:2]
        if boxes.shape[2] != 4:
            raise ValueError(
                f"boxes must have shape (B, N, 4) for a batch, got {tuple(boxes.shape)}"
            )
        for name, t in (("scores", scores), ("idxs", idxs), ("valid", valid)):
            if name == "valid" and t is None:
                continue
            if not isinstance(t, Tensor) or tuple(t.shape) != (b, n):
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape (B, N) = {(b, n)} like boxes, got {got}")
            if t.device != boxes.device:
                raise ValueError(f"{name} is on {t.device} but boxes are on {boxes.device}")
        if valid is not None and valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor (False for padding), got {valid.dtype}")
        pos = torch.arange(b * n, device=boxes.device)
        flat = [boxes.reshape(-1, 4), scores.reshape(-1), idxs.reshape(-1), pos]
        if valid is not None:
            flat = [t[valid.reshape(-1)] for t in flat]
        flat_boxes, flat_scores, flat_idxs, pos = flat
        image, index = torch.div(pos, n, rounding_mode="floor"), pos % max(n, 1)
        batch = (b, n)
    else:
        if valid is not None:
            raise ValueError(
                "valid is for a padded batch (boxes of shape (B, N, 4)); "
                "pass valid=None for one image"
            )
        check_inputs(boxes, scores=scores, idxs=idxs)
        flat_boxes, flat_scores, flat_idxs = boxes, scores, idxs
        index = torch.arange(boxes.shape[0], device=boxes.device)
        image = torch.zeros_like(index)
        batch = None
    if flat_idxs.is_floating_point() or flat_idxs.is_complex():
        raise ValueError(f"idxs must hold integer class ids, got {flat_idxs.dtype}")
    check_finite(boxes=flat_boxes, scores=flat_scores)
    dtype = compute_dtype(boxes, scores)
    if class_agnostic or flat_idxs.numel() == 0:
        key = image
    else:
        cls = flat_idxs.long()
        cls = cls - cls.min()
        key = image * (cls.max() + 1) + cls
    # inference only: the pairwise passes write into reused buffers (out=), which autograd refuses
    boxes_c, scores_c = flat_boxes.detach().to(dtype), flat_scores.detach().to(dtype)
    return Prepared(boxes_c, scores_c, key, image, index, batch, dtype)


def planar_zeros(r: int, w: int, like: Tensor) -> Tensor:
    """A zero (R, W, 4) box block stored coordinate-major (four contiguous (R, W) planes), so that
    the pairwise terms read each coordinate contiguously."""
    return like.new_zeros((4, r, w)).permute(1, 2, 0)


@dataclass
class Rows:
    """One padded row per row key, boxes sorted by score (ties: lower index first), rows widest
    first; one bucket of the layout, padded to its widest row.

    ``pos`` (R, W): position in the flattened input (-1 for padding); ``valid`` (R, W);
    ``boxes`` (R, W, 4) (zeros in padding, stored coordinate-major: :func:`planar_zeros`);
    ``scores`` (R, W) (zeros in padding); ``sizes``: the number of boxes of each row, on the host,
    non-increasing."""

    pos: Tensor
    valid: Tensor
    boxes: Tensor
    scores: Tensor
    sizes: List[int]

    @property
    def width(self) -> int:
        return self.pos.shape[1]

    def active(self, col: int) -> int:
        """The number of rows with a box in column ``col`` (a prefix: rows are widest first)."""
        return bisect.bisect_left(self.sizes, -col, key=lambda size: -size)

    def prefix(self, r: int, w: int) -> "Rows":
        """The first ``r`` rows and ``w`` columns (views)."""
        return Rows(
            self.pos[:r, :w],
            self.valid[:r, :w],
            self.boxes[:r, :w],
            self.scores[:r, :w],
            [min(size, w) for size in self.sizes[:r]],
        )

    def select(self, out: Tensor, scores: Tensor, boxes: Optional[Tensor] = None):
        """The boxes ``out`` (R, W) bool of this bucket, flat: ``(pos, scores, boxes or None)``,
        the input to :func:`finish`."""
        return self.pos[out], scores[out], None if boxes is None else boxes[out]


def bucket_plan(sizes: Sequence[int]) -> List[Tuple[int, int]]:
    """Split rows of ``sizes`` (non-increasing) into ranges ``[r0, r1)`` padded to ``sizes[r0]``:
    taking rows widest first, a row starts a new bucket when padding it and every narrower row to
    its own width instead of the current bucket's saves ``max(_BUCKET_MIN_SLOTS, boxes)`` padded
    slots or more (only very uneven rows: one class of thousands of boxes among small ones)."""
    plan, r0, n = [], 0, len(sizes)
    least = max(_BUCKET_MIN_SLOTS, sum(sizes))
    for r in range(1, n):
        if (sizes[r0] - sizes[r]) * (n - r) >= least:
            plan.append((r0, r))
            r0 = r
    plan.append((r0, n))
    return plan


def _rank_order(prep: Prepared) -> Tensor:
    """The positions sorted by row key, then by score descending, ties by index (within an image,
    index order is flattened order).

    float32 scores: one stable sort of ``key * 2^33 - s``, ``s`` the scores' bits as an int32
    that orders like the floats (``-0`` made ``+0`` first, so that it ties with ``+0``); else a
    stable sort by score, then by key."""
    if prep.scores.dtype == torch.float32 and int(prep.key.max()) < (1 << 30):
        bits = (prep.scores + 0.0).view(torch.int32).long()
        ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        return torch.argsort(prep.key * (1 << 33) - ordered, stable=True)
    order = torch.argsort(prep.scores, descending=True, stable=True)
    return order.index_select(0, torch.argsort(prep.key.index_select(0, order), stable=True))


def padded_rows(prep: Prepared) -> List[Rows]:
    """The layout: every row key's boxes in score order, rows widest first, in buckets
    (:func:`bucket_plan`; usually one), each a :class:`Rows` padded to its widest row."""
    m = prep.scores.shape[0]
    device = prep.scores.device
    perm = _rank_order(prep)
    counts = torch.unique_consecutive(prep.key.index_select(0, perm), return_counts=True)[1]
    starts = torch.cumsum(counts, 0) - counts
    # the rows widest first, each row's boxes contiguous in that order
    by_size = torch.argsort(counts, descending=True, stable=True)
    sizes = counts.index_select(0, by_size)
    row = torch.repeat_interleave(torch.arange(sizes.shape[0], device=device), sizes)
    first = torch.cumsum(sizes, 0) - sizes
    col = torch.arange(m, device=device) - first.index_select(0, row)
    perm = perm.index_select(0, starts.index_select(0, by_size).index_select(0, row) + col)
    boxes = prep.boxes.index_select(0, perm)
    scores = prep.scores.index_select(0, perm)
    sizes_list = sizes.tolist()
    buckets = []
    p0 = 0
    for r0, r1 in bucket_plan(sizes_list):
        w = sizes_list[r0]
        p1 = p0 + sum(sizes_list[r0:r1])
        r = r1 - r0
        pos = torch.full((r * w,), -1, dtype=torch.int64, device=device)
        bx = planar_zeros(r, w, boxes).view(r * w, 4)
        sc = scores.new_zeros(r * w)
        if p1 - p0 == r * w:  # no padding: the boxes in row order are the layout
            flat = slice(p0, p1)
            pos[:], bx[:], sc[:] = perm[flat], boxes[flat], scores[flat]
        else:
            flat = (row[p0:p1] - r0) * w + col[p0:p1]
            pos[flat], bx[flat], sc[flat] = perm[p0:p1], boxes[p0:p1], scores[p0:p1]
        pos = pos.view(r, w)
        buckets.append(Rows(pos, pos >= 0, bx.view(r, w, 4), sc.view(r, w), sizes_list[r0:r1]))
        p0 = p1
    return buckets


@dataclass
class Packed:
    """The boxes of a mask over a :class:`Rows` layout, packed to the left of a (R, K) block in
    rank order: ``boxes`` (R, K, 4), ``scores`` and ``valid`` (R, K), ``rank`` (R, K) their column
    in the layout (``W`` in padding); ``row``, ``col``, ``slot``: for each packed box its row,
    layout column and packed column."""

    boxes: Tensor
    scores: Tensor
    valid: Tensor
    rank: Tensor
    row: Tensor
    col: Tensor
    slot: Tensor

    def unpack(self, values: Tensor, into: Tensor) -> Tensor:
        """Copy of ``into`` (R, W, ...) with the packed ``values`` (R, K, ...) at their columns."""
        out = into.clone()
        out[self.row, self.col] = values[self.row, self.slot]
        return out


def pack(rows: Rows, mask: Tensor) -> Packed:
    r, w = rows.pos.shape
    slot = torch.cumsum(mask, 1) - 1
    width = max(1, int(mask.sum(1).max()))
    row, col = torch.nonzero(mask, as_tuple=True)
    slot = slot[row, col]
    boxes = planar_zeros(r, width, rows.boxes)
    boxes[row, slot] = rows.boxes[row, col]
    scores = rows.scores.new_zeros((r, width))
    scores[row, slot] = rows.scores[row, col]
    valid = torch.zeros((r, width), dtype=torch.bool, device=mask.device)
    valid[row, slot] = True
    rank = torch.full((r, width), w, dtype=torch.int64, device=mask.device)
    rank[row, slot] = col
    return Packed(boxes, scores, valid, rank, row, col, slot)


def finish(prep: Prepared, parts: Sequence[tuple], max_det: Optional[int] = None):
    """Per-bucket results (:meth:`Rows.select`: ``(pos, scores, boxes or None)`` of the boxes in
    the output) -> the public return value.

    One image: ``(keep, out_scores[, out_boxes])``, ``keep`` int64 indices into the input sorted
    by output score (ties: lower index), at most ``max_det``. A batch: the same per image as
    padded (B, K) / (B, K, 4) tensors, ``keep = -1``, score 0 and box 0 in the padding slots
    (K = the most any image keeps)."""
    pos = torch.cat([p[0] for p in parts])
    sc = torch.cat([p[1] for p in parts])
    bx = torch.cat([p[2] for p in parts]) if parts[0][2] is not None else None
    if prep.batch is None:
        keep = prep.index.index_select(0, pos)
        if bx is not None:  # align the boxes with the sorted keep through the input index
            full = bx.new_zeros((prep.index.shape[0], 4))
            full[keep] = bx
        keep, sc = order_by_score(keep, sc)
        if max_det is not None:
            keep, sc = keep[:max_det], sc[:max_det]
        return (keep, sc) if bx is None else (keep, sc, full.index_select(0, keep))
    b, n = prep.batch
    device = pos.device
    image, index = prep.image.index_select(0, pos), prep.index.index_select(0, pos)
    # order: image ascending, then score descending, then index ascending
    o = torch.argsort(index, stable=True)
    o = o[torch.argsort(sc[o], descending=True, stable=True)]
    o = o[torch.argsort(image[o], stable=True)]
    image, index, sc = image[o], index[o], sc[o]
    counts = torch.bincount(image, minlength=b)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(image.shape[0], device=device) - first.index_select(0, image)
    take = rank < max_det if max_det is not None else torch.ones_like(rank, dtype=torch.bool)
    if max_det is not None:
        counts = counts.clamp(max=max_det)
    k = int(counts.max()) if b else 0
    keep = torch.full((b, k), -1, dtype=torch.int64, device=device)
    out_scores = sc.new_zeros((b, k))
    image, rank = image[take], rank[take]
    keep[image, rank] = index[take]
    out_scores[image, rank] = sc[take]
    if bx is None:
        return keep, out_scores
    out_boxes = bx.new_zeros((b, k, 4))
    out_boxes[image, rank] = bx[o][take]
    return keep, out_scores, out_boxes


def empty_like_result(prep: Prepared, fused: bool, device):
    """The return value of an NMS that keeps nothing (no boxes in the input)."""
    dtype = prep.dtype
    if prep.batch is None:
        res = (
            torch.empty(0, dtype=torch.int64, device=device),
            torch.empty(0, dtype=dtype, device=device),
        )
        return res + (torch.empty((0, 4), dtype=dtype, device=device),) if fused else res
    b = prep.batch[0]
    res = (
        torch.empty((b, 0), dtype=torch.int64, device=device),
        torch.empty((b, 0), dtype=dtype, device=device),
    )
    return res + (torch.empty((b, 0, 4), dtype=dtype, device=device),) if fused else res
