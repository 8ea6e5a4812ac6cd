"""Score / localization consistency metrics (pure numpy).

These functions take flat arrays over *matched* detections (one entry per detection that COCO's
greedy matching paired with a non-ignored ground truth at IoU >= 0.5; see
:func:`iou_aware.evaluation.match_detections`) and measure how well a detection's confidence
(classification score, or the IoU predicted by an IoU head) agrees with its actual IoU:

- :func:`pearson` and :func:`spearman` correlation;
- :func:`average_inconsistency_coefficient`: AIC of eq. 14 of Wang & Zhang, *Reconcile Prediction
  Consistency for Balanced Object Detection*;
- :func:`iou_binned_means`: mean score per IoU bin (0.5-0.6, ..., 0.9-1.0), the quantity plotted in
  Fig. 2 of Wu & Li, *IoU-balanced Loss Functions for Single-stage Object Detection*.

Undefined values (no matched detection, fewer than two, a constant input) are ``nan``, never an
exception: the caller decides whether to warn.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "DEFAULT_IOU_BIN_EDGES",
    "average_inconsistency_coefficient",
    "consistency_metrics",
    "iou_binned_means",
    "pearson",
    "rankdata",
    "spearman",
]

#: IoU bin edges of the binned table: [0.5, 0.6), [0.6, 0.7), ..., [0.9, 1.0] (last bin closed).
DEFAULT_IOU_BIN_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _as_1d(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _check_same_length(x: np.ndarray, y: np.ndarray):
    if x.shape != y.shape:
        raise ValueError(f"expected arrays of the same length, got {x.shape[0]} and {y.shape[0]}")


def pearson(x, y) -> float:
    """Pearson correlation ``sum(dx*dy) / sqrt(sum(dx^2) * sum(dy^2))``, ``dx = x - mean(x)``.

    Returns ``nan`` for fewer than two samples or when either input is constant.
    """
    x, y = _as_1d(x), _as_1d(y)
    _check_same_length(x, y)
    if x.size < 2:
        return float("nan")
    dx = x - x.mean()
    dy = y - y.mean()
    sxx = float(np.dot(dx, dx))
    syy = float(np.dot(dy, dy))
    if sxx <= 0.0 or syy <= 0.0:
        return float("nan")
    r = float(np.dot(dx, dy)) / np.sqrt(sxx * syy)
    return float(min(1.0, max(-1.0, r)))


def rankdata(x) -> np.ndarray:
    """Ranks 1..n of ``x`` in ascending order; tied values get the average of their ranks."""
    x = _as_1d(x)
    n = x.size
    ranks = np.empty(n, dtype=np.float64)
    if n == 0:
        return ranks
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start (inclusive) and end (exclusive) positions of each run of equal values
    starts = np.concatenate([[0], np.flatnonzero(xs[1:] != xs[:-1]) + 1])
    ends = np.concatenate([starts[1:], [n]])
    average_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks[order] = np.repeat(average_rank, ends - starts)
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties share ranks)."""
    x, y = _as_1d(x), _as_1d(y)
    _check_same_length(x, y)
    return pearson(rankdata(x), rankdata(y))


def average_inconsistency_coefficient(scores, ious) -> float:
    """Average Inconsistency Coefficient, eq. 14 of Wang & Zhang: ``mean_i |p_i - IoU_i|``.

    The paper prints eq. 14 as a sum over the N positive samples and names it an *average* with N
    the number of positives, i.e. the sum divided by N; we return that mean (``nan`` when empty).
    Here the "positives" are the detections matched to a ground truth at IoU >= 0.5.
    """
    scores, ious = _as_1d(scores), _as_1d(ious)
    _check_same_length(scores, ious)
    if scores.size == 0:
        return float("nan")
    return float(np.mean(np.abs(scores - ious)))


def iou_binned_means(
    ious,
    scores,
    pred_ious=None,
    edges: Sequence[float] = DEFAULT_IOU_BIN_EDGES,
) -> List[Dict[str, float]]:
    """Count and mean score (and mean predicted IoU) of the detections in each IoU bin.

    Bins are ``[edges[i], edges[i+1])`` with the last one closed, so IoU 1.0 falls in the last bin;
    IoUs outside ``[edges[0], edges[-1]]`` are left out. Means of empty bins are ``nan``.

    Returns one dict per bin with keys ``iou_lo``, ``iou_hi``, ``count``, ``mean_score`` and,
    when ``pred_ious`` is given, ``mean_pred_iou``.
    """
    ious, scores = _as_1d(ious), _as_1d(scores)
    _check_same_length(ious, scores)
    if pred_ious is not None:
        pred_ious = _as_1d(pred_ious)
        _check_same_length(ious, pred_ious)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin edges must be increasing, got {edges}")
    idx = np.searchsorted(edges, ious, side="right") - 1
    idx[ious == edges[-1]] = edges.size - 2  # close the last bin
    rows = []
    for b in range(edges.size - 1):
        sel = idx == b
        n = int(sel.sum())
        row = {
            "iou_lo": float(edges[b]),
            "iou_hi": float(edges[b + 1]),
            "count": n,
            "mean_score": float(scores[sel].mean()) if n else float("nan"),
        }
        if pred_ious is not None:
            row["mean_pred_iou"] = float(pred_ious[sel].mean()) if n else float("nan")
        rows.append(row)
    return rows


def consistency_metrics(scores, ious, pred_ious: Optional[np.ndarray] = None) -> Dict[str, float]:
    """The flat consistency metrics reported by the evaluator (plain fractions, not percent).

    ``score_iou_pearson``, ``score_iou_spearman`` and ``AIC`` (eq. 14 of Wang & Zhang) between score
    and actual IoU; with ``pred_ious`` also ``pred_iou_pearson`` and ``pred_iou_spearman`` between
    predicted and actual IoU.
    """
    scores, ious = _as_1d(scores), _as_1d(ious)
    out = {
        "score_iou_pearson": pearson(scores, ious),
        "score_iou_spearman": spearman(scores, ious),
        "AIC": average_inconsistency_coefficient(scores, ious),
    }
    if pred_ious is not None:
        pred_ious = _as_1d(pred_ious)
        out["pred_iou_pearson"] = pearson(pred_ious, ious)
        out["pred_iou_spearman"] = spearman(pred_ious, ious)
    return out
