"""Element-wise regression losses on box deltas (pure torch, no Detectron2).

- :func:`smooth_l1_loss`: Fast R-CNN's smooth-L1 with ``beta`` (as fvcore / Detectron2 / torch).
- :func:`focal_l1_loss`: FocalL1, eq. 8-9 of Zhang et al., *Focal and Efficient IOU Loss for
  Accurate Bounding Box Regression*.
- :func:`iou_balanced_smooth_l1_loss`: IoU-balanced localization loss, eq. 3-5 of Wu & Li,
  *IoU-balanced Loss Functions for Single-stage Object Detection*.

Conventions shared by every loss of ``iou_aware.losses``: ``reduction="none" | "sum" | "mean"``;
fp16/bf16 input is computed in float32, float32/float64 keep their dtype; finite values and
gradients for any finite input.

Each loss is registered as a box loss of kind "deltas" (``iou_aware.losses.registry``) with its
config keys under ``MODEL.IOU_AWARE``.
"""

import math

import torch

from ._reduction import as_compute_dtype, check_reduction, reduce_loss
from .classification import _check_nonnegative, _check_same_shape, _iou_balanced_normalized_weights
from .registry import Param, check, register_box_loss, smooth_l1_beta_param

__all__ = ["smooth_l1_loss", "focal_l1_loss", "iou_balanced_smooth_l1_loss"]


def _smooth_l1(diff: torch.Tensor, beta: float) -> torch.Tensor:
    n = diff.abs()
    if beta == 0.0:
        return n
    quadratic = 0.5 * torch.clamp(n, max=beta) ** 2 / beta  # clamp: no inf in the unused branch
    return torch.where(n < beta, quadratic, n - 0.5 * beta)


@register_box_loss("smooth_l1", inputs="deltas", params=[smooth_l1_beta_param()])
def smooth_l1_loss(
    input: torch.Tensor, target: torch.Tensor, beta: float = 0.11, reduction: str = "none"
) -> torch.Tensor:
    """Element-wise smooth-L1 (Huber divided by ``beta``), as Fast R-CNN / Detectron2.

    .. math::
        L(d) = 0.5 d^2 / \\beta \\ \\text{if}\\ |d| < \\beta, \\quad |d| - 0.5 \\beta\\ \\text{otherwise},
        \\qquad d = input - target

    Equal to ``fvcore.nn.smooth_l1_loss(input, target, beta)`` (Detectron2's) and to
    ``torch.nn.functional.smooth_l1_loss(input, target, beta=beta)``; ``beta = 0`` is the L1 loss
    (fvcore also switches to L1 for ``beta < 1e-5``; here any ``beta > 0`` uses the formula,
    which differs from L1 by at most ``beta / 2``). Default ``beta = 0.11`` is the
    RetinaNet/IoU-balanced value (Wu & Li: ``delta = 0.111``).

    Args:
        input, target: tensors of the same shape (e.g. ``(N, 4)`` box deltas).
        beta: transition point ``>= 0``.
        reduction: ``"none"`` (element-wise, same shape as ``input``), ``"sum"`` or ``"mean"``.
    """
    check_reduction(reduction)
    beta = _check_nonnegative(beta, "beta")
    _check_same_shape(input, "input", target, "target")
    input, target = as_compute_dtype(input, target)
    return reduce_loss(_smooth_l1(input - target, beta), reduction)


@register_box_loss("focal_l1", inputs="deltas", params=[Param(
    "FOCAL_L1.BETA", "beta",
    help="focal_l1 (Zhang et al. eq. 8-9): beta sets the curvature (alpha = e * beta); see focal_l1_loss",
    check=check(lambda b: math.exp(-1) - 1e-12 <= b <= 1, "must be in [1/e, 1] (Zhang et al. eq. 8)"))])
