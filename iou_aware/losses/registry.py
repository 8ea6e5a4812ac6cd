"""The box-loss registry: the names that ``MODEL.IOU_AWARE.BOX_LOSS`` accepts (pure Python).

A box loss is one function registered once, where it is defined, with everything the config and
the detector need to know about it:

.. code-block:: python

    @register_box_loss("l1_boxes", inputs="boxes", params={"L1_BOXES.POWER": "power"})
    def l1_boxes_loss(pred, target, power=1.0, reduction="none"):
        ...

- ``inputs``: ``"boxes"``: ``fn(pred, target, <params>, reduction="none")`` on aligned ``(P, 4)``
  boxes, returning ``(P,)`` (the detector passes decoded boxes in units of ``sqrt(area)`` of the
  anchor or proposal, Peng & Yu Algorithm 1); ``"deltas"``: element-wise on regression targets,
  ``(P, 4) -> (P, 4)``, summed over the coordinates by the detector (a ``(P,)`` result is taken
  as already summed).
- ``params``: the config keys under ``MODEL.IOU_AWARE`` and the arguments they set (see
  :class:`iou_aware.registry.Param` for defaults, help, checks and conversions).
  ``iou_aware.config.add_iou_aware_config`` adds every registered key with its default, so
  register before building the config (importing the registering module is enough).
- ``needs_ious``: the detector passes the detached IoU of each decoded box with its ground truth
  as the third positional argument (``fn(pred, target, ious, ...)``).
- ``compose``: a hook ``compose(loss, pairs, **args) -> loss`` applied to the per-positive loss
  (e.g. a batch normalization or an added term); ``pairs`` is an
  :class:`iou_aware.losses.composition.BoxPairs`, ``args`` are the entry's arguments that the
  hook's signature names (a config key may set an argument of the hook only).

``BOX_LOSSES`` (name -> function) and ``BOX_LOSS_INPUTS`` (name -> input kind) are read-only live
views of the registry. ``build_box_loss(name, **params)`` returns the bare function with
parameters bound; :class:`iou_aware.losses.composition.BoxLoss` composes it as a detector does.
"""

import functools
import inspect
from collections.abc import Mapping
from dataclasses import replace as _replace
from typing import Any, Callable, Dict, Iterator, Optional

from ..registry import Param, Registry

__all__ = [
    "BOX_LOSS_REGISTRY",
    "BOX_LOSS_KINDS",
    "BOX_LOSSES",
    "BOX_LOSS_INPUTS",
    "DetectorDefault",
    "register_box_loss",
    "build_box_loss",
    "box_loss_params",
    "smooth_l1_beta_param",
    "check",
    "one_of",
]

BOX_LOSS_REGISTRY = Registry("box loss", "MODEL.IOU_AWARE.BOX_LOSS")
BOX_LOSS_KINDS = ("boxes", "deltas")

# Arguments that are data, not hyper-parameters: never bound by build_box_loss or a config key.
_DATA_ARGS = ("pred", "target", "input", "ious")
NOT_CONFIGURABLE = _DATA_ARGS + ("reduction",)
# Param's marker for "default from the signature" (Param(key, arg) without a default carries it).
_SIGNATURE_DEFAULT = Param("", "").default


class DetectorDefault:
    """An argument value meaning "the detector's own ``name``" (e.g. its smooth-L1 beta), resolved
    by :class:`iou_aware.losses.composition.BoxLoss` from its ``detector_defaults``. ``key`` is the
    config key that chose it (named in errors)."""

    def __init__(self, name: str, key: str):
        self.name, self.key = name, key

    def __repr__(self):
        return f"DetectorDefault({self.name!r})"


def check(condition: Callable[[Any], bool], message: str) -> Callable[[Any], Optional[str]]:
    """A ``Param.check``: ``message`` (what a valid value is) unless ``condition(value)``."""
    return lambda value: None if condition(value) else message


def one_of(*choices) -> Callable[[Any], Optional[str]]:
    """A ``Param.check`` accepting only ``choices``."""
    return check(lambda v: v in choices, "must be one of " + ", ".join(repr(c) for c in choices))


def smooth_l1_beta_param(arg: str = "beta") -> Param:
    """``SMOOTH_L1_BETA``, shared by every loss with a smooth-L1 part (negative = the detector's own
    beta, RETINANET.SMOOTH_L1_LOSS_BETA / ROI_BOX_HEAD.SMOOTH_L1_BETA)."""
    return Param(
        "SMOOTH_L1_BETA", arg, default=-1.0,
        help="beta of smooth_l1 / iou_balanced_smooth_l1 / the smooth-L1 part of harmonic_iou (Wang & "
             "Zhang eq. 11); < 0 = the detector's own beta (RETINANET.SMOOTH_L1_LOSS_BETA / "
             "ROI_BOX_HEAD.SMOOTH_L1_BETA)",
        to_arg=lambda v: DetectorDefault("smooth_l1_beta", "SMOOTH_L1_BETA") if v < 0 else v,
    )


