"""Box fusion after suppression: weighted (merge) NMS (Zhou et al., "CAD: Scale Invariant
Framework for Real-Time Object Detection", ICCV Workshops 2017) and PAA's score voting (Kim &
Lee, "Probabilistic Anchor Assignment with IoU Prediction for Object Detection", ECCV 2020)."""

from __future__ import annotations

from typing import Optional, Tuple

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
from ._layout import (
    Prepared,
    Rows,
    check_max_det,
    empty_like_result,
    finish,
    pack,
    padded_rows,
    prepare,
)
from ._common import check_real
from .diou import iou_criterion
from .standard import batched_nms

WEIGHT_MODES = ("score_iou", "score")


def weighted_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    *,
    mode: str = "score_iou",
    class_agnostic: bool = False,
    max_det: Optional[int] = None,
    valid: Optional[Tensor] = None,
):
    """Weighted (merge) NMS (Zhou et al., ICCV-W 2017), class-aware.

    Greedy NMS, but the kept box ``M`` is replaced by the weighted mean of itself and the boxes it
    suppresses (the remaining boxes of its class with ``IoU(M, b_j) > iou_threshold``):
    ``M <- sum_j w_j b_j / sum_j w_j`` with ``w_j = s_j * IoU(M, b_j)`` (``mode="score_iou"``, the
    paper's weights; ``M`` itself has ``w = s_M``) or ``w_j = s_j`` (``mode="score"``, the plain
    score-weighted mean). The kept set and the scores are exactly those of standard NMS; scores
    are expected to be >= 0 (a box whose weights sum to <= 0 keeps its coordinates).

    Matrix form: the kept set by block-wise greedy NMS on the padded per-class IoU matrix
    (``_dense.greedy_keep``, the same decisions as torchvision's kernel), which also gives each
    removed box's suppressor, the first kept box ranked above it that overlaps it above the
    threshold (in the greedy loop the first such box removes it), then one scatter-add of the
    weighted boxes. ``class_agnostic``, ``max_det``
    and a padded batch (``boxes`` (B, N, 4), ``valid`` (B, N)) as in
    :func:`~iou_aware.nms.cluster.cluster_nms`. Returns ``(keep, scores[keep], merged boxes)``,
    sorted by score (ties by index).
    """
    iou_threshold = check_real(iou_threshold, "iou_threshold")
    if mode not in WEIGHT_MODES:
        raise ValueError(f"mode must be 'score_iou' (w = s * IoU) or 'score' (w = s), got {mode!r}")
    max_det = check_max_det(max_det)
    prep = prepare(boxes, scores, idxs, class_agnostic=class_agnostic, valid=valid, batch_ok=True)
    if prep.scores.numel() == 0:
        return empty_like_result(prep, True, boxes.device)
    parts = []
    for rows in padded_rows(prep):
        kept, by = greedy_keep(rows, iou_criterion, iou_threshold, suppressors=True)
        parts.append(rows.select(kept, rows.scores, _merged(rows, kept, by, mode)))
    return finish(prep, parts, max_det=max_det)


def _merged(rows: Rows, kept: Tensor, by: Tensor, mode: str) -> Tensor:
    """The kept boxes of a bucket merged with the boxes they remove (``by``: the layout column of
    each removed box's suppressor, from :func:`~._dense.greedy_keep`) -> (R, W, 4)."""
    r, w = rows.pos.shape
    removed = rows.valid & ~kept
    weight = torch.where(removed, rows.scores, 0.0)
    if mode == "score_iou":  # IoU of each removed box with its suppressor, as in the greedy loop
        sup = rows.boxes.gather(1, by.unsqueeze(2).expand(-1, -1, 4))
        iou, _ = pair_terms(sup.reshape(-1, 1, 4), rows.boxes.reshape(-1, 1, 4))
        weight = weight * iou.view(r, w)
    num = torch.zeros_like(rows.boxes).scatter_add_(
        1, by.unsqueeze(2).expand(-1, -1, 4), weight.unsqueeze(2) * rows.boxes
    )
    den = torch.zeros_like(rows.scores).scatter_add_(1, by, weight)
    return weighted_mean(num, den, rows.boxes, rows.scores, kept)