def focal_l1_loss(
    input: torch.Tensor, target: torch.Tensor, beta: float = 0.8, reduction: str = "none"
) -> torch.Tensor:
    """FocalL1 loss, eq. 8-9 of Zhang et al., element-wise on ``x = |input - target|``.

    Eq. 8 prescribes the gradient magnitude, with ``alpha = e * beta`` and ``1/e <= beta <= 1``::

        g(x) = -alpha * x * ln(beta * x)    for 0 < x <= 1
        g(x) = -alpha * ln(beta)            for x > 1

    Integrating it (``int x ln(bx) dx = x^2 ln(bx) / 2 - x^2 / 4``) gives eq. 9::

        L(x) = -alpha * x^2 * (2 ln(beta x) - 1) / 4      for 0 <= x <= 1   (L(0) = 0)
        L(x) = -alpha * ln(beta) * x + C                   for x > 1
        C    = alpha * (2 ln(beta) + 1) / 4

    ``C`` makes the value continuous at ``x = 1`` (both pieces equal ``-alpha (2 ln beta - 1)/4``)
    and the slope is continuous there by construction (both ``-alpha ln beta``). On ``(0, 1]`` the
    slope peaks at ``x* = 1 / (e beta)`` where it equals ``alpha / (e beta) = 1`` (the normalization
    of property 4 that fixes ``alpha = e beta``). ``beta = 1/e`` gives slope 1 for every ``x >= 1``;
    ``beta = 1`` gives slope 0 for ``x > 1`` (outliers get no gradient). The paper's best: 0.8.

    Numerics: everything is evaluated on ``xi = min(x, 1)``, so huge ``x`` give no ``inf`` and
    ``x = 0`` gives value 0 and gradient 0 (the limits). The gradient is eq. 8 written out in a
    custom autograd function (checked against autograd of eq. 9 by gradcheck).

    Args:
        input, target: tensors of the same shape (box deltas, normalized coordinates, ...).
        beta: ``1/e <= beta <= 1`` (ValueError otherwise).
        reduction: ``"none"`` (element-wise), ``"sum"`` or ``"mean"``. Zhang et al. sum over the
            4 coordinates of a box (``L_loc = sum_i L_f(|B_i - B_i^gt|)``).
    """
    check_reduction(reduction)
    beta = float(beta)
    if not (1.0 / math.e - 1e-12 <= beta <= 1.0):
        raise ValueError(f"beta must satisfy 1/e <= beta <= 1 (Zhang et al. eq. 8), got {beta!r}")
    _check_same_shape(input, "input", target, "target")
    input, target = as_compute_dtype(input, target)
    return reduce_loss(_FocalL1.apply(input - target, beta), reduction)


class _FocalL1(torch.autograd.Function):
    """Eq. 9 forward and eq. 8's gradient written out, both on ``xi = min(x, 1)``: with ``C`` the
    outer piece is ``L(1) + (-alpha ln beta)(x - 1)``, and eq. 8's magnitude
    ``-alpha xi ln(beta xi)`` equals ``-alpha ln beta`` for every ``x >= 1``. No branch, one log,
    only ``d`` saved: under half the time of differentiating the piecewise expression."""

    TINY = 1e-30  # ln is taken of max(xi, TINY): x = 0 gives value 0 and gradient 0 (the limits)

    @staticmethod
    def forward(ctx, d: torch.Tensor, beta: float) -> torch.Tensor:
        alpha, log_beta = math.e * beta, math.log(beta)
        x = d.abs()
        xi = x.clamp(min=_FocalL1.TINY, max=1.0)
        inner = xi.square() * (2.0 * (torch.log(xi) + log_beta) - 1.0) * (-alpha / 4.0)
        ctx.save_for_backward(d)
        ctx.beta = beta
        return inner + (x - 1.0).clamp(min=0.0) * (-alpha * log_beta)

    @staticmethod
    def backward(ctx, grad_out):
        (d,) = ctx.saved_tensors
        alpha, log_beta = math.e * ctx.beta, math.log(ctx.beta)
        xi = d.abs().clamp(min=_FocalL1.TINY, max=1.0)
        magnitude = xi * (torch.log(xi) + log_beta) * (-alpha)
        return grad_out * magnitude * torch.sign(d), None


_IOU_BALANCED = "iou_balanced_smooth_l1 (Wu & Li eq. 3-5): "


