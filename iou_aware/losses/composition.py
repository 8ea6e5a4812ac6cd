"""The box loss of each positive as a detector composes it (pure torch, no Detectron2).

For ``P`` positives, from the source boxes ``src`` (anchors or proposals), the prediction (the
regression deltas, or the predicted boxes themselves) and the matched ground truth ``target``,
:class:`BoxLoss` returns ``(loss, ious)``: the box loss of each positive ``(P,)`` and the IoU of
each predicted box with its ground truth ``(P,)``, detached (what the IoU-balanced classification
loss, the IoU head and the Task-Contrastive loss use). Each step is declared by the registered
loss (:func:`iou_aware.losses.register_box_loss`), never decided by its name:

1. the loss's inputs (``inputs``):

   - ``"boxes"``: the decoded predicted and target boxes in units of ``S = sqrt(area(src))``
     (Peng & Yu Algorithm 1). Every IoU-type value is invariant to that scaling; only the steady
     optimization technique of Smooth-EIoU (gradient times ``U_e``, eq. 28) depends on it, and is
     thereby scale-invariant as the paper intends, whichever parameterization is used.
     ``normalize_boxes=False`` passes the boxes as they are (the papers' box-space simulations);
   - ``"deltas"``: predicted and target regression deltas of the box transform, summed over the
     coordinates;
   - ``needs_ious``: the detached IoUs as third argument (IoU-balanced smooth-L1, Wu & Li eq. 3-4);

2. the loss's ``compose`` hook, if any (Focal-EIoU's batch normalization of Zhang et al. eq. 11;
   Wang & Zhang eq. 11's smooth-L1 + alpha * HIoU);
3. the overall ``weight`` (``MODEL.IOU_AWARE.BOX_LOSS_WEIGHT``).

The box transform is any object with ``get_deltas(src, boxes)`` and ``apply_deltas(deltas, src)``
(Detectron2's ``Box2BoxTransform``, ``iou_aware.modeling.CornerBoxTransform``).
"""

import functools
from typing import Any, Mapping, Optional, Tuple

import torch

from ..geometry import aligned_iou
from .registry import BOX_LOSS_REGISTRY, NOT_CONFIGURABLE, DetectorDefault, signature_arguments

__all__ = ["sqrt_area", "BoxPairs", "BoxLoss"]


