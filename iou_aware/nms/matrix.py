"""Matrix NMS (Wang et al., "SOLOv2: Dynamic and Fast Instance Segmentation", NeurIPS 2020,
section "Matrix NMS"), on box IoU. One image or a padded batch of images in one call."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._dense import (
    check_max_det,
    column_chunks,
    empty_like_result,
    finish,
    pair_terms,
    padded_rows,
    prepare,
    upper,
)
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
    rows = padded_rows(prep)
    chunks = column_chunks(rows)

    def masked_iou(cols):
        iou, _ = pair_terms(rows.boxes, rows.boxes[:, cols])
        return iou, upper(rows, cols)

    # iou_{., i}: the largest IoU of each box with a box ranked above it (0 for the top box)
    compensate = torch.zeros_like(rows.scores)
    for cols in chunks:
        iou, up = masked_iou(cols)
        compensate[:, cols] = torch.where(up, iou, torch.zeros_like(iou)).amax(1)
    comp = compensate.unsqueeze(2)  # row i of each (R, W, Q) block
    decay = torch.ones_like(rows.scores)
    for cols in chunks:
        iou, up = masked_iou(cols)
        if kernel == "gaussian":
            ratio = (comp.square() - iou.square()).mul_(sigma).exp_()
        else:
            f_comp = 1.0 - comp
            ratio = torch.where(
                f_comp > 0, (1.0 - iou) / torch.where(f_comp > 0, f_comp, 1.0), math.inf
            )
        ratio = torch.where(up, ratio, torch.full_like(ratio, math.inf))
        decay[:, cols] = ratio.amin(1).clamp_(max=1.0)
    out_scores = rows.scores * decay
    out = rows.valid & (out_scores >= score_threshold)
    return finish(prep, rows, out, out_scores, max_det=max_det)