@register_box_loss("iou_balanced_smooth_l1", inputs="deltas", needs_ious=True, params=[
    Param("IOU_BALANCED_LOC.LAMBDA", "lam", help=_IOU_BALANCED + "the weight is LOC_WEIGHT * IoU^LAMBDA "
          "(detached)", check=check(lambda v: v >= 0, "must be >= 0")),
    smooth_l1_beta_param(),
    Param("IOU_BALANCED_LOC.LOC_WEIGHT", "loc_weight", default=3.049,
          help=_IOU_BALANCED + "w_loc; Wu & Li Table 4: with LAMBDA 1.5 the weight that keeps the "
          "first-step loss sum is 3.049", check=check(lambda v: v >= 0, "must be >= 0")),
    Param("IOU_BALANCED_LOC.NORMALIZE", "normalize",
          help=_IOU_BALANCED + "use the eq. 5 factor that keeps the loss sum unchanged"),
])
def iou_balanced_smooth_l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    ious: torch.Tensor,
    lam: float = 1.5,
    beta: float = 0.11,
    loc_weight: float = 1.0,
    normalize: bool = False,
    reduction: str = "none",
) -> torch.Tensor:
    """IoU-balanced smooth-L1 localization loss, eq. 3-5 of Wu & Li.

    .. math::
        L_{loc} = \\sum_{i \\in Pos} w_i(iou_i) \\sum_{m \\in \\{cx, cy, w, h\\}}
                  smooth_{L1}(l_i^m - \\hat g_i^m)                         \\quad (3)

    with the weight either (``normalize=False``, the paper's adopted setting)

    .. math::  w_i = w_{loc} \\cdot iou_i^{\\lambda}                          \\quad (4)

    or (``normalize=True``) the normalization of eq. 5 that keeps the positives' loss sum unchanged

    .. math::  w_i = iou_i^{\\lambda} \\frac{\\sum_j \\sum_m sL1_j^m}{\\sum_j iou_j^{\\lambda} \\sum_m sL1_j^m}  \\quad (5)

    The weights are **detached**: "the gradients are not propagated from w(iou) to l" (eq. 6).
    ``loc_weight`` multiplies the weight in both modes, so ``normalize=True, loc_weight=1`` is
    eq. 5 exactly and another ``loc_weight`` scales the kept total (an overall loss weight). The
    paper tunes ``w_loc`` by hand so the total matches at the first iteration (Table 4:
    ``lambda = 1.5 -> w_loc = 3.049``) and reports eq. 5 as inferior. Eq. 5's sums run over the
    ``N`` boxes of this call; the authors' code normalizes per FPN level (call once per level to
    reproduce it). When no box has both IoU > 0 and loss > 0, eq. 5 is 0/0 and the weights are 1
    (the limit when the IoUs tend to 0 together).

    Args:
        input: ``(N, 4)`` predicted regression deltas (any ``(N, K)`` works).
        target: ``(N, 4)`` regression targets.
        ious: ``(N,)`` IoU of each decoded prediction with its ground-truth box (clamped to
            ``[0, 1]``; detached).
        lam: ``lambda >= 0`` (paper's best: 1.5; 0 with ``loc_weight=1`` is plain smooth-L1).
        beta: smooth-L1 transition ``>= 0`` (paper: ``delta = 0.111``).
        loc_weight: ``w_loc >= 0``.
        normalize: use eq. 5 instead of eq. 4.
        reduction: ``"none"`` gives ``(N,)`` per-box losses (summed over coordinates); ``"sum"``;
            ``"mean"`` divides the sum by ``N``.
    """
    check_reduction(reduction)
    lam = _check_nonnegative(lam, "lam")
    beta = _check_nonnegative(beta, "beta")
    loc_weight = _check_nonnegative(loc_weight, "loc_weight")
    if input.dim() != 2:
        raise ValueError(f"input must be an (N, 4) tensor, got shape {tuple(input.shape)}")
    _check_same_shape(input, "input", target, "target")
    if ious.shape != input.shape[:1]:
        raise ValueError(
            f"ious must have shape (N,) = {tuple(input.shape[:1])}, got {tuple(ious.shape)}"
        )
    input, target, ious = as_compute_dtype(input, target, ious)
    per_box = _smooth_l1(input - target, beta).sum(dim=1)
    if normalize:
        weight = _iou_balanced_normalized_weights(ious, per_box, lam)
    else:
        weight = ious.detach().clamp(0.0, 1.0).pow(lam)
    loss = (loc_weight * weight) * per_box
    return reduce_loss(loss, reduction)
