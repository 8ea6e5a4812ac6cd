"""Matrix NMS (Wang et al., "SOLOv2: Dynamic and Fast Instance Segmentation", NeurIPS 2020,
section "Matrix NMS"), on box IoU. One image or a padded batch of images in one call."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._dense import column_blocks, pair_terms, scratch_for, strict_upper
from ._layout import Rows, check_max_det, empty_like_result, finish, padded_rows, prepare
from ._common import check_real

KERNELS = ("gaussian", "linear")


def matrix_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: Optional[float] = None,
    *,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    score_threshold: float = 0.05,
    class_agnostic: bool = False,
    max_det: Optional[int] = None,
    valid: Optional[Tensor] = None,
):
    """Matrix NMS (SOLOv2, "Matrix NMS"), class-aware: every score decays in one shot.

    Per class, boxes sorted by score (ties: lower index ranks higher). For box ``j``::

        decay_j = min_{i ranked above j} f(iou_ij) / f(iou_{., i}),
        iou_{., i} = max_{k ranked above i} iou_ki

    ``f(iou_ij)`` is how much box ``i`` suppresses ``j``; dividing by ``f(iou_{., i})``, how much
    ``i`` is itself suppressed by the boxes above it, compensates for a suppressor that is
    probably a duplicate itself. Kernels: ``"linear"``: ``f(iou) = 1 - iou``; ``"gaussian"``:
    ``f(iou) = exp(-sigma * iou^2)`` with ``sigma = 2`` (the paper writes ``exp(-iou^2 / sigma)``;
    the authors' code, whose default this is, multiplies by ``sigma``). The top box of a class has
    no box above it: ``decay = 1``. Then ``s_j <- s_j * decay_j`` and boxes with
    ``s_j < score_threshold`` (0.05 in the authors' code) are dropped. Written for masks, applied
    to box IoU unchanged.

    A linear-kernel suppressor that duplicates a higher box exactly (``iou_{., i} = 1``) has
    ``f = 0``: its ratio is taken as ``+inf`` (it suppresses nothing; its own score decays to 0),
    the limit that the compensation expresses, instead of a division by zero.

    ``iou_threshold`` is not used (Matrix NMS has none); it is accepted so that every NMS of this
    package takes the same leading arguments. ``class_agnostic``, ``max_det``, a padded batch
    (``boxes`` (B, N, 4) with ``valid`` (B, N)) and the return value as in
    :func:`~iou_aware.nms.cluster.cluster_nms`: ``(keep, decayed scores)``.
    """
    if iou_threshold is not None:
        check_real(iou_threshold, "iou_threshold")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be 'gaussian' or 'linear', got {kernel!r}")
    sigma = check_real(sigma, "sigma")
    if kernel == "gaussian" and not sigma > 0:
        raise ValueError(
            f"sigma must be > 0 for the gaussian kernel exp(-sigma * iou^2), got {sigma}"
        )
    score_threshold = check_real(score_threshold, "score_threshold")
    max_det = check_max_det(max_det)
    prep = prepare(boxes, scores, idxs, class_agnostic=class_agnostic, valid=valid, batch_ok=True)
    if prep.scores.numel() == 0:
        return empty_like_result(prep, False, boxes.device)
    parts = []
    for rows in padded_rows(prep):
        out_scores = rows.scores * _decay(rows, kernel, sigma)
        parts.append(rows.select(rows.valid & (out_scores >= score_threshold), out_scores))
    return finish(prep, parts, max_det=max_det)


def _decay(rows: Rows, kernel: str, sigma: float) -> Tensor:
    """``decay_j`` (R, W) of every box of a bucket, in one pass over blocks of columns.

    A block of columns ``j`` (:func:`~._dense.column_blocks`, the rows that have boxes there)
    needs the IoUs with the boxes ranked above, ``i < j``: the boxes above the block and the
    strict upper triangle of its diagonal block (zeroed elsewhere). Its
    columns' compensating IoUs ``iou_{., j}`` are their maxima; the rows' are known then, from
    this chunk or an earlier one. A zeroed pair (IoU 0) gives a ratio of at least 1, which the
    final clamp to 1 ignores, as it does the padding (zero boxes, IoU 0 with every box).
    gaussian: ``min_i f(iou_ij) / f(iou_{., i}) = exp(sigma * min_i (iou_{., i}^2 - iou_ij^2))``,
    one exponential per box (exp and the scaling by ``sigma > 0`` are monotonic)."""
    compensate = torch.zeros_like(rows.scores)  # iou_{., i}
    low = torch.zeros_like(rows.scores)  # min over i of the kernel's term (0 in padding)
    with scratch_for(rows.boxes) as scratch:
        for c0, c1, ra in column_blocks(rows):
            iou, _ = pair_terms(rows.boxes[:ra, :c1], rows.boxes[:ra, c0:c1], scratch=scratch)
            iou[:, c0:c1].mul_(strict_upper(c1 - c0, iou))
            compensate[:ra, c0:c1] = iou.amax(1)
            comp = compensate[:ra, :c1].unsqueeze(2)
            if kernel == "gaussian":
                term = torch.sub(comp.square(), iou.square_(), out=iou)
            else:  # (1 - iou_ij) / f_comp, +inf for a suppressor with f_comp <= 0
                f_comp = 1.0 - comp
                ok = f_comp > 0
                term = iou.neg_().add_(1.0).div_(torch.where(ok, f_comp, 1.0))
                term.add_(torch.where(ok, 0.0, math.inf))
            low[:ra, c0:c1] = term.amin(1)
    if kernel == "gaussian":
        return low.mul_(sigma).exp_().clamp_(max=1.0)
    return low.clamp_(max=1.0)
