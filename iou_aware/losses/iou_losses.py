"""IoU-based box-regression losses of the five papers (pure torch, no Detectron2).

Every loss takes aligned ``(N, 4)`` ``x1, y1, x2, y2`` boxes ``pred, target`` and
``reduction="none" | "sum" | "mean"`` (``"none"`` returns ``(N,)``). fp16/bf16 input is computed in
float32, float32/float64 keep their dtype. All geometric terms come from
:class:`iou_aware.geometry.BoxPairTerms`, computed once per call; the guards that keep values and
gradients finite for degenerate boxes are documented there and in the ``_pow`` / ``_neg_log`` helpers
below. Argument values outside the range a paper states raise ``ValueError``.

Each loss is registered as a box loss of kind "boxes" (``iou_aware.losses.registry``) with its
config keys under ``MODEL.IOU_AWARE`` and, where a paper composes it with more than the per-box
value, the detector's ``compose`` hook (Focal-EIoU eq. 11, HIoU + smooth-L1 eq. 11).

Naming: ``efficient_iou`` is Zhang et al.'s *Efficient* IoU (EIoU, eq. 7); ``extended_iou`` is
Peng & Yu's *extended* IoU (EIoU, eq. 10-22). Never a bare ``eiou``.
"""

import math
import numbers

import torch

from ..geometry import BoxPairTerms
from ._reduction import as_compute_dtype, check_reduction, reduce_loss
from .registry import Param, check, one_of, register_box_loss, smooth_l1_beta_param
from .regression import smooth_l1_loss

__all__ = [
    "iou_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "efficient_iou_loss",
    "focal_efficient_iou_loss",
    "alpha_iou_loss",
    "harmonic_iou_loss",
    "smooth_extended_iou_loss",
]

IOU_MODES = ("linear", "square", "log")
_TINY = 1e-12  # floor of powers and logs when the caller passes eps=0
ALPHA_PENALTIES = ("none", "giou", "diou", "ciou")


def _terms(pred: torch.Tensor, target: torch.Tensor, eps: float) -> BoxPairTerms:
    return BoxPairTerms(*as_compute_dtype(pred, target), eps=eps)