def sqrt_area(boxes: torch.Tensor, min_scale: float = 1e-3) -> torch.Tensor:
    """``S = sqrt(area)`` of each box (Peng & Yu Algorithm 1), at least ``min_scale``."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return (wh[:, 0] * wh[:, 1]).sqrt().clamp(min=min_scale)


class BoxPairs:
    """The positives of one loss evaluation, what the loss and its ``compose`` hook read.

    ``src``, ``target``: ``(P, 4)``; exactly one of ``pred_deltas`` (the detector's output) and
    ``pred_boxes`` (a box regressed directly); the other, ``target_deltas``, ``ious`` and the scaled
    boxes are derived on first use (deltas and boxes keep their gradient).
    """

    def __init__(self, src: torch.Tensor, target: torch.Tensor, transform=None,
                 pred_deltas: Optional[torch.Tensor] = None, pred_boxes: Optional[torch.Tensor] = None,
                 normalize_boxes: bool = True):
        if (pred_deltas is None) == (pred_boxes is None):
            raise ValueError("BoxPairs: give exactly one of pred_deltas and pred_boxes")
        self.src, self.target, self.transform = src, target, transform
        self.normalize_boxes = normalize_boxes
        if pred_deltas is not None:
            self.pred_deltas = pred_deltas
        else:
            self.pred_boxes = pred_boxes

    def _transform(self, what: str):
        if self.transform is None:
            raise ValueError(f"BoxPairs: {what} needs a box transform (get_deltas / apply_deltas)")
        return self.transform

    @functools.cached_property
    def pred_boxes(self) -> torch.Tensor:
        return self._transform("decoding pred_deltas").apply_deltas(self.pred_deltas, self.src)

    @functools.cached_property
    def pred_deltas(self) -> torch.Tensor:
        return self._transform("pred_deltas").get_deltas(self.src, self.pred_boxes)

    @functools.cached_property
    def target_deltas(self) -> torch.Tensor:
        return self._transform("target_deltas").get_deltas(self.src, self.target)

    @functools.cached_property
    def ious(self) -> torch.Tensor:
        """IoU of each predicted box with its target, detached, float32, in ``[0, 1]``."""
        pred = self.pred_boxes  # decoded outside no_grad: the loss differentiates it
        with torch.no_grad():
            return aligned_iou(pred.float(), self.target.float()).clamp(0.0, 1.0)

    def loss_boxes(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(pred, target)`` for a "boxes" loss: in units of ``sqrt(area(src))`` (Peng & Yu
        Algorithm 1) unless ``normalize_boxes`` is False."""
        if not self.normalize_boxes:
            return self.pred_boxes, self.target
        s = sqrt_area(self.src)[:, None]
        return self.pred_boxes / s, self.target / s


class BoxLoss:
    """Registered box loss ``name`` composed as a detector does (see the module docstring).

    ``args``: arguments of the loss function or of its ``compose`` hook by name (missing ones take
    the registered defaults; :meth:`from_values` takes config values instead). ``transform``: the
    box transform (needed for "deltas" losses, to decode deltas and by hooks that use deltas).
    ``weight``: multiplies the result. ``normalize_boxes``: "boxes" losses see boxes in units of
    ``sqrt(area(src))``. ``compose``: apply the loss's hook (False: the bare loss, e.g. Focal-EIoU
    per box as Zhang et al.'s Algorithm 1 writes it). ``detector_defaults``: values of the
    :class:`~iou_aware.losses.registry.DetectorDefault` arguments (``{"smooth_l1_beta": beta}``).

    Attributes: ``loss_fn`` (the function with its arguments bound, ``functools.partial``, called
    at each evaluation), ``compose_args`` (the hook's), ``kind``, ``needs_ious``, ``transform``,
    ``weight``.
    """

    def __init__(self, name: str, args: Optional[Mapping[str, Any]] = None, transform=None, *,
                 weight: float = 1.0, normalize_boxes: bool = True, compose: bool = True,
                 detector_defaults: Optional[Mapping[str, Any]] = None):
        entry = BOX_LOSS_REGISTRY.get(name)
        self.name = name
        self.kind = entry.meta["inputs"]
        self.needs_ious = entry.meta.get("needs_ious", False)
        hook = entry.meta.get("compose")
        self.compose_fn = hook if compose else None
        fn_names, fn_kw = signature_arguments(entry.fn)
        fn_names = set(fn_names) - set(NOT_CONFIGURABLE)
        hook_names, hook_kw = signature_arguments(hook, skip=2) if hook is not None else ({}, False)
        hook_names = set(hook_names)
        values = BOX_LOSS_REGISTRY.arguments(name, {})
        accepted = set(values) | fn_names | hook_names
        unknown = sorted(set(args or ()) - accepted)
        if unknown and not (fn_kw or hook_kw):
            raise TypeError(f"Box loss {name!r} got unknown argument(s) {unknown}; it accepts: "
                            + ", ".join(sorted(accepted)))
        values.update(args or {})
        values = {k: self._resolve(k, v, detector_defaults or {}) for k, v in values.items()}
        self.loss_fn = functools.partial(entry.fn, **{
            k: v for k, v in values.items() if k in fn_names or (fn_kw and k not in hook_names)})
        self.compose_args = {
            k: v for k, v in values.items() if k in hook_names or (hook_kw and k not in fn_names)}
        self.transform = transform
        self.weight = weight
        self.normalize_boxes = normalize_boxes

    def _resolve(self, arg: str, value, detector_defaults: Mapping[str, Any]):
        if not isinstance(value, DetectorDefault):
            return value
        if value.name not in detector_defaults:
            raise ValueError(
                f"box loss {self.name!r}: argument {arg!r} is the detector's own {value.name} "
                f"(MODEL.IOU_AWARE.{value.key} < 0), and no detector value was given: pass "
                f"detector_defaults={{{value.name!r}: ...}} or a value for {arg!r}"
            )
        return detector_defaults[value.name]

    @classmethod
    def from_values(cls, name: str, values: Mapping[str, Any], transform=None, **kwargs) -> "BoxLoss":
        """From config values ``{dotted key under MODEL.IOU_AWARE: value}`` of the keys the loss
        declares (missing keys take their default), converted as declared."""
        return cls(name, BOX_LOSS_REGISTRY.arguments(name, values), transform, **kwargs)

    def __call__(self, src_boxes: torch.Tensor, pred_deltas: Optional[torch.Tensor],
                 target_boxes: torch.Tensor, pred_boxes: Optional[torch.Tensor] = None,
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(loss, ious)`` of the positives ``(P,)``: give ``pred_deltas`` (a detector's
        regression output) or ``pred_boxes=`` (with ``pred_deltas=None``)."""
        pairs = BoxPairs(src_boxes, target_boxes, self.transform, pred_deltas, pred_boxes,
                         self.normalize_boxes)
        ious = pairs.ious
        return self.per_positive(pairs), ious

    def per_positive(self, pairs: BoxPairs) -> torch.Tensor:
        extra = (pairs.ious,) if self.needs_ious else ()
        if self.kind == "deltas":
            loss = self.loss_fn(pairs.pred_deltas, pairs.target_deltas, *extra)
            if loss.dim() == 2:
                loss = loss.sum(dim=1)
        else:
            loss = self.loss_fn(*pairs.loss_boxes(), *extra)
        if self.compose_fn is not None:
            loss = self.compose_fn(loss, pairs, **self.compose_args)
        return loss * self.weight
