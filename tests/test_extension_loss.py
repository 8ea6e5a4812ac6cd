"""A box loss added from outside the package: one registration makes it a config choice with its own
keys, composed and trained by both IoU-aware detectors; the registry's errors; the detector's
composition of the built-in losses (iou_aware.losses.composition) against hand-worked values."""

import functools
import json
import math
import os

import pytest
import torch

from iou_aware.config import add_iou_aware_config, validate_iou_aware_config
from iou_aware.engine import Trainer, setup_cfg
from iou_aware.losses import BOX_LOSS_REGISTRY, BOX_LOSSES, BoxLoss, focal_efficient_iou_loss, register_box_loss
from iou_aware.losses.registry import BOX_LOSS_INPUTS
from iou_aware.registry import Param

RETINANET = ("configs/synthetic/retinanet_R18_FPN.yaml", ["MODEL.META_ARCHITECTURE", "IoUAwareRetinaNet"])
RCNN = ("configs/synthetic/faster_rcnn_R18_FPN.yaml", ["MODEL.ROI_HEADS.NAME", "IoUAwareROIHeads"])


@pytest.fixture
def l1_boxes():
    """The README's example, registered as a user would (and removed afterwards)."""

    @register_box_loss("l1_boxes", inputs="boxes", params={"L1_BOXES.POWER": "power"})
    def l1_boxes_loss(pred, target, power=1.0, reduction="none"):
        """Sum over the four coordinates of |pred - target| ** power."""
        loss = (pred - target).abs().pow(power).sum(dim=1)
        return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]

    yield l1_boxes_loss
    BOX_LOSS_REGISTRY.unregister("l1_boxes")


@pytest.fixture
def scaled_l2_deltas():
    """A "deltas" loss: element-wise SCALE * (pred - target)^2."""

    def scaled_l2(pred, target, scale=1.0, reduction="none"):
        loss = scale * (pred - target).square()
        return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]

    register_box_loss("scaled_l2", scaled_l2, inputs="deltas", params={"SCALED_L2.SCALE": "scale"})
    yield scaled_l2
    BOX_LOSS_REGISTRY.unregister("scaled_l2")


class Shift:
    """A box transform whose deltas are plain corner offsets: ``d = boxes - src``."""

    @staticmethod
    def get_deltas(src, boxes):
        return boxes - src

    @staticmethod
    def apply_deltas(deltas, src):
        return src + deltas


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# Three positives with unit-square sources (sqrt(area) = 1, so box units are unchanged), each
# predicted as its source: IoU 1 (identical), 1/2 (target twice as wide), 0 (target beside it).
SRC = _t([[0, 0, 1, 1]] * 3)
TARGET = _t([[0, 0, 1, 1], [0, 0, 2, 1], [2, 0, 3, 1]])


# ------------------------------------------------------------------------------- extension
def test_registration_is_a_live_entry_with_its_config_key(repo_root, l1_boxes):
    assert BOX_LOSSES["l1_boxes"] is l1_boxes and BOX_LOSS_INPUTS["l1_boxes"] == "boxes"
    cfg = setup_cfg(os.path.join(repo_root, RETINANET[0]), [])
    assert cfg.MODEL.IOU_AWARE.L1_BOXES.POWER == 1.0  # the signature's default
    with pytest.raises(TypeError):
        BOX_LOSSES["other"] = l1_boxes  # a read-only view
    BOX_LOSS_REGISTRY.unregister("l1_boxes")
    assert "l1_boxes" not in BOX_LOSSES and "l1_boxes" not in BOX_LOSS_INPUTS


