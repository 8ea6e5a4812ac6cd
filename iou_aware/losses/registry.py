"""Registry of box-regression losses: the names that ``MODEL.IOU_AWARE.BOX_LOSS`` accepts.

``build_box_loss(name, **params)`` returns a callable with the parameters bound. An unknown name
raises ``KeyError`` listing the valid names; an unknown parameter raises ``TypeError`` listing the
accepted ones.

Two kinds of losses live here (see ``BOX_LOSS_INPUTS``):

- ``"boxes"``: aligned ``(N, 4)`` absolute boxes ``pred, target``;
- ``"deltas"``: element-wise on regression targets (Detectron2's box deltas or normalized corners);
  ``iou_balanced_smooth_l1`` also needs the IoU of each decoded box with its ground truth.
"""

import functools
import inspect
from typing import Callable, Dict

from .iou_losses import (
    alpha_iou_loss,
    ciou_loss,
    diou_loss,
    efficient_iou_loss,
    focal_efficient_iou_loss,
    giou_loss,
    harmonic_iou_loss,
    iou_loss,
    smooth_extended_iou_loss,
)
from .regression import focal_l1_loss, iou_balanced_smooth_l1_loss, smooth_l1_loss

BOX_LOSSES: Dict[str, Callable] = {
    "smooth_l1": smooth_l1_loss,
    "iou": iou_loss,
    "giou": giou_loss,
    "diou": diou_loss,
    "ciou": ciou_loss,
    "efficient_iou": efficient_iou_loss,
    "focal_efficient_iou": focal_efficient_iou_loss,
    "alpha_iou": alpha_iou_loss,
    "harmonic_iou": harmonic_iou_loss,
    "smooth_extended_iou": smooth_extended_iou_loss,
    "focal_l1": focal_l1_loss,
    "iou_balanced_smooth_l1": iou_balanced_smooth_l1_loss,
}

# What each loss regresses: decoded boxes, or element-wise regression targets.
BOX_LOSS_INPUTS: Dict[str, str] = {
    name: ("deltas" if name in ("smooth_l1", "focal_l1", "iou_balanced_smooth_l1") else "boxes")
    for name in BOX_LOSSES
}

# Arguments that are data, not hyper-parameters: never bound by build_box_loss.
_DATA_ARGS = ("pred", "target", "input", "ious")


def box_loss_params(name: str) -> Dict[str, object]:
    """The hyper-parameters of loss ``name`` with their defaults."""
    fn = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.name not in _DATA_ARGS and p.default is not inspect.Parameter.empty
    }


def _lookup(name: str) -> Callable:
    try:
        return BOX_LOSSES[name]
    except KeyError:
        raise KeyError(
            f"Unknown box loss {name!r}; valid names are: {', '.join(sorted(BOX_LOSSES))}"
        ) from None


def build_box_loss(name: str, **params) -> Callable:
    """Return loss ``name`` with ``params`` bound (``functools.partial``).

    >>> loss = build_box_loss("alpha_iou", alpha=3.0, penalty="ciou")
    >>> loss(pred, target, reduction="sum")
    """
    fn = _lookup(name)
    accepted = box_loss_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"Box loss {name!r} got unknown parameter(s) {unknown}; "
            f"it accepts: {', '.join(sorted(accepted)) or '(none)'}"
        )
    return functools.partial(fn, **params)
