"""IoU-aware classification-side losses and weights (pure torch, no Detectron2).

- :func:`iou_balanced_classification_weights`: eq. 2 of Wu & Li, *IoU-balanced Loss Functions
  for Single-stage Object Detection* (weights of the positives' classification loss, eq. 1).
- :func:`harmonic_loss`: eq. 2-3 of Wang & Zhang, *Reconcile Prediction Consistency for Balanced
  Object Detection* (mutually weighted classification and localization loss of each positive).
- :func:`task_contrastive_loss`: eq. 8 of Wang & Zhang (score/IoU gap beyond a margin, weighted by
  the classification entropy).
- :func:`iou_kl_loss`: eq. 31-32 of Peng & Yu, *A Systematic IoU-Related Method* (KL divergence
  between the predicted and the ground-truth IoU of the IoU head).

Conventions shared by every loss of ``iou_aware.losses``: every loss takes
``reduction="none" | "sum" | "mean"``; fp16/bf16 input is computed in float32 while
float32/float64 keep their dtype; values and gradients are finite for any finite input, with the
divisions and logarithms guarded where they happen.
"""

import math

import torch
import torch.nn.functional as F

from ._reduction import as_compute_dtype, check_reduction, reduce_loss

__all__ = [
    "iou_balanced_classification_weights",
    "harmonic_loss",
    "task_contrastive_loss",
    "iou_kl_loss",
]


def _check_nonnegative(value: float, name: str) -> float:
    value = float(value)
    if not value >= 0.0 or not math.isfinite(value):  # also rejects nan
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _check_same_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{b_name} must have the same shape as {a_name}: got {tuple(b.shape)} "
            f"and {tuple(a.shape)}"
        )


def _relu_keep_grad_at_zero(t: torch.Tensor) -> torch.Tensor:
    """``max(t, 0)`` whose gradient at ``t == 0`` is 1 (torch's clamp passes 0 at the boundary)."""
    return torch.where(t >= 0, t, torch.zeros_like(t))


def _iou_balanced_normalized_weights(
    ious: torch.Tensor, losses: torch.Tensor, exponent: float
) -> torch.Tensor:
    """``w_i = iou_i^k * sum_j L_j / sum_j iou_j^k L_j`` (Wu & Li eq. 2 and eq. 5), detached.

    Shared by eq. 2 (classification, ``k = eta``) and eq. 5 (localization, ``k = lambda``, with
    ``L_i`` the box's smooth-L1 summed over its 4 coordinates). ``ious`` and ``losses`` are ``(N,)``
    tensors of the same dtype; the result is ``(N,)``, has no gradient and keeps
    ``sum_i w_i L_i == sum_i L_i``.

    Numerics: the weights are invariant to a common scale of ``iou^k``, so ``iou_i / max_j iou_j``
    is raised to the power instead of ``iou_i`` (no underflow of ``iou^k`` for tiny IoUs). When the
    denominator is 0 (no positive has both IoU > 0 and loss > 0, e.g. all IoUs are 0) every weight
    is 1: that is the limit of eq. 2 when the IoUs tend to 0 together, and it keeps the sum.
    A factor that overflows the dtype is clamped to its largest finite value.
    """
    ious = ious.detach().clamp(0.0, 1.0)
    losses = losses.detach()
    if ious.numel() == 0:
        return torch.ones_like(ious)
    top = ious.amax()
    scale = torch.where(top > 0, top, torch.ones_like(top))
    powered = (ious / scale).pow(exponent)
    total = losses.sum()
    weighted_total = (powered * losses).sum()
    positive = weighted_total > 0
    factor = total / torch.where(positive, weighted_total, torch.ones_like(weighted_total))
    factor = factor.clamp(max=torch.finfo(factor.dtype).max)
    return torch.where(positive, powered * factor, torch.ones_like(powered))


