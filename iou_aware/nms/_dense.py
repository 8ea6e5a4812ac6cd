"""The padded layout and pairwise terms shared by the matrix-form NMS types (pure torch).

Cluster-NMS, Matrix NMS, weighted NMS, DIoU-NMS and score voting all work on the same picture: the
boxes of one class (of one image) sorted by score, highest first (ties: lower input index first),
and a matrix of pairwise terms between them. :func:`prepare` validates the input (one image
``(N, 4)`` or a padded batch ``(B, N, 4)`` with a ``valid`` mask), :func:`padded_rows` lays the
boxes out as one padded row per (image, class) (:class:`Rows`), :func:`pair_terms` gives the IoU
(with the arithmetic of torchvision's NMS kernel) and the DIoU distance ratio ``rho^2 / c^2`` of
every pair of two row blocks, :func:`cluster_fixed_point` is the matrix iteration of Cluster-NMS
(TCYB 2021, Algorithm 1), :func:`greedy_keep` greedy NMS for any pairwise criterion in bounded
memory, and :func:`finish` turns per-row results into ``keep`` / ``out_scores`` /
``out_boxes``, sorted by score (ties by index), cut to ``max_det`` per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ._common import check_inputs, compute_dtype, group_by_class, order_by_score

# Pairwise blocks are built in row chunks of about this many elements (bounds the temporaries).
_CHUNK_ELEMENTS = 1 << 22
# Rank block of greedy_keep: each settles by a few (R, block, block) iterations, the kept boxes of
# earlier blocks are tested in one (R, K, block) product.
_GREEDY_BLOCK = 256


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
    return Prepared(flat_boxes.to(dtype), flat_scores.to(dtype), key, image, index, batch, dtype)


@dataclass
class Rows:
    """One padded row per row key, boxes sorted by score (ties: lower index first).

    ``pos`` (R, W): position in the flattened input (-1 for padding); ``valid`` (R, W);
    ``boxes`` (R, W, 4) (zeros in padding); ``scores`` (R, W) (zeros in padding)."""

    pos: Tensor
    valid: Tensor
    boxes: Tensor
    scores: Tensor

    @property
    def width(self) -> int:
        return self.pos.shape[1]


def padded_rows(prep: Prepared) -> Rows:
    m = prep.scores.shape[0]
    device = prep.scores.device
    # sort by score, ties by index within the image (index order = flattened order)
    order = torch.argsort(prep.scores, descending=True, stable=True)
    perm, row, starts, counts = group_by_class(prep.key, order)
    num_rows, width = counts.shape[0], int(counts.max())
    flat = row * width + (torch.arange(m, device=device) - starts.index_select(0, row))
    pos = torch.full((num_rows * width,), -1, dtype=torch.int64, device=device)
    pos[flat] = perm
    boxes = prep.boxes.new_zeros((num_rows * width, 4))
    boxes[flat] = prep.boxes.index_select(0, perm)
    scores = prep.scores.new_zeros(num_rows * width)
    scores[flat] = prep.scores.index_select(0, perm)
    pos = pos.view(num_rows, width)
    return Rows(pos, pos >= 0, boxes.view(num_rows, width, 4), scores.view(num_rows, width))


def pair_terms(a: Tensor, b: Tensor, distance: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """IoU and (with ``distance``) the DIoU ratio ``rho^2 / c^2`` of every pair ``(a_i, b_j)`` of
    two row blocks ``a`` (R, P, 4), ``b`` (R, Q, 4) -> (R, P, Q).

    IoU is ``inter / (area_a + area_b - inter)`` with ``area = (x2 - x1) * (y2 - y1)``: the
    arithmetic of torchvision's NMS kernel, so that thresholding it decides every pair as the
    kernel does. A pair whose union is not positive (two zero-area boxes) gets IoU 0, a pair with
    ``c^2 = 0`` (two equal point boxes) ratio 0, so degenerate boxes give finite values.
    ``rho`` is the distance of the box centres, ``c`` the diagonal of the smallest box enclosing
    both (the DIoU penalty term of Zheng et al., AAAI 2020)."""
    ax1, ay1, ax2, ay2 = a.unsqueeze(2).unbind(3)
    bx1, by1, bx2, by2 = b.unsqueeze(1).unbind(3)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    inter = w * h
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
    if not distance:
        return iou, None
    dx = (ax1 + ax2) - (bx1 + bx2)
    dy = (ay1 + ay2) - (by1 + by2)
    rho2 = (dx * dx + dy * dy) * 0.25
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    c2 = cw * cw + ch * ch
    ratio = torch.where(c2 > 0, rho2 / c2, torch.zeros_like(c2)).clamp_(max=1.0)
    return iou, ratio


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
    boxes = rows.boxes.new_zeros((r, width, 4))
    boxes[row, slot] = rows.boxes[row, col]
    scores = rows.scores.new_zeros((r, width))
    scores[row, slot] = rows.scores[row, col]
    valid = torch.zeros((r, width), dtype=torch.bool, device=mask.device)
    valid[row, slot] = True
    rank = torch.full((r, width), w, dtype=torch.int64, device=mask.device)
    rank[row, slot] = col
    return Packed(boxes, scores, valid, rank, row, col, slot)


def column_chunks(rows: Rows):
    """Slices of the columns (boxes) such that an (R, W, chunk) block stays small."""
    r, w = rows.pos.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, r * w))
    return [slice(j, min(w, j + step)) for j in range(0, w, step)]


def upper(rows: Rows, cols: Optional[slice] = None, rows_slice: Optional[slice] = None) -> Tensor:
    """(R, P, Q) bool for the boxes ``i`` of ``rows_slice`` and ``j`` of ``cols`` (default: all):
    ``i`` ranked above ``j`` (``i < j``), both real boxes."""
    w = rows.width
    cols = cols or slice(0, w)
    rows_slice = rows_slice or slice(0, w)
    device = rows.pos.device
    i = torch.arange(rows_slice.start, rows_slice.stop, device=device).view(-1, 1)
    j = torch.arange(cols.start, cols.stop, device=device).view(1, -1)
    return (
        (i < j).unsqueeze(0)
        & rows.valid[:, rows_slice].unsqueeze(2)
        & rows.valid[:, cols].unsqueeze(1)
    )


def greedy_keep(
    rows: Rows, criterion: Callable[[Tensor, Tensor], Tensor], threshold: float
) -> Tensor:
    """Greedy NMS of every row at once for a pairwise ``criterion(a, b)`` ((R, P, 4), (R, Q, 4) ->
    (R, P, Q)): a box is kept unless a kept box ranked above it has ``criterion > threshold``.

    The columns are taken in blocks in rank order. The boxes of a block that a box kept in an
    earlier block suppresses are removed (the kept boxes packed into an (R, K) block, K the most
    kept in a row so far), and :func:`cluster_fixed_point` settles the rest of the block among
    themselves. By induction over the blocks this is the greedy result, with (R, K + block, block)
    temporaries instead of (R, W, W); when the whole matrix is small there is one block and this
    is Cluster-NMS's iteration itself."""
    r, w = rows.pos.shape
    block = min(_GREEDY_BLOCK, max(16, _CHUNK_ELEMENTS // max(1, r * w)))
    kept = torch.zeros_like(rows.valid)
    dtype = rows.boxes.dtype
    for a0 in range(0, w, block):
        cols = slice(a0, min(w, a0 + block))
        cand = rows.valid[:, cols]
        if a0 > 0:
            earlier = pack(rows, kept)  # kept is still False from column a0 on
            hit = (
                criterion(earlier.boxes, rows.boxes[:, cols]) > threshold
            ) & earlier.valid.unsqueeze(2)
            cand = cand & ~hit.any(1)
        inside = criterion(rows.boxes[:, cols], rows.boxes[:, cols]) > threshold
        x = (inside & upper(rows, cols, rows_slice=cols)).to(dtype)
        kept[:, cols] = cluster_fixed_point(x, cand)
    return kept


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


def weighted_sum(weights: Tensor, boxes: Tensor) -> Tensor:
    """``sum_j weights[r, i, j] * boxes[r, j]`` -> (R, P, 4), as elementwise products and sums
    rather than a matrix product, which TF32 (when enabled on CUDA) would round to 10 bits."""
    return torch.stack([(weights * boxes[:, :, c].unsqueeze(1)).sum(2) for c in range(4)], 2)


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


def finish(
    prep: Prepared,
    rows: Rows,
    out: Tensor,
    scores: Tensor,
    boxes: Optional[Tensor] = None,
    max_det: Optional[int] = None,
):
    """Per-row results -> the public return value.

    ``out`` (R, W) bool: the boxes in the output; ``scores`` (R, W) their output scores; ``boxes``
    (R, W, 4) their output boxes (fusion types). One image: ``(keep, out_scores[, out_boxes])``,
    ``keep`` int64 indices into the input sorted by output score (ties: lower index), at most
    ``max_det``. A batch: the same per image as padded (B, K) / (B, K, 4) tensors, ``keep = -1``,
    score 0 and box 0 in the padding slots (K = the most any image keeps)."""
    pos = rows.pos[out]
    sc = scores[out]
    bx = boxes[out] if boxes is not None else None
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
