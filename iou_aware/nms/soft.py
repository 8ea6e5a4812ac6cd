"""Soft-NMS (Bodla et al. 2017), class-aware and vectorized across classes.

How the loop is vectorized (padded per-class rows, multi-pick steps, compaction) and why the
multi-pick steps pick what the sequential algorithm picks: ``docs/nms.md``, "Soft-NMS".
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor

from ._common import (
    check_inputs,
    check_real,
    compute_dtype,
    empty_result,
    group_by_class,
    order_by_score,
)

# Precompute the box-to-box multipliers while rows x width^2 <= this: memory vs. IoUs per pick.
_SOFT_NMS_DENSE_ELEMENTS = 1 << 20
# Multi-pick steps only with at most this many classes left: fewer steps vs. dearer steps.
_SOFT_NMS_MULTI_PICK_MAX_CLASSES = 16
# Devices on which the steps run without reading a value back per step (_steps_without_sync), and
# how many steps run between two checks whether any box is left.
_SYNC_FREE_DEVICES = ("cuda",)
_SYNC_EVERY = 16


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

    Vectorized across classes: one padded row per class, every step picks in all classes at once,
    and with few classes left a step may take several picks of a class, exactly those the
    sequential algorithm takes next (``docs/nms.md``, "Soft-NMS"); scores agree with the
    sequential algorithm to rounding. On CUDA the steps take one pick per class and read nothing
    back to the host inside a step (:func:`_steps_without_sync`).
    """
    check_inputs(boxes, scores=scores, idxs=idxs)
    if method not in ("gaussian", "linear"):
        raise ValueError(f"method must be 'gaussian' or 'linear', got {method!r}")
    sigma = check_real(sigma, "sigma")
    iou_threshold = check_real(iou_threshold, "iou_threshold")
    score_threshold = check_real(score_threshold, "score_threshold")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"sigma must be > 0 for the gaussian method, got {sigma}")
    dtype = compute_dtype(boxes, scores)
    device = boxes.device
    if boxes.shape[0] == 0:
        return empty_result(boxes, dtype)
    scores = scores.to(dtype)
    # A box below the threshold is never output and, being picked after every higher box, never
    # decays a box that is output: drop those boxes first.
    alive_in = torch.nonzero(scores >= score_threshold).squeeze(1)
    if alive_in.numel() == 0:
        return empty_result(boxes, dtype)
    perm, cls, starts, counts = group_by_class(idxs, alive_in)
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

    def multipliers(cols: Tensor) -> Tensor:
        """(rows, width): the decay that the pick ``cols`` (rows, 1) of each class applies to its
        row (reads the current layout: M, B, A and width change with compaction)."""
        if M is not None:
            return M.gather(1, cols.unsqueeze(2).expand(-1, -1, width)).squeeze(1)
        return weights_of(B.gather(2, cols.unsqueeze(0).expand(4, -1, -1)), A.gather(1, cols)).squeeze(1)

    if device.type in _SYNC_FREE_DEVICES:
        return _steps_without_sync(S, index, multipliers, score_threshold)

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
            S.mul_(multipliers(cols))
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
    return order_by_score(keep, new_scores)


def _steps_without_sync(S: Tensor, index: Tensor, multipliers, score_threshold: float):
    """The sequential steps of soft-NMS (one pick per class per step, as the adaptive loop's
    one-pick steps), with no value read back to the host inside a step: on CUDA the kernels of
    many steps queue up instead of waiting for each step's stopping test. Runs at most ``width``
    steps (every pick retires a box) and tests whether any box is left every ``_SYNC_EVERY`` steps.

    ``S`` (R, W): current scores, ``-inf`` for retired boxes and padding; ``index`` (R, W): input
    index of each slot; ``multipliers(cols)`` (R, W): the decay that the pick ``cols`` (R, 1) of
    each row applies to its row. A row without a live box picks a retired slot, outputs nothing
    and changes nothing that is output (its scores stay ``-inf``)."""
    width = S.shape[1]
    picked_index, picked_score = [], []
    for step in range(width):
        cols = S.argmax(dim=1, keepdim=True)  # first occurrence: lowest index wins ties
        picked_index.append(index.gather(1, cols))
        picked_score.append(S.gather(1, cols))
        S.mul_(multipliers(cols))
        S.scatter_(1, cols, -math.inf)
        S.masked_fill_(~(S >= score_threshold), -math.inf)  # also NaN (-inf times a zero weight)
        if (step + 1) % _SYNC_EVERY == 0 and not bool(torch.isfinite(S).any()):
            break
    index, scores = torch.cat(picked_index, 1), torch.cat(picked_score, 1)
    out = scores >= score_threshold
    return order_by_score(index[out], scores[out])