def iou_balanced_classification_weights(
    ious: torch.Tensor, losses: torch.Tensor, eta: float = 1.5
) -> torch.Tensor:
    """Weights of the positives' classification loss: eq. 2 of Wu & Li (IoU-balanced).

    .. math::
        w_i = iou_i^{\\eta} \\frac{\\sum_j CE_j}{\\sum_j iou_j^{\\eta} CE_j}

    used in eq. 1 as ``L_cls = sum_{pos} w_i CE_i + sum_{neg} CE_i``. The normalization keeps the
    positives' loss sum unchanged (``sum w_i CE_i == sum CE_i``) while moving it toward positives
    whose regressed box has a high IoU with its ground truth.

    Args:
        ious: ``(N,)`` IoU of each positive's *regressed* box with its ground truth (clamped to
            ``[0, 1]``).
        losses: ``(N,)`` unweighted classification loss of each positive (for sigmoid/focal heads:
            summed over the classes of that anchor).
        eta: exponent ``eta >= 0`` (the paper's best: 1.5; 0 gives all-ones weights).

    Returns:
        ``(N,)`` weights, **detached** (no gradient reaches ``ious`` nor ``losses``); computed in
        float32 for fp16/bf16 input. Sums run over all ``N`` positives given; the authors' code
        normalizes per FPN level, which is obtained by calling this once per level. When no
        positive has both IoU > 0 and loss > 0 the weights are all 1 (the limit of eq. 2 when the
        IoUs tend to 0 together). Empty input gives an empty result.
    """
    eta = _check_nonnegative(eta, "eta")
    if ious.dim() != 1:
        raise ValueError(f"ious must be a 1-D (N,) tensor, got shape {tuple(ious.shape)}")
    _check_same_shape(ious, "ious", losses, "losses")
    ious, losses = as_compute_dtype(ious, losses)
    return _iou_balanced_normalized_weights(ious, losses, eta)


def harmonic_loss(
    cls_loss: torch.Tensor,
    loc_loss: torch.Tensor,
    detach_factors: bool = False,
    reduction: str = "none",
) -> torch.Tensor:
    """Harmonic loss of each positive: eq. 2-3 of Wang & Zhang.

    .. math::
        L_{Har} = (1 + \\beta_r) L_{cls} + (1 + \\beta_c) L_{loc},\\qquad
        \\beta_r = e^{-L_{loc}},\\ \\beta_c = e^{-L_{cls}}

    Eq. 12 uses the same form with ``L_loc`` the full localization loss of eq. 11 (smooth-L1 plus
    ``alpha`` times the HIoU loss) and adds the task-contrastive loss; eq. 13 adds the negatives'
    classification loss and divides by the number of samples: both are left to the caller.

    Gradient (``detach_factors=False``, the default): the gradient flows through both harmonic
    factors, as the paper's eq. 4-7 analyse. With ``L_cls = -log p`` (cross-entropy of the ground
    truth class probability ``p``), eq. 7 gives ``dL/dp = L_loc - (1 + e^{-L_loc}) / p``. The
    symmetric derivative is

        ``dL/dL_loc = 1 + e^{-L_cls} - L_cls * e^{-L_loc}``,

    which is **negative** when ``L_cls`` is large and ``L_loc`` small -- e.g. softmax CE over 81
    classes at initialization (``L_cls ~ log 81 ~ 4.4``) with a small box loss: minimizing the
    loss then *increases* the localization loss, i.e. boxes are pushed away from their targets.
    ``detach_factors=True`` detaches ``beta_r`` and ``beta_c`` so both factors are plain weights in
    ``(1, 2]`` and each branch gets a gradient of the sign of its own loss. The integration decides
    per detector which setting trains.

    Args:
        cls_loss: ``(N,)`` (or any shape) classification loss of each positive, ``>= 0``.
        loc_loss: localization loss of each positive (summed over its coordinates), same shape.
        detach_factors: detach ``beta_r`` and ``beta_c`` (see above).
        reduction: ``"none"`` (per positive), ``"sum"`` or ``"mean"`` (over positives).

    The factors are computed as ``exp(-max(L, 0))`` so they stay in ``(1, 2]`` (finite) even for
    slightly negative input from rounding; losses are non-negative by definition.
    """
    check_reduction(reduction)
    _check_same_shape(cls_loss, "cls_loss", loc_loss, "loc_loss")
    cls_loss, loc_loss = as_compute_dtype(cls_loss, loc_loss)
    cls_for_factor, loc_for_factor = cls_loss, loc_loss
    if detach_factors:
        cls_for_factor, loc_for_factor = cls_loss.detach(), loc_loss.detach()
    beta_r = torch.exp(-_relu_keep_grad_at_zero(loc_for_factor))  # eq. 3
    beta_c = torch.exp(-_relu_keep_grad_at_zero(cls_for_factor))
    loss = (1.0 + beta_r) * cls_loss + (1.0 + beta_c) * loc_loss  # eq. 2
    return reduce_loss(loss, reduction)


