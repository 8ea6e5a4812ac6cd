"""The NMS types ``MODEL.IOU_AWARE.NMS.TYPE`` accepts: :data:`NMS_REGISTRY`, extended with
:func:`register_nms`.

A registered NMS is called by the detectors as

    ``fn(boxes, scores, idxs, iou_threshold, **params)``, plus ``ious=`` when ``needs_ious``

with ``boxes`` ``(N, 4)`` absolute ``x1, y1, x2, y2``, ``scores`` ``(N,)``, ``idxs`` ``(N,)`` class
ids, the detector's NMS IoU threshold, the keyword arguments that its config keys declare
(``params``, see :class:`iou_aware.registry.Param`) and, for ``needs_ious=True`` types, the IoU
head's ``(N,)`` predicted IoUs (the detector then requires ``MODEL.IOU_AWARE.IOU_HEAD.ENABLED``).
It returns ``(keep, out_scores)`` or, for types that also move boxes (box fusion),
``(keep, out_scores, out_boxes)``: ``keep`` int64 indices into the input sorted by ``out_scores``
descending, ``out_scores`` ``(K,)`` and ``out_boxes`` ``(K, 4)`` aligned with ``keep``.

.. code-block:: python

    @register_nms("standard_min_score", params={"NMS.MIN_SCORE": "min_score"})
    def standard_min_score_nms(boxes, scores, idxs, iou_threshold, min_score=0.05):
        keep = batched_nms(boxes, scores, idxs, iou_threshold)
        keep = keep[scores[keep] >= min_score]
        return keep, scores[keep]

Register before the config is built (``iou_aware.config.add_iou_aware_config`` adds every
registered key with its default). The four built-in types below adapt the public functions,
whose own signatures differ, to this protocol. Pure Python + torch; no Detectron2.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

from ..registry import Param, ParamsSpec, Registry
from . import cluster as _cluster
from . import iou_guided as _iou_guided
from . import score_fused as _score_fused
from . import soft as _soft
from . import standard as _standard
from .diou import diou_nms
from .matrix import matrix_nms
from .merge import score_voting_nms, weighted_nms

__all__ = ["NMS_REGISTRY", "register_nms", "nms_needs_ious"]

NMS_REGISTRY = Registry("NMS type", "MODEL.IOU_AWARE.NMS.TYPE")


def _accepts_keyword(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to inspect (some builtins): trust the caller
        return True
    return any(
        p.kind == p.VAR_KEYWORD
        or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in params
    )


def register_nms(name: str, fn: Optional[Callable] = None, *, params: ParamsSpec = None,
                 needs_ious: bool = False):
    """Register ``fn`` as NMS type ``name`` (decorator, or call with ``fn``); returns ``fn``.

    ``params`` maps config keys under ``MODEL.IOU_AWARE`` (e.g. ``"NMS.MIN_SCORE"``) to keyword
    arguments of ``fn``, or is a sequence of :class:`~iou_aware.registry.Param`. With
    ``needs_ious=True`` the detector passes the predicted IoUs as ``ious=`` (``fn`` must take that
    keyword) and requires the IoU head. Registering a taken name raises ``KeyError``
    (``NMS_REGISTRY.register(..., replace=True)`` overrides; ``NMS_REGISTRY.unregister`` removes).
    """
    if not isinstance(needs_ious, bool):
        raise TypeError(f"NMS type {name!r}: needs_ious must be True or False, got {needs_ious!r}")

    def add(f: Callable) -> Callable:
        if needs_ious and callable(f) and not _accepts_keyword(f, "ious"):
            raise TypeError(
                f"NMS type {name!r} is registered with needs_ious=True, so it is called with the "
                f"keyword ious=, which {getattr(f, '__qualname__', f)!r} does not take: add an "
                "`ious` argument or register with needs_ious=False"
            )
        return NMS_REGISTRY.register(name, f, params=params, needs_ious=needs_ious)

    return add if fn is None else add(fn)


def nms_needs_ious(name: str) -> bool:
    """Whether NMS type ``name`` takes the predicted IoUs (``KeyError`` for an unknown name)."""
    return bool(NMS_REGISTRY.get(name).meta.get("needs_ious", False))


# ------------------------------------------------------------------------------ built-in types
def _in_unit_interval(value) -> Optional[str]:
    return None if 0.0 <= value <= 1.0 else "must be in [0, 1]"


def _positive(value) -> Optional[str]:
    return None if value > 0 else "must be > 0"


def _one_of(*valid):
    def check(value) -> Optional[str]:
        return None if value in valid else "valid values are: " + ", ".join(repr(v) for v in valid)

    return check


_soft_method = _one_of("gaussian", "linear")


def _none_if_negative(value):
    return None if value < 0 else value


@register_nms("standard")
def _run_standard(boxes, scores, idxs, iou_threshold):
    """Stock per-class NMS (:func:`batched_nms`); the output scores are the input scores."""
    keep = _standard.batched_nms(boxes, scores, idxs, iou_threshold)
    return keep, scores[keep]


@register_nms(
    "score_fused",
    params=[Param("NMS.FUSION_ALPHA", "alpha", help="score_fused: a of score^(1-a) * iou^a, in [0, 1]",
                  check=_in_unit_interval)],
    needs_ious=True,
)
def _run_score_fused(boxes, scores, idxs, iou_threshold, alpha=0.5, *, ious):
    """:func:`score_fused_nms` (score^(1-a) * iou^a, then NMS; IoU-aware RetinaNet, PAA)."""
    return _score_fused.score_fused_nms(boxes, scores, ious, idxs, iou_threshold, alpha=alpha)


@register_nms("iou_guided", needs_ious=True)
def _run_iou_guided(boxes, scores, idxs, iou_threshold, *, ious):
    """:func:`iou_guided_nms` (IoU-Net Alg. 1: rank by predicted IoU, keep the cluster's best
    score)."""
    return _iou_guided.iou_guided_nms(boxes, scores, ious, idxs, iou_threshold)


@register_nms(
    "soft",
    params=[
        Param("NMS.SOFT_METHOD", "method", help='soft: "gaussian" or "linear"', check=_soft_method),
        Param("NMS.SOFT_SIGMA", "sigma", help="soft, gaussian: sigma of exp(-iou^2 / sigma)",
              check=_positive),
        Param("NMS.SOFT_SCORE_THRESH", "score_threshold",
              help="soft: drop boxes whose decayed score falls below"),
    ],
)
def _run_soft(boxes, scores, idxs, iou_threshold, method="gaussian", sigma=0.5, score_threshold=0.001):
    """:func:`soft_nms` (Bodla et al. 2017) with the detector's NMS threshold as ``Nt``."""
    return _soft.soft_nms(
        boxes, scores, idxs, sigma=sigma, iou_threshold=iou_threshold, method=method,
        score_threshold=score_threshold,
    )