def _check_number(name: str, value, condition, valid: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite real with ``condition(value)``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not condition(value):
        raise ValueError(f"{name} must be {valid}, got {value!r}")


def _pow(x: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """``x ** p`` for a quantity ``x >= 0`` (IoU, a penalty), with a finite gradient at ``x = 0``.

    For ``p >= 1`` this is plain ``x ** p`` (its gradient ``p x^(p-1)`` is finite at 0). For ``p < 1``
    the gradient ``p x^(p-1)`` is infinite at 0, so below ``eps`` the power is continued linearly,
    ``x * eps^(p-1)`` (same value at ``eps``, still 0 at 0): exact for ``x >= eps``. Negative ``x``
    (only inverted boxes produce it) is clamped to 0.
    """
    x = x.clamp(min=0)
    if p == 1:
        return x
    if p > 1:
        return x.pow(p)
    floor = eps if eps > 0 else _TINY
    return torch.where(x < floor, x * (floor ** (p - 1.0)), x.clamp(min=floor).pow(p))


def _neg_log(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``-log(x)`` with ``x`` floored at ``eps`` (finite value ``-log(eps)`` and zero gradient below)."""
    return -torch.log(x.clamp(min=eps if eps > 0 else _TINY))


@register_box_loss("iou", inputs="boxes", params=[Param(
    "IOU_MODE", "mode", help='iou: "linear" (1 - IoU), "square" (1 - IoU^2), "log" (-ln IoU)',
    check=one_of(*IOU_MODES))])
def iou_loss(pred, target, mode="linear", reduction="none", eps=1e-7):
    """IoU loss in three forms, the IoU terms of He et al. eq. 1-2:

    - ``"linear"``: ``1 - IoU`` (He et al. eq. 1 with alpha = 1; Zhang et al. eq. 3);
    - ``"square"``: ``1 - IoU^2`` (``L_{IoU^2}``, He et al. eq. 1 with alpha = 2, times 2);
    - ``"log"``: ``-log(IoU)`` (UnitBox; He et al. eq. 2, the alpha -> 0 limit of eq. 1).

    ``IoU = I / (U + eps)``. In ``"log"`` mode IoU is floored at ``eps`` (non-overlapping boxes give
    ``-log(eps)`` and no gradient, the IoU loss's known plateau). Nothing is detached.
    """
    if mode not in IOU_MODES:
        raise ValueError(f"mode must be one of {IOU_MODES}, got {mode!r}")
    check_reduction(reduction)
    iou = _terms(pred, target, eps).iou
    if mode == "linear":
        loss = 1 - iou
    elif mode == "square":
        loss = 1 - iou.pow(2)
    else:
        loss = _neg_log(iou, eps)
    return reduce_loss(loss, reduction)


@register_box_loss("giou", inputs="boxes")
def giou_loss(pred, target, reduction="none", eps=1e-7):
    """Generalized IoU loss ``1 - IoU + |C \\ (A u B)| / |C|`` (Rezatofighi et al.; Zhang et al.
    eq. 4; He et al. eq. 4 with alpha = 1).

    Computed as torchvision's ``generalized_box_iou_loss`` (``I / (U + eps)`` and
    ``(|C| - U) / (|C| + eps)``); values equal it for valid boxes. Nothing is detached.
    """
    check_reduction(reduction)
    t = _terms(pred, target, eps)
    return reduce_loss((1 - t.iou).add_(t.giou_penalty), reduction)


@register_box_loss("diou", inputs="boxes")
def diou_loss(pred, target, reduction="none", eps=1e-7):
    """Distance IoU loss ``1 - IoU + rho^2(b, b_gt) / c^2`` (Zheng et al.; He et al. eq. 4 with
    alpha = 1), ``c^2 = w_c^2 + h_c^2 + eps`` the enclosing box's squared diagonal.

    Values equal torchvision's ``distance_box_iou_loss``. Nothing is detached.
    """
    check_reduction(reduction)
    t = _terms(pred, target, eps)
    return reduce_loss((1 - t.iou).add_(t.diou_penalty), reduction)


@register_box_loss("ciou", inputs="boxes")
def ciou_loss(pred, target, reduction="none", eps=1e-7):
    """Complete IoU loss ``1 - IoU + rho^2 / c^2 + alpha * v`` (Zheng et al.; Zhang et al. eq. 5;
    He et al. eq. 4 with alpha = 1).

    ``v = 4 / pi^2 * (atan(w_gt / h_gt) - atan(w / h))^2`` and the trade-off
    ``alpha = v / (1 - IoU + v + eps)``. Following torchvision's ``complete_box_iou_loss``: ``alpha``
    is computed without gradient (detached) and is *not* gated by ``IoU > 0.5`` (a variant some
    CIoU implementations use); ``v`` is differentiated. Values equal torchvision's for valid boxes
    (heights are floored at ``eps`` inside ``atan`` only).
    """
    check_reduction(reduction)
    t = _terms(pred, target, eps)
    return reduce_loss((1 - t.iou).add_(t.diou_penalty).add_(t.ciou_aspect_penalty), reduction)


def _efficient_iou(t: BoxPairTerms) -> torch.Tensor:
    # L_EIoU of Zhang et al. eq. 7 per box (shared by the EIoU and Focal-EIoU losses)
    return (1 - t.iou).add_(t.diou_penalty).add_(t.efficient_wh_penalty)


@register_box_loss("efficient_iou", inputs="boxes")
def efficient_iou_loss(pred, target, reduction="none", eps=1e-7):
    """Efficient IoU loss of Zhang et al. eq. 7 (``L_IoU + L_dis + L_asp``)::

        1 - IoU + rho^2(b, b_gt) / (w_c^2 + h_c^2) + (w - w_gt)^2 / w_c^2 + (h - h_gt)^2 / h_c^2

    with ``w_c, h_c`` the smallest enclosing box; each denominator gets ``+ eps``. Nothing is
    detached. (Not Peng & Yu's *extended* IoU: see :func:`smooth_extended_iou_loss`.)
    """
    check_reduction(reduction)
    t = _terms(pred, target, eps)
    return reduce_loss(_efficient_iou(t), reduction)


def focal_efficient_iou_batch_normalization(loss, pairs, gamma):
    """The detector's composition of Focal-EIoU, Zhang et al. eq. 11: the batch loss is
    ``sum_i W_i L_i / sum_i W_i`` with ``W_i = IoU_i^gamma``, not a mean over the boxes. The
    detector sums the per-positive losses and divides by its positive count ``P``, so each is
    rescaled by ``P / sum_i W_i`` (``W`` from the detached IoUs, the sum floored at 1e-6)."""
    if not loss.numel():
        return loss
    w = pairs.ious.pow(gamma)
    return loss * (loss.numel() / w.sum().clamp(min=1e-6))


@register_box_loss("focal_efficient_iou", inputs="boxes", compose=focal_efficient_iou_batch_normalization,
                   params=[Param("FOCAL_EIOU.GAMMA", "gamma", help="focal_efficient_iou (Zhang et al. "
                                 "eq. 10-11): IoU^gamma weight (detached)",
                                 check=check(lambda g: g >= 0, "must be >= 0"))])
def focal_efficient_iou_loss(pred, target, gamma=0.5, reduction="none", eps=1e-7):
    """Focal-EIoU of Zhang et al. eq. 10-11: per box ``w_i * L_EIoU,i`` with ``w_i = IoU_i^gamma``.

    ``L_EIoU`` is :func:`efficient_iou_loss` (eq. 7). The weight ``IoU^gamma`` is detached (a weight
    that up-weights well-localized boxes, eq. 10); ``gamma >= 0`` (``gamma = 0`` is the EIoU loss;
    the paper uses 0.5). Reductions follow eq. 11:

    - ``"none"``: ``w_i * L_i``; ``"sum"``: ``sum_i w_i L_i``;
    - ``"mean"``: ``sum_i w_i L_i / sum_i w_i`` (the batch normalization of eq. 11, not a plain
      mean); 0 when every weight is 0 (no overlapping pair) or the input is empty.
    """
    _check_number("gamma", gamma, lambda g: g >= 0, "a finite number >= 0 (Zhang et al. eq. 10)")
    check_reduction(reduction)
    t = _terms(pred, target, eps)
    weight = t.iou.detach().pow(gamma)
    weighted = _efficient_iou(t).mul_(weight)  # in place: the product's backward needs only weight
    if reduction != "mean":
        return reduce_loss(weighted, reduction)
    total_weight = weight.sum()
    denom = torch.where(total_weight > 0, total_weight, torch.ones_like(total_weight))
    return weighted.sum() / denom


_ALPHA = "alpha_iou (He et al. eq. 1-4): "


@register_box_loss("alpha_iou", inputs="boxes", params=[
    Param("ALPHA_IOU.ALPHA", "alpha", help=_ALPHA + "power alpha",
          check=check(lambda a: a > 0, "must be > 0 (He et al. eq. 1)")),
    Param("ALPHA_IOU.PENALTY", "penalty", help=_ALPHA + "penalty none|giou|diou|ciou",
          check=one_of(*ALPHA_PENALTIES)),
    Param("ALPHA_IOU.ALPHA_PENALTY", "alpha_penalty", default=-1.0,
          help=_ALPHA + "penalty power (< 0 = same as ALPHA)",
          check=check(lambda a: a != 0, "must be > 0 (He et al. eq. 3), or < 0 for the same as ALPHA"),
          to_arg=lambda a: None if a < 0 else a),
    Param("ALPHA_IOU.BOX_COX", "box_cox", help=_ALPHA + "BOX_COX = (1 - IoU^alpha) / alpha (eq. 1); "
          "needs PENALTY none"),
])
def alpha_iou_loss(
    pred,
    target,
    alpha=3.0,
    penalty="none",
    alpha_penalty=None,
    box_cox=False,
    reduction="none",
    eps=1e-7,
):
    """Alpha-IoU family of He et al. eq. 1-4.

    - ``box_cox=False`` (default, eq. 3-4): ``1 - IoU^a1 + P^a2`` with ``a1 = alpha``,
      ``a2 = alpha_penalty`` (``alpha`` when ``None``; the paper uses ``a1 = a2``) and penalty
      ``P`` (eq. 4): ``"none"``: no term; ``"giou"``: ``(|C \\ (A u B)| / |C|)^a2``;
      ``"diou"``: ``(rho^2 / c^2)^a2``; ``"ciou"``: ``(rho^2 / c^2)^a2 + (beta v)^a2`` with the CIoU
      trade-off ``beta = v / (1 - IoU + v + eps)``. ``alpha = 1`` gives :func:`iou_loss`,
      :func:`giou_loss`, :func:`diou_loss`, :func:`ciou_loss`.
    - ``box_cox=True`` (eq. 1): ``(1 - IoU^alpha) / alpha``, which tends to ``-log IoU`` as
      ``alpha -> 0`` (eq. 2). Eq. 1 has no penalty term, so ``penalty`` must be ``"none"``.

    ``alpha, alpha_penalty > 0``. Gradient: IoU and the penalties are differentiated; ``beta`` is
    detached, as in :func:`ciou_loss`, so that ``alpha = 1`` reproduces it. eq. 4 prints
    ``v = pi/4 (...)^2``; we use CIoU's ``4/pi^2``, which eq. 4 must mean since it recovers
    ``L_CIoU`` at alpha = 1. For ``alpha < 1`` the power is linear below ``eps`` (finite gradient
    at IoU = 0; see ``_pow``).

    The authors' code departs from the paper: it drops the ``1/alpha`` of eq. 1 and puts eps inside
    the power (``(IoU + eps)^alpha``); the paper's forms are used here.
    """
    _check_number("alpha", alpha, lambda a: a > 0, "a finite number > 0 (He et al. eq. 1-3)")
    if alpha_penalty is None:
        alpha_penalty = alpha
    _check_number(
        "alpha_penalty",
        alpha_penalty,
        lambda a: a > 0,
        "None or a finite number > 0 (He et al. eq. 3)",
    )
    if penalty not in ALPHA_PENALTIES:
        raise ValueError(f"penalty must be one of {ALPHA_PENALTIES}, got {penalty!r}")
    if box_cox and penalty != "none":
        raise ValueError(
            f"box_cox=True is He et al. eq. 1, which has no penalty term: use penalty='none', got {penalty!r}"
        )
    check_reduction(reduction)
    t = _terms(pred, target, eps)
    iou_a = _pow(t.iou, alpha, eps)
    if box_cox:
        return reduce_loss((1 - iou_a) / alpha, reduction)
    loss = 1 - iou_a
    if penalty == "giou":
        loss = loss + _pow(t.giou_penalty, alpha_penalty, eps)
    elif penalty in ("diou", "ciou"):
        loss = loss + _pow(t.diou_penalty, alpha_penalty, eps)
        if penalty == "ciou":
            loss = loss + _pow(t.ciou_aspect_penalty, alpha_penalty, eps)
    return reduce_loss(loss, reduction)


def harmonic_localization_loss(loss, pairs, alpha, add_smooth_l1, smooth_l1_beta):
    """The detector's composition of HIoU, Wang & Zhang eq. 11: with ``add_smooth_l1`` the box loss
    is the full localization loss ``smooth_L1(deltas) + alpha * L_HIoU`` (smooth-L1 summed over the
    four regression targets), otherwise ``L_HIoU`` alone (``alpha`` unused)."""
    if not add_smooth_l1:
        return loss
    l1 = smooth_l1_loss(pairs.pred_deltas, pairs.target_deltas, beta=smooth_l1_beta).sum(dim=1)
    return l1 + alpha * loss


_HIOU = "harmonic_iou (Wang & Zhang eq. 10-11): "


@register_box_loss("harmonic_iou", inputs="boxes", compose=harmonic_localization_loss, params=[
    Param("HIOU.GAMMA", "gamma", help=_HIOU + "(1 + IoU)^GAMMA (1 - IoU), GAMMA <= 1",
          check=check(lambda g: 0 < g <= 1, "must be in (0, 1]: the HIoU loss is monotone only for "
                      "gamma <= 1 (Wang & Zhang sec. 3.2)")),
    Param("HIOU.ALPHA", "alpha", default=1.5, help=_HIOU + "weight of HIoU in smooth_l1 + ALPHA * HIoU",
          check=check(lambda a: a >= 0, "must be >= 0")),
    Param("HIOU.ADD_SMOOTH_L1", "add_smooth_l1", default=True,
          help=_HIOU + "the box loss is the full localization loss smooth_l1 + ALPHA * HIoU (eq. 11)"),
    smooth_l1_beta_param("smooth_l1_beta"),
])
def harmonic_iou_loss(pred, target, gamma=0.8, reduction="none", eps=1e-7):
    """Harmonic IoU loss of Wang & Zhang eq. 10: ``(1 + IoU)^gamma * (1 - IoU)``.

    The factor ``(1 + IoU)^gamma`` is *not* detached: the paper's monotonicity condition ``gamma <= 1``
    is about the full loss, ``dL/dIoU = (1 + IoU)^(gamma-1) * ((gamma - 1) - (gamma + 1) IoU)``,
    which is ``<= 0`` on ``[0, 1]`` for every ``gamma <= 1`` and positive near ``IoU = 0`` for
    ``gamma > 1`` (the loss would push low-IoU boxes away). So ``gamma > 1`` raises ``ValueError``.
    The paper uses 0.8; ``gamma < 0`` is allowed (still monotone) but down-weights high-IoU boxes,
    the opposite of the paper's intent. Eq. 11 adds this loss, times a weight, to the smooth-L1
    loss: :func:`harmonic_localization_loss`, the detector's composition.
    """
    _check_number(
        "gamma",
        gamma,
        lambda g: g <= 1,
        "a finite number <= 1 (Wang & Zhang sec. 3.2: the loss is monotone only for gamma <= 1)",
    )
    check_reduction(reduction)
    iou = _terms(pred, target, eps).iou
    return reduce_loss((1 + iou).pow(gamma) * (1 - iou), reduction)


_SMOOTH_EIOU = "smooth_extended_iou (Peng & Yu eq. 23, 28): "


@register_box_loss("smooth_extended_iou", inputs="boxes", params=[
    Param("SMOOTH_EIOU.POWER", "power", help=_SMOOTH_EIOU + "(1 - EIoU)^POWER",
          check=check(lambda p: p >= 1, "must be >= 1 (Peng & Yu eq. 23)")),
    Param("SMOOTH_EIOU.SOT", "sot", help=_SMOOTH_EIOU + "SOT = the steady optimization technique"),
])
def smooth_extended_iou_loss(pred, target, power=2.0, sot=True, reduction="none", eps=1e-7):
    """Smooth-EIoU loss of Peng & Yu eq. 23 with the steady optimization technique (eq. 28).

    Value: ``(1 - I_e / U_e)^power`` with ``I_e``, ``U_e`` the *extended* intersection and union
    (eq. 16, 21; :func:`iou_aware.geometry.extended_iou`). ``power = 2`` is eq. 23 (the
    convexification technique); footnote 2 allows any ``power > 1``. ``power >= 1`` is required
    (``power = 1`` is the plain ``1 - EIoU`` of the ablation, Table I row 5; below 1 the gradient at
    the minimum is infinite).

    ``sot=True`` (eq. 28): the forward value is unchanged and the gradient of each box's loss is
    multiplied by its ``U_e`` (detached), so the update is proportional to the box size. Implemented
    with the detach trick ``out = L.detach() + (U_e L - (U_e L).detach())``, whose value is exactly ``L``
    and whose gradient is ``U_e dL``. eq. 28's first line carries an extra factor 2 that its own
    second line does not; we scale by ``U_e`` only (constants belong to the learning rate). The
    ``U_e`` used is the guarded denominator ``max(U_e, |I_e|) + eps`` (``U_e + eps`` for valid
    boxes). With ``sot=False`` the gradient is the plain autograd gradient of eq. 23.

    Gradients are those of the definition (eq. 16) by autograd. They equal the paper's appendix
    eq. 33-44 except the third branches of eq. 33-34: for ``x1_p < x1_t`` eq. 33 gives 0, while
    eq. 16 gives ``2 (y1 - y2)`` when the boxes are also apart vertically (``y1 > y2``); likewise
    eq. 34.

    Scale: ``U_e`` is an area, so with ``sot=True`` the gradients grow with box size. Peng & Yu
    apply the loss to boxes normalized by ``sqrt(anchor area)`` (Algorithm 1); feed normalized
    boxes, or use ``sot=False``, for pixel-sized boxes.

    The Extended-IoU group's code uses a Huber (smooth-L1) function of ``1 - EIoU`` instead of eq.
    23; the paper's form is used here.
    """
    _check_number("power", power, lambda p: p >= 1, "a finite number >= 1 (Peng & Yu eq. 23, footnote 2)")
    if not isinstance(sot, bool):
        raise ValueError(f"sot must be True or False, got {sot!r}")
    check_reduction(reduction)
    t = _terms(pred, target, eps)
    gap = 1 - t.extended_iou  # in [0, 2)
    loss = gap if power == 1 else gap.pow(power)
    if sot:
        scaled = t.extended_denominator.detach() * loss
        loss = loss.detach() + (scaled - scaled.detach())
    return reduce_loss(loss, reduction)