def signature_arguments(fn: Callable, skip: int = 0):
    """``fn``'s parameters after the first ``skip`` ones (name -> ``inspect.Parameter``), and
    whether it takes ``**kwargs``."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return {p.name: p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}, var_kw


def _resolve_params(name: str, fn: Callable, params, compose: Optional[Callable]):
    """Check that every config key sets an argument of ``fn`` or of the ``compose`` hook; a hook-only
    argument takes its default from the hook's signature."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        params = [Param(key, arg) for key, arg in params.items()]
    fn_args, fn_kw = signature_arguments(fn)
    hook_args, hook_kw = signature_arguments(compose, skip=2) if compose is not None else ({}, False)
    out = []
    for p in params:
        if not isinstance(p, Param):
            raise TypeError(f"box loss {name!r}: params must be a mapping KEY -> argument or a "
                            f"sequence of Param, got {p!r}")
        if p.arg in NOT_CONFIGURABLE:
            raise ValueError(f"box loss {name!r}: config key {p.key!r} cannot set {p.arg!r}, "
                             "which the detector passes itself")
        if p.arg not in fn_args and not fn_kw and p.arg not in hook_args and not hook_kw:
            accepted = sorted(a for a in (*fn_args, *hook_args) if a not in NOT_CONFIGURABLE)
            fn_name = getattr(fn, "__name__", repr(fn))
            what = (f"neither {fn_name} nor its compose hook accepts" if compose
                    else f"{fn_name} does not accept")
            raise ValueError(f"box loss {name!r}: config key {p.key!r} sets argument {p.arg!r}, which "
                             f"{what}; accepted: {', '.join(accepted) or '(none)'}")
        if p.default is _SIGNATURE_DEFAULT and p.arg not in fn_args and p.arg in hook_args:
            default = hook_args[p.arg].default
            if default is not inspect.Parameter.empty:
                p = _replace(p, default=default)
        out.append(p)
    return out


def register_box_loss(name: str, fn: Optional[Callable] = None, *, inputs: str, params=None,
                      needs_ious: bool = False, compose: Optional[Callable] = None,
                      replace: bool = False):
    """Register box loss ``name`` (decorator, or call with ``fn``); returns ``fn`` unchanged.

    ``inputs``: ``"boxes"`` or ``"deltas"``; ``params``: ``{"KEY": "argument"}`` or a sequence of
    :class:`~iou_aware.registry.Param` (keys under ``MODEL.IOU_AWARE``); ``needs_ious``: pass the
    IoUs as the third argument; ``compose``: the detector's hook ``compose(loss, pairs, **args)``
    (see the module docstring). A taken name raises ``KeyError`` unless ``replace=True``.
    """
    if inputs not in BOX_LOSS_KINDS:
        raise ValueError(f"register_box_loss({name!r}): inputs must be one of "
                         f"{', '.join(repr(k) for k in BOX_LOSS_KINDS)}, got {inputs!r}")
    if compose is not None and not callable(compose):
        raise TypeError(f"register_box_loss({name!r}): compose must be callable, got {compose!r}")

    def add(f: Callable) -> Callable:
        if not callable(f):
            raise TypeError(f"box loss {name!r}: not callable: {f!r}")
        return BOX_LOSS_REGISTRY.register(
            name, f, params=_resolve_params(name, f, params, compose), replace=replace,
            inputs=inputs, needs_ious=bool(needs_ious), compose=compose,
        )

    return add if fn is None else add(fn)


class _LiveView(Mapping):
    """Read-only ``name -> value`` view of the registry's current entries."""

    def __init__(self, value: Callable):
        self._value = value

    def __getitem__(self, name: str):
        return self._value(BOX_LOSS_REGISTRY.get(name))

    def __contains__(self, name) -> bool:
        return name in BOX_LOSS_REGISTRY

    def __iter__(self) -> Iterator[str]:
        return iter(BOX_LOSS_REGISTRY.names())

    def __len__(self) -> int:
        return len(BOX_LOSS_REGISTRY)

    def __repr__(self):
        return repr(dict(self))


BOX_LOSSES: Mapping = _LiveView(lambda entry: entry.fn)
# What each loss regresses: decoded boxes, or element-wise regression targets.
BOX_LOSS_INPUTS: Mapping = _LiveView(lambda entry: entry.meta["inputs"])


def box_loss_params(name: str) -> Dict[str, object]:
    """The hyper-parameters of loss ``name``'s function with their defaults."""
    fn = BOX_LOSS_REGISTRY.get(name).fn
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.name not in _DATA_ARGS and p.default is not inspect.Parameter.empty
    }


def build_box_loss(name: str, **params) -> Callable:
    """Return loss ``name`` with ``params`` bound (``functools.partial``).

    An unknown name raises ``KeyError`` listing the valid names; an unknown parameter raises
    ``TypeError`` listing the accepted ones.

    >>> loss = build_box_loss("alpha_iou", alpha=3.0, penalty="ciou")
    >>> loss(pred, target, reduction="sum")
    """
    fn = BOX_LOSS_REGISTRY.get(name).fn
    accepted = box_loss_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"Box loss {name!r} got unknown parameter(s) {unknown}; "
            f"it accepts: {', '.join(sorted(accepted)) or '(none)'}"
        )
    return functools.partial(fn, **params)