# The variants below are registered as they are: their signatures already follow the protocol
# (extra options keyword-only, with defaults; class_agnostic / max_det keep theirs).
_DIOU_BETA = Param("NMS.DIOU_BETA", "beta", check=_positive,
                   help="diou, cluster with CLUSTER_CRITERION diou: power of rho^2 / c^2 in "
                   "IoU - (rho^2 / c^2)^beta (1: Zheng et al. AAAI 2020)")
register_nms("diou", diou_nms, params=[_DIOU_BETA])
register_nms(
    "cluster",
    _cluster.cluster_nms,
    params=[
        Param("NMS.CLUSTER_CRITERION", "criterion", check=_one_of(*_cluster.CRITERIA),
              help='cluster: "iou" or "diou" (IoU - (rho^2 / c^2)^DIOU_BETA) '
              "suppresses"),
        _DIOU_BETA,
        Param("NMS.CLUSTER_PENALTY", "penalty", check=_one_of(*_cluster.PENALTIES),
              help='cluster: "none" (remove), "score" (decay s * prod exp(-IoU^2 / sigma)), '
              '"score_distance" (decay by min(exp(-IoU^2 / sigma) + D^beta, 1))'),
        Param("NMS.CLUSTER_SIGMA", "sigma", check=_positive, help="cluster, penalty: sigma, > 0"),
        Param("NMS.CLUSTER_DISTANCE_BETA", "distance_beta", check=_positive,
              help="cluster, score_distance: power beta of D = rho^2 / c^2, > 0"),
        Param("NMS.CLUSTER_WEIGHTED", "weighted", check=_one_of(True, False),
              help="cluster: kept boxes become the weighted mean of the lower boxes they overlap "
              "above CLUSTER_WEIGHTED_THRESH (the output boxes change)"),
        Param("NMS.CLUSTER_WEIGHTED_THRESH", "weighted_threshold", check=_in_unit_interval,
              help="cluster, weighted: IoU above which a box takes part in a kept box's mean"),
        Param("NMS.CLUSTER_SCORE_THRESH", "score_threshold", default=-1.0,
              to_arg=_none_if_negative,
              help="cluster: drop boxes whose output score is below this (< 0: none)"),
    ],
)
register_nms(
    "matrix",
    matrix_nms,
    params=[
        Param("NMS.MATRIX_KERNEL", "kernel", check=_one_of("gaussian", "linear"),
              help='matrix: decay kernel, "gaussian" exp(-sigma * iou^2) or "linear" 1 - iou'),
        Param("NMS.MATRIX_SIGMA", "sigma", check=_positive, help="matrix, gaussian: sigma, > 0"),
        Param("NMS.MATRIX_SCORE_THRESH", "score_threshold",
              help="matrix: drop boxes whose decayed score falls below"),
    ],
)
register_nms(
    "weighted",
    weighted_nms,
    params=[Param("NMS.WEIGHTED_MODE", "mode", check=_one_of("score_iou", "score"),
                  help='weighted: box weights "score_iou" (s * IoU, Zhou et al. 2017) '
                  'or "score" (s)')],
)
register_nms(
    "score_voting",
    score_voting_nms,
    params=[Param("NMS.VOTING_SIGMA", "sigma", check=_positive,
                  help="score_voting: sigma_t of exp(-(1 - IoU)^2 / sigma_t), > 0 (PAA: 0.025)")],
)
