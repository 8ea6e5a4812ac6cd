"""Name -> function registries whose entries declare their own config keys (pure Python).

The box-loss registry (``iou_aware.losses``) and the NMS registry (``iou_aware.nms``) are both a
:class:`Registry`. An entry is one function plus the config keys that feed its keyword arguments,
declared where the function is registered, so that adding a method touches one place:

.. code-block:: python

    @BOX_LOSS_REGISTRY.register("l1_boxes", inputs="boxes", params={"L1_BOXES.POWER": "power"})
    def l1_boxes_loss(pred, target, power=1.0, reduction="none"):
        ...

``params`` maps a config key under ``MODEL.IOU_AWARE`` (dotted, e.g. ``"FOCAL_EIOU.GAMMA"``) to a
keyword argument of the function (a plain string: the default is the function's own default), or
is a sequence of :class:`Param` for a default, a help text, a range check or a conversion.
``iou_aware.config.add_iou_aware_config`` adds every registered key with its default, so register
before building the config (importing the module that registers is enough). This module imports
nothing from torch or Detectron2.
"""

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["Param", "Entry", "Registry"]

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Param:
    """One config key of a registered function.

    ``key``: dotted key under ``MODEL.IOU_AWARE``; ``arg``: the keyword argument it sets;
    ``default``: the key's default (taken from the function's signature when omitted), of a type
    yacs accepts; ``help``: one line for the docs; ``check(value)`` returns an error text (what a
    valid value is) or ``None``; ``to_arg(value)`` turns the config value into the argument (e.g.
    ``-1`` -> ``None``).
    """

    key: str
    arg: str
    default: Any = _NO_DEFAULT
    help: str = ""
    check: Optional[Callable[[Any], Optional[str]]] = None
    to_arg: Optional[Callable[[Any], Any]] = None

    def argument(self, value: Any) -> Any:
        return self.to_arg(value) if self.to_arg is not None else value


@dataclass(frozen=True)
class Entry:
    """A registered function: its name, the function, its config keys and registry-specific
    metadata (``meta``, e.g. a box loss's input kind)."""

    name: str
    fn: Callable
    params: Tuple[Param, ...]
    meta: Dict[str, Any] = field(default_factory=dict)


ParamsSpec = Union[Mapping[str, str], Sequence[Param], None]


def _signature_default(fn: Callable, arg: str) -> Any:
    try:
        p = inspect.signature(fn).parameters.get(arg)
    except (TypeError, ValueError):
        p = None
    if p is None or p.default is inspect.Parameter.empty:
        return _NO_DEFAULT
    return p.default


def _normalize_params(name: str, fn: Callable, params: ParamsSpec) -> Tuple[Param, ...]:
    if params is None:
        return ()
    if isinstance(params, Mapping):
        params = [Param(key, arg) for key, arg in params.items()]
    out = []
    for p in params:
        if not isinstance(p, Param):
            raise TypeError(f"{name!r}: params must be a mapping KEY -> argument or a sequence of Param, got {p!r}")
        if p.default is _NO_DEFAULT:
            default = _signature_default(fn, p.arg)
            if default is _NO_DEFAULT:
                raise ValueError(
                    f"{name!r}: config key {p.key!r} sets argument {p.arg!r}, which has no default "
                    "in the function's signature; give Param(..., default=...)"
                )
            p = Param(p.key, p.arg, default, p.help, p.check, p.to_arg)
        out.append(p)
    return tuple(out)


class Registry:
    """Named functions with declared config keys. ``what`` names the kind in error messages
    ("box loss", "NMS type")."""

    def __init__(self, what: str, config_key: str):
        self.what = what
        self.config_key = config_key  # the key that selects an entry, e.g. "MODEL.IOU_AWARE.BOX_LOSS"
        self._entries: Dict[str, Entry] = {}

    def register(self, name: str, fn: Optional[Callable] = None, *, params: ParamsSpec = None,
                 replace: bool = False, **meta):
        """Register ``fn`` under ``name`` (use as ``@registry.register(name, ...)`` or call it with
        ``fn``). Returns ``fn`` unchanged. Re-registering a name raises unless ``replace=True``."""

        def add(f: Callable) -> Callable:
            if not callable(f):
                raise TypeError(f"{self.what} {name!r}: not callable: {f!r}")
            if name in self._entries and not replace:
                raise KeyError(f"{self.what} {name!r} is already registered (pass replace=True to override)")
            entry = Entry(name, f, _normalize_params(name, f, params), dict(meta))
            self._check_shared_keys(entry)
            self._entries[name] = entry
            return f

        return add if fn is None else add(fn)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _check_shared_keys(self, entry: Entry) -> None:
        known = {p.key: p for e in self._entries.values() if e.name != entry.name for p in e.params}
        for p in entry.params:
            other = known.get(p.key)
            if other is not None and other.default != p.default:
                raise ValueError(
                    f"{self.what} {entry.name!r}: config key {p.key!r} is already declared with "
                    f"default {other.default!r}, not {p.default!r}"
                )

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> Tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"Unknown {self.what} {name!r} ({self.config_key}); valid names are: "
                + ", ".join(sorted(self._entries))
            ) from None

    def all_params(self) -> Tuple[Param, ...]:
        """Every declared config key once (keys shared by several entries have one default)."""
        seen: Dict[str, Param] = {}
        for e in self._entries.values():
            for p in e.params:
                seen.setdefault(p.key, p)
        return tuple(seen.values())

    def arguments(self, name: str, values: Mapping[str, Any]) -> Dict[str, Any]:
        """The keyword arguments of entry ``name`` from config values ``{dotted key: value}``
        (missing keys take their default)."""
        entry = self.get(name)
        return {p.arg: p.argument(values.get(p.key, p.default)) for p in entry.params}