def task_contrastive_loss(
    scores: torch.Tensor,
    ious: torch.Tensor,
    probs: torch.Tensor,
    margin: float = 0.2,
    reduction: str = "none",
) -> torch.Tensor:
    """Task-Contrastive (TC) loss of each positive: eq. 8 of Wang & Zhang.

    .. math::
        L_{TC} = \\frac{1}{1 + \\beta_e} \\max(0, |p_i - IoU_i| - margin),\\qquad
        \\beta_e = e^{-\\sum_{k=1}^{C} p_k \\log p_k} = e^{H}

    ``beta_e`` is the exponential of the entropy ``H`` of the sample's class distribution, so the
    weight ``1 / (1 + e^H)`` lies in ``[1/(1+C), 1/2]``: 1/2 for a certain (one-hot) prediction,
    ``1/(1+C)`` for a uniform one -- uncertain samples get a small weight, as the paper describes.

    Entropy for both head types: the entropy is always taken of the *normalized* row
    ``q_k = p_k / sum_j p_j``. For a softmax head (rows summing to 1, e.g. Detectron2's ``K + 1``
    classes with background) this is a no-op and ``H`` is the usual entropy; for a sigmoid head
    (RetinaNet/FCOS: ``C`` independent probabilities) the ``C`` class scores are normalized into a
    distribution first. ``0 log 0 = 0``; a row of all zeros has ``H = 0``.

    Gradient: only ``scores`` is differentiated. ``ious`` is the target of the score and the
    entropy factor is a weight, so both are detached.

    Args:
        scores: ``(N,)`` predicted probability ``p_i`` of each positive's ground-truth class.
        ious: ``(N,)`` IoU of each positive's regressed box with its ground truth.
        probs: ``(N, C)`` class probabilities of each positive used for the entropy: softmax rows
            summing to 1, or independent sigmoid probabilities (normalized as above). Negative
            entries are clamped to 0.
        margin: gap ``>= 0`` under which the difference is ignored (paper: 0.2).
        reduction: ``"none"`` (per positive), ``"sum"`` or ``"mean"``.
    """
    check_reduction(reduction)
    margin = _check_nonnegative(margin, "margin")
    if scores.dim() != 1:
        raise ValueError(f"scores must be a 1-D (N,) tensor, got shape {tuple(scores.shape)}")
    _check_same_shape(scores, "scores", ious, "ious")
    if probs.dim() != 2 or probs.shape[0] != scores.shape[0]:
        raise ValueError(
            f"probs must be an (N, C) tensor with N = {scores.shape[0]} rows, "
            f"got shape {tuple(probs.shape)}"
        )
    scores, ious, probs = as_compute_dtype(scores, ious, probs)
    ious = ious.detach()
    with torch.no_grad():
        p = probs.clamp(min=0.0)
        row_sum = p.sum(dim=1, keepdim=True)
        tiny = torch.finfo(p.dtype).tiny
        q = p / row_sum.clamp(min=tiny)
        entropy = (-torch.special.xlogy(q, q).sum(dim=1)).clamp(min=0.0)
        weight = 1.0 / (1.0 + torch.exp(entropy))  # 1 / (1 + beta_e)
    gap = torch.clamp((scores - ious).abs() - margin, min=0.0)
    return reduce_loss(weight * gap, reduction)


def iou_kl_loss(
    logits: torch.Tensor, target_ious: torch.Tensor, reduction: str = "none"
) -> torch.Tensor:
    """KL loss of the IoU head: eq. 31-32 of Peng & Yu.

    .. math::
        q_p = \\sigma(x),\\qquad
        L_{KL} = q_g \\log\\frac{q_g}{q_p} + (1 - q_g) \\log\\frac{1 - q_g}{1 - q_p}

    Computed in the numerically stable form ``BCE_with_logits(x, q_g) - H(q_g)`` with
    ``H(q) = -q log q - (1-q) log(1-q)`` (``0 log 0 = 0``): no ``log(sigmoid)`` of a saturated
    logit, finite for any finite ``x`` (also ``|x| ~ 1e38``) and targets exactly 0 or 1. The
    gradient is exactly ``d L / d x = sigmoid(x) - q_g`` (the cross-entropy's; ``H`` does not
    depend on ``x``). The value is clamped at 0 in the forward pass only (KL >= 0; rounding of
    the difference can otherwise give ``-1e-8``), so the gradient is untouched and the loss is
    exactly 0 where ``sigmoid(x) == q_g`` up to rounding.

    Args:
        logits: ``(N,)`` (or any shape) raw output ``x`` of the IoU head.
        target_ious: ground-truth IoU ``q_g``, same shape, **detached** and clamped to ``[0, 1]``
            (the extended IoU of Peng & Yu is negative for disjoint boxes; those targets become 0).
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
    """
    check_reduction(reduction)
    _check_same_shape(logits, "logits", target_ious, "target_ious")
    logits, target = as_compute_dtype(logits, target_ious)
    target = target.detach().clamp(0.0, 1.0)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    target_entropy = -(torch.special.xlogy(target, target) + torch.special.xlogy(1 - target, 1 - target))
    kl = cross_entropy - target_entropy
    kl = kl + (kl.clamp(min=0.0) - kl).detach()  # value >= 0, gradient sigmoid(x) - q_g
    return reduce_loss(kl, reduction)