def _voted_boxes(prep: Prepared, keep: Tensor, sigma: float) -> Tensor:
    """Score voting of the boxes ``keep`` (indices into ``prep``'s boxes) -> (K, 4)."""
    is_kept = torch.zeros(prep.scores.shape[0], dtype=torch.bool, device=keep.device)
    is_kept[keep] = True
    full = torch.zeros_like(prep.boxes)
    for rows in padded_rows(prep):
        voters = pack(rows, is_kept[rows.pos.clamp(min=0)] & rows.valid)  # only the kept boxes
        num = torch.zeros_like(voters.boxes)
        den = torch.zeros_like(voters.scores)
        with scratch_for(rows.boxes) as scratch:
            for c0, c1, ra in column_blocks(rows, depth=voters.rank.shape[1]):
                cols = (slice(0, ra), slice(c0, c1))
                iou, _ = pair_terms(voters.boxes[:ra], rows.boxes[cols], scratch=scratch)
                # IoU > 0 (0 for padding, on either side: zero boxes overlap nothing)
                near = torch.gt(iou, 0.0, out=scratch("t1", iou.shape))
                # exp(-(1 - IoU)^2 / sigma); 1 - IoU as -IoU + 1 (the same value), in place
                weight = iou.neg_().add_(1.0).square_().mul_(-1.0 / sigma).exp_().mul_(near)
                weight.mul_(rows.scores[cols].unsqueeze(1))
                num[:ra] += weighted_sum(weight, rows.boxes[cols], near)
                den[:ra] += weight.sum(2)
        voted = weighted_mean(num, den, voters.boxes, torch.zeros_like(den), voters.valid)
        full[rows.pos[voters.row, voters.col]] = voted[voters.row, voters.slot]
    return full.index_select(0, keep)


def score_voting(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    keep: Tensor,
    sigma: float = 0.025,
    *,
    class_agnostic: bool = False,
) -> Tensor:
    """PAA's score voting (Kim & Lee, ECCV 2020, sec. "Score voting"): refine the boxes ``keep``
    that an NMS kept with all the candidates of their class.

    Each kept box ``b`` becomes ``sum_i p_i s_i b_i / sum_i p_i s_i`` over the candidates ``b_i``
    of its class (all input boxes, ``b`` itself included) with ``IoU(b, b_i) > 0``, where
    ``p_i = exp(-(1 - IoU(b, b_i))^2 / sigma)`` and ``sigma = 0.025`` (the paper's ``sigma_t``).
    Scores are expected to be >= 0. Returns the voted boxes (K, 4), aligned with ``keep``
    (computed in float32 for fp16/bf16/integer boxes). ``class_agnostic=True``: all boxes are
    candidates of every kept box.
    """
    sigma = check_real(sigma, "sigma")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (sigma_t of exp(-(1 - IoU)^2 / sigma_t)), got {sigma}")
    prep = prepare(boxes, scores, idxs, class_agnostic=class_agnostic)
    if (
        not isinstance(keep, Tensor)
        or keep.dim() != 1
        or keep.is_floating_point()
        or keep.dtype == torch.bool
    ):
        raise ValueError("keep must be a 1-D tensor of integer indices into boxes")
    if keep.numel() and not (0 <= int(keep.min()) and int(keep.max()) < prep.scores.shape[0]):
        raise ValueError(f"keep holds indices outside [0, {prep.scores.shape[0]})")
    if keep.numel() == 0:
        return prep.boxes.new_zeros((0, 4))
    return _voted_boxes(prep, keep.long(), sigma)


def score_voting_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    sigma: float = 0.025,
    *,
    class_agnostic: bool = False,
    max_det: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Standard NMS, then PAA's score voting (:func:`score_voting`) of the kept boxes.

    Returns ``(keep, scores[keep], voted boxes)``, sorted by score (ties by index), at most
    ``max_det`` boxes; ``class_agnostic=True`` runs NMS and voting over all boxes as one class.
    """
    iou_threshold = check_real(iou_threshold, "iou_threshold")
    max_det = check_max_det(max_det)
    prep = prepare(boxes, scores, idxs, class_agnostic=class_agnostic)
    if prep.scores.numel() == 0:
        return empty_like_result(prep, True, boxes.device)
    keep = batched_nms(prep.boxes, prep.scores, prep.key, iou_threshold)
    if max_det is not None:
        keep = keep[:max_det]
    voted = score_voting(prep.boxes, prep.scores, prep.key, keep, sigma)
    return keep, prep.scores.index_select(0, keep), voted
