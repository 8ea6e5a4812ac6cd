"""The shared registry core (iou_aware.registry): declared config keys, defaults, errors."""

import pytest

from iou_aware.registry import Param, Registry


def _fn(x, power=2.0, mode="a"):
    return x


def test_register_takes_defaults_from_signature_and_converts():
    reg = Registry("thing", "MODEL.IOU_AWARE.THING")
    reg.register("t", _fn, params=[Param("T.POWER", "power"), Param("T.MODE", "mode", to_arg=str.upper)])
    entry = reg.get("t")
    assert entry.fn is _fn
    assert [(p.key, p.default) for p in entry.params] == [("T.POWER", 2.0), ("T.MODE", "a")]
    assert reg.arguments("t", {"T.POWER": 3.0}) == {"power": 3.0, "mode": "A"}


def test_mapping_form_and_decorator_return_the_function():
    reg = Registry("thing", "MODEL.IOU_AWARE.THING")
    deco = reg.register("t", params={"T.POWER": "power"}, inputs="boxes")
    assert deco(_fn) is _fn
    assert reg.get("t").meta == {"inputs": "boxes"}
    assert reg.all_params()[0].default == 2.0


def test_errors_name_what_is_wrong():
    reg = Registry("thing", "MODEL.IOU_AWARE.THING")
    reg.register("t", _fn, params={"T.POWER": "power"})
    with pytest.raises(KeyError, match="Unknown thing 'u'.*MODEL.IOU_AWARE.THING.*valid names are: t"):
        reg.get("u")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("t", _fn)
    with pytest.raises(ValueError, match="'x'.*no default"):
        reg.register("v", _fn, params={"T.X": "x"})
    with pytest.raises(ValueError, match="T.POWER.*already declared with default 2.0"):
        reg.register("w", _fn, params=[Param("T.POWER", "power", 1.0)])


def test_shared_key_listed_once_and_replace():
    reg = Registry("thing", "MODEL.IOU_AWARE.THING")
    reg.register("a", _fn, params={"T.POWER": "power"})
    reg.register("b", _fn, params={"T.POWER": "power"})
    assert [p.key for p in reg.all_params()] == ["T.POWER"]
    reg.register("a", _fn, replace=True)
    assert reg.get("a").params == ()
    reg.unregister("a")
    assert "a" not in reg and list(reg) == ["b"] and len(reg) == 1
