"""Cluster-NMS (Zheng et al., "Enhancing Geometric Factors in Model Learning and Inference for
Object Detection and Instance Segmentation", IEEE TCYB 2021, Algorithm 1) and its
variants from the same paper: DIoU criterion, score penalty (SPM), centre-distance penalty and
weighted coordinates. One image or a padded batch of images in one call."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._dense import (
    column_blocks,
    greedy_keep,
    pair_terms,
    scratch_for,
    weighted_mean,
    weighted_sum,
)
from ._layout import Rows, check_max_det, empty_like_result, finish, pack, padded_rows, prepare
from .diou import check_beta, diou_criterion, iou_criterion
from ._common import check_real

CRITERIA = ("iou", "diou")
PENALTIES = ("none", "score", "score_distance")


def _check_choice(value, name, valid):
    if value not in valid:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(v) for v in valid)}, got {value!r}"
        )
    return value


def cluster_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    *,
    criterion: str = "iou",
    beta: float = 1.0,
    penalty: str = "none",
    sigma: float = 0.2,
    distance_beta: float = 0.6,
    weighted: bool = False,
    weighted_threshold: float = 0.8,
    score_threshold: Optional[float] = None,
    class_agnostic: bool = False,
    max_det: Optional[int] = None,
    valid: Optional[Tensor] = None,
):
    """Cluster-NMS (TCYB 2021, Algorithm 1), class-aware.

    Per class, boxes sorted by score (ties: lower index first), ``X = triu(IoU(B, B), 1)`` holds
    the pairs ``i < j`` (``i`` ranked higher). Starting from ``C = X``: ``A = C``;
    ``b_j = max_i A_ij``; ``E = diag(b < eps)``; ``C = E X`` (only the rows of the boxes kept so
    far suppress); repeat until ``A == C``; keep the boxes with ``b < eps``. The fixed point is
    exactly the greedy NMS result (shown in the paper), reached in at most as many steps as the
    longest chain of suppressions. Here a pair suppresses when its value is ``> iou_threshold``
    (torchvision's convention; the paper keeps ``< eps``), so the plain form keeps exactly what
    ``torchvision.ops.batched_nms`` keeps. The kept set is computed block by block in rank order
    (``_dense.greedy_keep``: boxes suppressed by the kept boxes of earlier blocks in one batched
    product, the rest of a block by exactly this iteration), every class at once, in memory
    classes x (kept + block) x block rather than classes x largest class^2.

    Variants (same paper, "Cluster-NMS" with geometric factors):

    - ``criterion="diou"``: ``X`` holds ``IoU - (rho^2 / c^2)^beta`` (Cluster-DIoU-NMS, equal to
      DIoU-NMS, :func:`~iou_aware.nms.diou.diou_nms`).
    - ``penalty="score"`` (Cluster-NMS_S, the score penalty mechanism): no box is removed; every
      box's score decays by the final ``C`` (the IoUs with the kept boxes ranked above it),
      ``s_j <- s_j * prod_i exp(-C_ij^2 / sigma)``, ``sigma = 0.2`` in the paper.
    - ``penalty="score_distance"`` (Cluster-NMS_S+D): the factor of each pair is
      ``min(exp(-C_ij^2 / sigma) + D_ij^distance_beta, 1)`` with ``D = rho^2 / c^2``, so that a box
      whose centre is far from the kept box's is penalized less (``distance_beta = 0.6`` in the
      paper). Only pairs in the rows of kept boxes count (``C_ij = 0`` elsewhere gives factor 1).
    - ``weighted=True`` (Cluster-NMS_W, weighted coordinates as in weighted NMS, Zhou et al. 2017):
      each kept box ``i`` becomes ``sum_j w_ij b_j / sum_j w_ij`` over itself (``w_ii = s_i``) and
      the boxes ranked below it with ``IoU > weighted_threshold`` (``w_ij = s_j IoU_ij``), the
      boxes of row ``i`` of ``X``. As in the matrix form, a box already suppressed by a
      higher kept box can also vote for a lower kept box it overlaps that much; the greedy form,
      where each box votes only for the box that suppressed it, is
      :func:`~iou_aware.nms.merge.weighted_nms`. The authors' code averages only over
      ``IoU > 0.8`` (their README: 0.5 was worse, 0.9 about the same as none), the default.

    ``score_threshold`` (None: none) drops output boxes whose output score is below it (the
    authors keep ``score > 0.01`` after the penalized forms). ``class_agnostic=True``: every box
    of an image in one cluster matrix. ``max_det``: at most this many boxes per image.

    One image: ``boxes`` (N, 4), ``scores``, ``idxs`` (N,); returns ``(keep, out_scores)`` or, with
    ``weighted``, ``(keep, out_scores, out_boxes)``, sorted by output score (ties by index).
    A padded batch: ``boxes`` (B, N, 4), ``scores``, ``idxs`` and ``valid`` (B, N) (``valid``
    False for padding, default all valid), computed for all images at once; returns the same
    per image as (B, K) / (B, K, 4) tensors, with ``keep = -1`` (score 0, box 0) in unused slots.
    """
    iou_threshold = check_real(iou_threshold, "iou_threshold")
    _check_choice(criterion, "criterion", CRITERIA)
    _check_choice(penalty, "penalty", PENALTIES)
    beta = check_beta(beta)
    distance_beta = check_beta(distance_beta, "distance_beta")
    sigma = check_real(sigma, "sigma")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (the score penalty exp(-IoU^2 / sigma)), got {sigma}")
    if not isinstance(weighted, bool):
        raise ValueError(f"weighted must be True or False, got {weighted!r}")
    weighted_threshold = check_real(weighted_threshold, "weighted_threshold")
    if score_threshold is not None:
        score_threshold = check_real(score_threshold, "score_threshold")
    max_det = check_max_det(max_det)
    prep = prepare(boxes, scores, idxs, class_agnostic=class_agnostic, valid=valid, batch_ok=True)
    if prep.scores.numel() == 0:
        return empty_like_result(prep, weighted, boxes.device)
    suppresses = diou_criterion(beta) if criterion == "diou" else iou_criterion
    parts = []
    for rows in padded_rows(prep):
        kept = greedy_keep(rows, suppresses, iou_threshold)
        out, out_scores, out_boxes = kept, rows.scores, None
        if penalty != "none" or weighted:
            out_scores, out_boxes = _penalty_and_weights(
                rows, kept, penalty, sigma, distance_beta, weighted, weighted_threshold
            )
            if penalty != "none":
                out = rows.valid
        if score_threshold is not None:
            out = out & (out_scores >= score_threshold)
        parts.append(rows.select(out, out_scores, out_boxes))
    return finish(prep, parts, max_det=max_det)


def _penalty_and_weights(
    rows: Rows,
    kept: Tensor,
    penalty: str,
    sigma: float,
    distance_beta: float,
    weighted: bool,
    weighted_threshold: float,
):
    """The output scores and boxes of the penalized and weighted forms, from the pairs of the final
    ``C = E X``: kept box ``i`` (packed per row), any box ``j`` ranked below it."""
    dtype = rows.boxes.dtype
    packed = pack(rows, kept)
    rank = packed.rank.to(dtype).unsqueeze(2)  # (R, K, 1); the layout width in padding slots
    log_decay = torch.zeros_like(rows.scores)
    num = torch.zeros_like(packed.boxes)
    den = torch.zeros_like(packed.scores)
    with scratch_for(rows.boxes) as scratch:
        for c0, c1, ra in column_blocks(rows, depth=packed.rank.shape[1]):
            cols = (slice(0, ra), slice(c0, c1))
            iou, ratio = pair_terms(
                packed.boxes[:ra], rows.boxes[cols], penalty == "score_distance", scratch
            )
            j = torch.arange(c0, c1, dtype=dtype, device=iou.device).view(1, 1, -1)
            above = torch.lt(rank[:ra], j, out=scratch("above", iou.shape))  # kept i above j
            if penalty != "none":
                g = torch.square(iou, out=scratch("t1", iou.shape)).mul_(-1.0 / sigma)  # log exp
                if penalty == "score_distance":
                    g = g.exp_().add_(ratio.pow_(distance_beta)).clamp_(max=1.0).log_()
                # finite, so that the mask zeroes it; exp of the sum is 0 either way
                g.clamp_(min=torch.finfo(dtype).min)
                log_decay[cols] = g.mul_(above).sum(1)  # sum over the kept rows i
            if weighted:
                vote = torch.gt(iou, weighted_threshold, out=scratch("t2", iou.shape)).mul_(above)
                wij = iou.mul_(rows.scores[cols].unsqueeze(1)).mul_(vote)
                num[:ra] += weighted_sum(wij, rows.boxes[cols], vote)
                den[:ra] += wij.sum(2)
    out_scores = rows.scores * log_decay.exp() if penalty != "none" else rows.scores
    out_boxes = None
    if weighted:
        merged = weighted_mean(num, den, packed.boxes, packed.scores, packed.valid)
        out_boxes = packed.unpack(merged, rows.boxes)
    return out_scores, out_boxes
