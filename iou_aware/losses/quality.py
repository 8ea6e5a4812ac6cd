"""Joint classification-quality losses of one-stage detectors (pure torch, no Detectron2).

- :func:`quality_focal_loss`: Quality Focal Loss of Li et al., *Generalized Focal Loss: Learning
  Qualified and Distributed Bounding Boxes for Dense Object Detection*, NeurIPS 2020, sec. 3
  ("Quality Focal Loss (QFL)").
- :func:`varifocal_loss`: Varifocal Loss, eq. 2 of Zhang et al., *VarifocalNet: An IoU-aware Dense
  Object Detector*, CVPR 2021.

Both take the raw logits ``x`` of a sigmoid classifier (``sigma = sigmoid(x)``) and a soft target
of the same shape: the IoU of a positive's regressed box with its ground truth at that positive's
ground-truth class, 0 at every other class and at every negative. Both are computed from
``binary_cross_entropy_with_logits`` (no ``log(sigmoid)`` of a saturated logit), so values and
gradients are finite for any finite logit, including ``|x| ~ 1e38``.

Conventions (as the other losses): ``reduction="none" | "sum" | "mean"``; fp16/bf16 input is
computed in float32, float32/float64 keep their dtype; the target carries no gradient.
"""

import math

import torch
import torch.nn.functional as F

from ._reduction import as_compute_dtype, check_reduction, reduce_loss

__all__ = ["quality_focal_loss", "varifocal_loss"]


def _check_parameter(value: float, name: str) -> float:
    value = float(value)
    if not value >= 0.0 or not math.isfinite(value):  # also rejects nan
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _prepare(logits: torch.Tensor, targets: torch.Tensor):
    if logits.shape != targets.shape:
        raise ValueError(
            f"targets must have the same shape as logits: got {tuple(targets.shape)} "
            f"and {tuple(logits.shape)}"
        )
    logits, targets = as_compute_dtype(logits, targets)
    return logits, targets.detach().clamp(0.0, 1.0)


def _abs_pow(d: torch.Tensor, exponent: float) -> torch.Tensor:
    """``|d|^exponent`` whose gradient at ``d == 0`` is 0 (finite for every exponent >= 0).

    For ``exponent >= 1`` that is the derivative; for ``0 < exponent < 1`` the derivative is
    unbounded at 0 and the subgradient 0 is taken instead (the loss is 0 there). ``0^0 = 1``.
    """
    if exponent == 0.0:
        return torch.ones_like(d)
    a = d.abs()
    nonzero = a > 0
    safe = torch.where(nonzero, a, torch.ones_like(a))
    return torch.where(nonzero, safe.pow(exponent), torch.zeros_like(a))


def quality_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, beta: float = 2.0, reduction: str = "none"
) -> torch.Tensor:
    """Quality Focal Loss of Li et al. (GFL, sec. 3, "Quality Focal Loss (QFL)"):

    .. math::
        QFL(\\sigma) = -|y - \\sigma|^{\\beta} \\big((1 - y) \\log(1 - \\sigma) + y \\log \\sigma\\big)

    with ``sigma = sigmoid(logits)`` and the soft label ``y in [0, 1]`` (the IoU of the positive's
    predicted box with its ground truth at the ground-truth class, 0 elsewhere); ``beta = 2`` is
    the paper's choice. The bracket is the binary cross-entropy with a soft label, computed as
    ``binary_cross_entropy_with_logits(logits, y)``; the factor ``|y - sigma|^beta`` is
    differentiated (the paper's loss, no detach). For ``y in {0, 1}`` QFL is the sigmoid focal
    loss with ``gamma = beta`` and no ``alpha`` weighting (QFL extends it to soft labels).

    Args:
        logits: raw classification outputs, any shape (e.g. ``(anchors, classes)``).
        targets: soft labels ``y`` of the same shape, clamped to ``[0, 1]``, detached.
        beta: modulating exponent ``>= 0`` (``0`` gives the soft-label binary cross-entropy).
        reduction: ``"none"`` (element-wise), ``"sum"`` or ``"mean"``; the detector normalizes a
            ``"sum"`` by its number of positives, as for the focal loss.
    """
    check_reduction(reduction)
    beta = _check_parameter(beta, "beta")
    logits, y = _prepare(logits, targets)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    loss = _abs_pow(y - torch.sigmoid(logits), beta) * cross_entropy
    return reduce_loss(loss, reduction)


def varifocal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Varifocal Loss, eq. 2 of Zhang et al. (VarifocalNet):

    .. math::
        VFL(p, q) = \\begin{cases}
            -q\\,\\big(q \\log p + (1 - q) \\log(1 - p)\\big) & q > 0 \\\\
            -\\alpha\\, p^{\\gamma} \\log(1 - p) & q = 0
        \\end{cases}

    with ``p = sigmoid(logits)`` and the target ``q``: the IoU of a positive's predicted box with
    its ground truth at the ground-truth class, 0 elsewhere. Positives are weighted by their own
    target ``q`` (not down-weighted by the prediction), negatives by ``alpha * p^gamma`` as in the
    focal loss; ``alpha = 0.75``, ``gamma = 2`` are the paper's. Both cases are
    ``weight * binary_cross_entropy_with_logits(logits, q)``: for ``q = 0`` the cross-entropy is
    ``-log(1 - p)``. The weights are differentiated (no detach), as in the formula. The case is
    chosen by the value of ``q``: a positive whose box has IoU 0 counts as a negative.

    Args:
        logits: raw classification outputs, any shape.
        targets: IoU targets ``q`` of the same shape, clamped to ``[0, 1]``, detached.
        alpha: weight ``>= 0`` of the negatives; gamma: exponent ``>= 0`` of ``p`` on negatives.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
    """
    check_reduction(reduction)
    alpha = _check_parameter(alpha, "alpha")
    gamma = _check_parameter(gamma, "gamma")
    logits, q = _prepare(logits, targets)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, q, reduction="none")
    negative_weight = alpha * _abs_pow(torch.sigmoid(logits), gamma)
    weight = torch.where(q > 0, q, negative_weight)
    return reduce_loss(weight * cross_entropy, reduction)