@pytest.mark.parametrize("config,arch", [RETINANET, RCNN], ids=["retinanet", "faster_rcnn"])
def test_registered_loss_trains_one_step(repo_root, tiny_synthetic_opts, tmp_path, l1_boxes, config, arch):
    cfg = setup_cfg(os.path.join(repo_root, config), [
        *tiny_synthetic_opts, *arch, "MODEL.IOU_AWARE.BOX_LOSS", "l1_boxes",
        "MODEL.IOU_AWARE.L1_BOXES.POWER", "2.0", "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path),
    ])
    trainer = Trainer(cfg)
    model = trainer.model
    box_loss = model.roi_heads.box_predictor.box_loss if hasattr(model, "roi_heads") else model.box_loss
    assert box_loss.loss_fn.func is l1_boxes and box_loss.loss_fn.keywords == {"power": 2.0}
    calls = []

    def spy(pred, target, power=1.0, reduction="none"):
        calls.append((power, pred.shape, pred.requires_grad))
        return l1_boxes(pred, target, power, reduction)

    box_loss.loss_fn = functools.partial(spy, **box_loss.loss_fn.keywords)
    trainer.train()
    assert len(calls) == 1
    power, shape, requires_grad = calls[0]
    assert power == 2.0 and shape[1] == 4 and shape[0] > 0
    assert requires_grad  # the predicted boxes carry the gradient back to the box head
    with open(tmp_path / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [0]
    values = {k: v for k, v in losses[0].items() if k.startswith("loss") or k == "total_loss"}
    assert all(math.isfinite(v) for v in values.values()), values
    assert values["loss_box_reg"] > 0


def test_deltas_loss_from_the_config(scaled_l2_deltas):
    """A "deltas" loss sees (P, 4) regression targets of the configured parameterization; the
    detector sums its output over the coordinates and applies BOX_LOSS_WEIGHT."""
    from detectron2.config import get_cfg

    from iou_aware.modeling import BoxRegressionLoss, CornerBoxTransform

    cfg = add_iou_aware_config(get_cfg())
    cfg.merge_from_list(["MODEL.IOU_AWARE.BOX_LOSS", "scaled_l2", "MODEL.IOU_AWARE.SCALED_L2.SCALE", "2.0",
                         "MODEL.IOU_AWARE.BOX_LOSS_WEIGHT", "0.5",
                         "MODEL.IOU_AWARE.BOX_PARAMETERIZATION", "corners"])
    validate_iou_aware_config(cfg)
    box_loss = BoxRegressionLoss.from_config(cfg, CornerBoxTransform(), "smooth_l1", 0.1)
    assert box_loss.kind == "deltas" and box_loss.loss_fn.keywords == {"scale": 2.0}
    # source (0, 0, 2, 2): S = 2; ground truth (0, 0, 2, 4): target deltas (0, 0, 0, 1);
    # predicted deltas (0.5, 0, 0, 0.5) decode to (1, 0, 2, 3): IoU = 3 / (3 + 8 - 3) = 3/8
    src, gt = _t([[0, 0, 2, 2]]), _t([[0, 0, 2, 4]])
    deltas = _t([[0.5, 0, 0, 0.5]]).requires_grad_(True)
    loss, ious = box_loss(src, deltas, gt)
    # 0.5 * 2 * (0.5^2 + 0.5^2) = 0.5
    torch.testing.assert_close(loss, _t([0.5]))
    torch.testing.assert_close(ious, torch.tensor([3 / 8]))
    (grad,) = torch.autograd.grad(loss.sum(), deltas)
    torch.testing.assert_close(grad, _t([[1.0, 0, 0, -1.0]]))  # 0.5 * 2 * 2 * (pred - target)


def test_user_compose_hook_with_its_own_key(l1_boxes):
    """A hook-only config key takes its default from the hook's signature; the hook sees the pairs
    (here: the detached IoUs) and its arguments, and the weight applies after it."""
    from detectron2.config import get_cfg

    seen = {}

    def times_iou_plus(loss, pairs, offset=0.5):
        seen["offset"] = offset
        return loss * (pairs.ious + offset)

    register_box_loss("l1_iou", l1_boxes, inputs="boxes", compose=times_iou_plus,
                      params={"L1_IOU.POWER": "power", "L1_IOU.OFFSET": "offset"})
    try:
        cfg = add_iou_aware_config(get_cfg())
        assert cfg.MODEL.IOU_AWARE.L1_IOU.OFFSET == 0.5
        box_loss = BoxLoss.from_values("l1_iou", {"L1_IOU.OFFSET": 1.0}, Shift(), weight=3.0)
        assert box_loss.loss_fn.keywords == {"power": 1.0} and box_loss.compose_args == {"offset": 1.0}
        # pair 2: |pred - target| summed = 1 (x2: 1 vs 2), IoU 1/2 -> 3 * 1 * (0.5 + 1)
        loss, _ = box_loss(SRC[:2], torch.zeros(2, 4, dtype=torch.float64), TARGET[:2])
        torch.testing.assert_close(loss, _t([0.0, 4.5]), atol=1e-6, rtol=0)
        assert seen["offset"] == 1.0
    finally:
        BOX_LOSS_REGISTRY.unregister("l1_iou")


# ---------------------------------------------------------------------------------- errors
def test_registry_errors_name_what_is_wrong(l1_boxes):
    def fn(pred, target, power=1.0, reduction="none"):
        return pred.sum(dim=1)

    with pytest.raises(ValueError, match=r"inputs must be one of 'boxes', 'deltas', got 'points'"):
        register_box_loss("points_loss", fn, inputs="points")
    with pytest.raises(KeyError, match=r"box loss 'l1_boxes' is already registered"):
        register_box_loss("l1_boxes", fn, inputs="boxes")
    with pytest.raises(ValueError, match=r"'X.POW' sets argument 'pow'.*accepted: power"):
        register_box_loss("pow_loss", fn, inputs="boxes", params={"X.POW": "pow"})
    with pytest.raises(ValueError, match=r"'X.REDUCTION' cannot set 'reduction'"):
        register_box_loss("pow_loss", fn, inputs="boxes", params={"X.REDUCTION": "reduction"})
    assert "points_loss" not in BOX_LOSSES and "pow_loss" not in BOX_LOSSES
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['powr'\].*accepts: power"):
        BoxLoss("l1_boxes", {"powr": 2.0})
    with pytest.raises(KeyError, match=r"Unknown box loss 'l2_boxes'.*l1_boxes"):
        BoxLoss("l2_boxes")


def test_config_errors_name_the_key(l1_boxes):
    from detectron2.config import get_cfg

    cfg = add_iou_aware_config(get_cfg())
    cfg.MODEL.IOU_AWARE.BOX_LOSS = "l2_boxes"
    with pytest.raises(ValueError, match=r"MODEL.IOU_AWARE.BOX_LOSS: unknown loss 'l2_boxes'.*l1_boxes"):
        validate_iou_aware_config(cfg)
    # a key's declared check, reported with the key
    register_box_loss("checked", l1_boxes, inputs="boxes", params=[
        Param("CHECKED.POWER", "power", check=lambda v: None if v > 0 else "must be > 0")])
    try:
        late = add_iou_aware_config(get_cfg())
        late.MODEL.IOU_AWARE.CHECKED.POWER = -1.0
        with pytest.raises(ValueError, match=r"MODEL.IOU_AWARE.CHECKED.POWER: must be > 0, got -1.0"):
            validate_iou_aware_config(late)
        # the earlier config was built before "checked" was registered: it lacks the key
        cfg.MODEL.IOU_AWARE.BOX_LOSS = "l1_boxes"
        with pytest.raises(ValueError, match=r"MODEL.IOU_AWARE.CHECKED.POWER: is not in the config.*"
                                             r"registered after the config was built"):
            validate_iou_aware_config(cfg)
    finally:
        BOX_LOSS_REGISTRY.unregister("checked")


def test_detector_beta_must_be_given_when_the_key_asks_for_it():
    with pytest.raises(ValueError, match=r"SMOOTH_L1_BETA < 0.*detector_defaults"):
        BoxLoss("smooth_l1")
    assert BoxLoss("smooth_l1", detector_defaults={"smooth_l1_beta": 0.2}).loss_fn.keywords == {"beta": 0.2}
    assert BoxLoss.from_values("smooth_l1", {"SMOOTH_L1_BETA": 0.3}).loss_fn.keywords == {"beta": 0.3}


# ----------------------------------------------------------------------------- composition
def test_focal_eiou_is_normalized_by_the_weight_sum_eq_11():
    # L_EIoU (Zhang eq. 7) of the three pairs: 0; 1/2 + 0.25/5 + (1-2)^2/2^2 = 0.8;
    # 1 + 2^2/(3^2 + 1) = 1.4. Weights IoU^0.5: 1, sqrt(1/2), 0.
    w, eiou = [1.0, math.sqrt(0.5), 0.0], [0.0, 0.8, 1.4]
    eq11 = sum(wi * li for wi, li in zip(w, eiou)) / sum(w)  # sqrt(1/2) 0.8 / (1 + sqrt(1/2))
    deltas = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    loss, ious = BoxLoss("focal_efficient_iou", {"gamma": 0.5}, Shift(), weight=2.0)(SRC, deltas, TARGET)
    torch.testing.assert_close(ious, torch.tensor([1.0, 0.5, 0.0]))
    # per positive: W_i L_i * P / sum W, so that the detector's sum / P is eq. 11 (times the weight)
    expected = _t([wi * li * 3 / sum(w) * 2.0 for wi, li in zip(w, eiou)])
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss.sum() / 3, _t(2.0 * eq11), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss.sum() / 3, 2.0 * focal_efficient_iou_loss(SRC, TARGET, reduction="mean"),
                               atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(loss.sum(), deltas)
    assert grad[1].abs().sum() > 0 and grad[2].abs().sum() == 0  # weight 0: no gradient
    # without the hook (Zhang's Algorithm 1, one pair at a time): W_i L_i
    bare, _ = BoxLoss("focal_efficient_iou", {"gamma": 0.5}, Shift(), compose=False)(SRC, deltas, TARGET)
    torch.testing.assert_close(bare, _t([wi * li for wi, li in zip(w, eiou)]), atol=1e-6, rtol=0)


def test_hiou_plus_smooth_l1_eq_11():
    # Pair 2: HIoU = (1 + 1/2)^0.8 (1 - 1/2); deltas: predicted 0, target (0, 0, 1, 0), so the
    # smooth-L1 (beta 0.5, the detector's) is 1 - 0.25 = 0.75; pair 1: both 0.
    hiou = 1.5**0.8 * 0.5
    deltas = torch.zeros(2, 4, dtype=torch.float64)
    src, target = SRC[:2], TARGET[:2]
    full = BoxLoss.from_values("harmonic_iou", {"HIOU.GAMMA": 0.8}, Shift(), weight=2.0,
                               detector_defaults={"smooth_l1_beta": 0.5})
    loss, _ = full(src, deltas, target)
    torch.testing.assert_close(loss, _t([0.0, 2.0 * (0.75 + 1.5 * hiou)]), atol=1e-6, rtol=0)
    alpha_beta = BoxLoss.from_values("harmonic_iou", {"HIOU.ALPHA": 0.5, "SMOOTH_L1_BETA": 0.25}, Shift())
    loss, _ = alpha_beta(src, deltas, target)
    torch.testing.assert_close(loss, _t([0.0, (1 - 0.125) + 0.5 * hiou]), atol=1e-6, rtol=0)
    alone = BoxLoss.from_values("harmonic_iou", {"HIOU.ADD_SMOOTH_L1": False}, Shift(),
                                detector_defaults={"smooth_l1_beta": 0.5})
    loss, _ = alone(src, deltas, target)
    torch.testing.assert_close(loss, _t([0.0, hiou]), atol=1e-6, rtol=0)


def test_iou_balanced_smooth_l1_gets_the_decoded_boxes_iou():
    # pair 2, IoU 1/2: weight LOC_WEIGHT * IoU^LAMBDA = 2 * 0.5^1 = 1; smooth-L1 (beta 0.5) = 0.75
    box_loss = BoxLoss.from_values("iou_balanced_smooth_l1", {
        "IOU_BALANCED_LOC.LAMBDA": 1.0, "IOU_BALANCED_LOC.LOC_WEIGHT": 2.0, "SMOOTH_L1_BETA": 0.5}, Shift())
    assert box_loss.needs_ious
    loss, _ = box_loss(SRC[:2], torch.zeros(2, 4, dtype=torch.float64), TARGET[:2])
    torch.testing.assert_close(loss, _t([0.0, 0.75]), atol=1e-6, rtol=0)


def test_boxes_are_in_units_of_sqrt_source_area(l1_boxes):
    # source (0, 0, 2, 2): S = 2; predicted (0, 0, 2, 2) vs target (0, 0, 4, 2): |dx2| = 2, or 1 in units of S
    src, target = _t([[0, 0, 2, 2]]), _t([[0, 0, 4, 2]])
    deltas = torch.zeros(1, 4, dtype=torch.float64)
    loss, _ = BoxLoss("l1_boxes", {}, Shift())(src, deltas, target)
    torch.testing.assert_close(loss, _t([1.0]))
    loss, _ = BoxLoss("l1_boxes", {}, Shift(), normalize_boxes=False)(src, deltas, target)
    torch.testing.assert_close(loss, _t([2.0]))
    # the prediction may be the boxes themselves (no decoding): same value
    loss, _ = BoxLoss("l1_boxes", {}, Shift())(src, None, target, pred_boxes=src.clone())
    torch.testing.assert_close(loss, _t([1.0]))
