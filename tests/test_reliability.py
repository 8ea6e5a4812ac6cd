"""Fault injection: the ways a run could end with exit code 0 and a wrong or misleading result, or
lose its training, each reproduced on tiny data with the behaviour that replaces it.

* ``MODEL.IOU_AWARE`` keys on a stock model (train_net, demo ``--nms``): an error naming the key
  and the model setting that would use it;
* a whole number, or a number PyYAML reads as a string (`1e-3`), for a float key is accepted
  (command line and yaml);
* ``--eval-only`` without usable weights: an error naming MODEL.WEIGHTS;
* checkpoints: kill -9 of a training process during and after a checkpoint write, truncated /
  empty / text checkpoint files, an empty ``last_checkpoint``;
* the divergence guard (non-finite parameters or predictions, a box loss stuck at exactly 0);
* the demo's bad arguments, unreadable images and clashing output names;
* the README's "Train on your own data" command, and each error of ``--dataset``.
"""

import io
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yacs.config
from detectron2.config import CfgNode as CN
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from PIL import Image

from conftest import REPO, load_tool
from iou_aware import engine
from iou_aware.checkpoint import CheckpointError, SafeCheckpointer
from iou_aware.engine import Trainer, setup_cfg

RETINANET = os.path.join(REPO, "configs/synthetic/retinanet_R18_FPN.yaml")
IOU_AWARE = os.path.join(REPO, "configs/synthetic/retinanet_R18_FPN_iou_aware.yaml")
RCNN = os.path.join(REPO, "configs/synthetic/faster_rcnn_R18_FPN.yaml")
NO_TEST = ["DATASETS.TEST", "()"]  # no evaluation after training


def env_with_repo():
    """Subprocesses import this checkout's ``iou_aware`` (not another installed copy)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}


def readable(path):
    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:
        return False


def temp_files(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


@pytest.fixture
def warnings_logged():
    """Messages of WARNING and above logged to the "detectron2" logger during the test."""
    records = []

    class Handler(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Handler(level=logging.WARNING)
    logging.getLogger("detectron2").addHandler(handler)
    yield records
    logging.getLogger("detectron2").removeHandler(handler)


@pytest.fixture(scope="module")
def train_net():
    return load_tool("train_net")


@pytest.fixture(scope="module")
def demo_tool():
    return load_tool("demo")


@pytest.fixture(scope="module")
def stock_weights(tmp_path_factory, tiny_synthetic_opts):
    """``model_final.pth`` of an (untrained) stock RetinaNet of the synthetic config."""
    folder = tmp_path_factory.mktemp("stock_weights")
    cfg = setup_cfg(RETINANET, tiny_synthetic_opts)
    SafeCheckpointer(Trainer.build_model(cfg), save_dir=str(folder)).save("model_final")
    return str(folder / "model_final.pth")


# ----------------------------------------------------------------------- 1. keys a model ignores
@pytest.mark.parametrize("config, opts, fix", [
    (RETINANET, ["MODEL.IOU_AWARE.BOX_LOSS", "nonsense"], "MODEL.META_ARCHITECTURE IoUAwareRetinaNet"),
    (RETINANET, ["MODEL.IOU_AWARE.BOX_LOSS", "giou"], "MODEL.META_ARCHITECTURE IoUAwareRetinaNet"),
    (RCNN, ["MODEL.IOU_AWARE.NMS.TYPE", "soft"], "MODEL.ROI_HEADS.NAME IoUAwareROIHeads"),
])
def test_iou_aware_keys_on_a_stock_model_are_refused(config, opts, fix):
    with pytest.raises(ValueError) as e:
        setup_cfg(config, opts)
    assert f"{opts[0]} {opts[1]!r}" in str(e.value) and fix in str(e.value)
    # the same keys on the IoU-aware model are fine
    arch = ["MODEL.META_ARCHITECTURE", "IoUAwareRetinaNet"] if config == RETINANET else [
        "MODEL.ROI_HEADS.NAME", "IoUAwareROIHeads"]
    assert setup_cfg(config, [*arch, *opts])


def test_keys_are_compared_node_by_node(monkeypatch):
    """A key no list here knows (as a registry adds them) is compared too."""
    real = engine.add_iou_aware_config

    def with_new_node(cfg):
        real(cfg)
        cfg.MODEL.IOU_AWARE.NEW_NODE = CN({"KEY": 1.0})
        return cfg

    import iou_aware.config as config_module

    monkeypatch.setattr(config_module, "add_iou_aware_config", with_new_node)
    monkeypatch.setattr(engine, "add_iou_aware_config", with_new_node)
    assert setup_cfg(RETINANET, ["MODEL.IOU_AWARE.NEW_NODE.KEY", "1.0"])  # the default: fine
    with pytest.raises(ValueError, match=r"MODEL\.IOU_AWARE\.NEW_NODE\.KEY 2\.0"):
        setup_cfg(RETINANET, ["MODEL.IOU_AWARE.NEW_NODE.KEY", "2.0"])


def test_train_net_and_demo_refuse_keys_of_a_stock_model(train_net, demo_tool, capsys, tmp_path):
    args = train_net.get_parser().parse_args(
        ["--config-file", RETINANET, "MODEL.IOU_AWARE.BOX_LOSS", "giou", "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        train_net.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "MODEL.IOU_AWARE.BOX_LOSS 'giou'" in err and "IoUAwareRetinaNet" in err

    rc = demo_tool.main(["--config-file", RETINANET, "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                         "--nms", "iou_guided"])
    err = capsys.readouterr().err
    assert rc == 2 and "MODEL.IOU_AWARE.NMS.TYPE 'iou_guided'" in err and "IoUAwareRetinaNet" in err


# ------------------------------------------------------------------ 7. whole numbers, float keys
def test_whole_number_for_a_float_key(tmp_path):
    cfg = setup_cfg(IOU_AWARE, ["MODEL.IOU_AWARE.HIOU.GAMMA", "1", "SOLVER.BASE_LR", "1"])
    assert cfg.MODEL.IOU_AWARE.HIOU.GAMMA == 1.0 and type(cfg.MODEL.IOU_AWARE.HIOU.GAMMA) is float
    assert type(cfg.SOLVER.BASE_LR) is float
    yaml_file = tmp_path / "gamma.yaml"
    yaml_file.write_text(f"_BASE_: {IOU_AWARE}\nMODEL:\n  IOU_AWARE:\n    FOCAL_EIOU:\n      GAMMA: 1\n"
                         "SOLVER:\n  BASE_LR: 1\n")
    cfg = setup_cfg(str(yaml_file))
    assert cfg.MODEL.IOU_AWARE.FOCAL_EIOU.GAMMA == 1.0 and type(cfg.MODEL.IOU_AWARE.FOCAL_EIOU.GAMMA) is float
    # PyYAML reads 1e-3 (no dot) as a string: a float key takes it as the number
    yaml_file.write_text(f"_BASE_: {IOU_AWARE}\nSOLVER:\n  BASE_LR: 1e-3\n  WEIGHT_DECAY: 5.E-5\n")
    cfg = setup_cfg(str(yaml_file))
    assert cfg.SOLVER.BASE_LR == 0.001 and cfg.SOLVER.WEIGHT_DECAY == 5e-5
    with pytest.raises(ValueError, match="Type mismatch"):  # not a number: still refused
        setup_cfg(IOU_AWARE, ["SOLVER.BASE_LR", "fast"])
    with pytest.raises(ValueError, match="Type mismatch"):  # an integer key still refuses a fraction
        setup_cfg(IOU_AWARE, ["SOLVER.MAX_ITER", "2.5"])
    assert yacs.config._check_and_coerce_cfg_value_type is engine._YACS_COERCE  # restored


# ------------------------------------------------------------------------ 3. --eval-only weights
def test_eval_only_needs_trained_weights(train_net, capsys, tmp_path, tiny_synthetic_opts, stock_weights):
    def eval_only(config, *opts):
        args = train_net.get_parser().parse_args(
            ["--config-file", config, "--eval-only", *tiny_synthetic_opts, "OUTPUT_DIR", str(tmp_path), *opts])
        with pytest.raises(SystemExit) as e:
            train_net.main(args)
        assert e.value.code == 2
        return capsys.readouterr().err

    assert "MODEL.WEIGHTS is empty" in eval_only(RETINANET)
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    err = eval_only(RETINANET, "MODEL.WEIGHTS", str(text))
    assert "MODEL.WEIGHTS" in err and str(text) in err
    # stock weights leave the IoU head uninitialized
    err = eval_only(IOU_AWARE, "MODEL.WEIGHTS", stock_weights)
    assert "MODEL.WEIGHTS" in err and "head.iou_pred" in err
    # --resume without MODEL.WEIGHTS: the last checkpoint of OUTPUT_DIR
    cfg = setup_cfg(RETINANET, [*tiny_synthetic_opts, "OUTPUT_DIR", os.path.dirname(stock_weights)])
    engine.load_weights_for_evaluation(Trainer.build_model(cfg), cfg, resume=True)


# --------------------------------------------------------------------- 4. checkpoint files
def linear_checkpoints(folder, iterations):
    model = torch.nn.Linear(2, 2)
    checkpointer = SafeCheckpointer(model, save_dir=str(folder))
    for it in iterations:
        with torch.no_grad():
            model.weight.fill_(it)
        checkpointer.save(f"model_{it:07d}", iteration=it)
    return checkpointer


def resume(folder, weights=""):
    """(iteration, weight value) of what ``resume_or_load`` loads into a fresh model."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(-1)
    extra = SafeCheckpointer(model, save_dir=str(folder)).resume_or_load(weights, resume=True)
    return extra.get("iteration"), model.weight[0, 0].item()


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "missing"])
def test_resume_skips_an_unreadable_last_checkpoint(tmp_path, warnings_logged, damage):
    linear_checkpoints(tmp_path, [0, 1, 2])
    last = tmp_path / "model_0000002.pth"
    assert (tmp_path / "last_checkpoint").read_text() == last.name
    data = last.read_bytes()
    if damage == "missing":
        last.unlink()
    else:
        last.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"model weights\n"}[damage])
    assert resume(tmp_path) == (1, 1.0)  # the newest readable one
    assert any("model_0000002.pth" in m for m in warnings_logged)


def test_resume_with_an_empty_last_checkpoint_uses_the_newest_file(tmp_path, warnings_logged):
    linear_checkpoints(tmp_path, [0, 1])
    (tmp_path / "last_checkpoint").write_text("")
    assert resume(tmp_path) == (1, 1.0)
    assert any("last_checkpoint names no file" in m for m in warnings_logged)


def test_resume_without_a_readable_checkpoint_is_an_error(tmp_path):
    linear_checkpoints(tmp_path, [0, 1])
    for name in ("model_0000000.pth", "model_0000001.pth"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as e:
        resume(tmp_path)
    assert "model_0000000.pth" in str(e.value) and "model_0000001.pth" in str(e.value)


def test_unreadable_model_weights_name_the_file(tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("not a checkpoint")
    for path in (text, tmp_path / "nope.pth"):
        with pytest.raises(CheckpointError, match="MODEL.WEIGHTS") as e:
            resume(tmp_path / "empty_dir", weights=str(path))  # no last_checkpoint: loads MODEL.WEIGHTS
        assert str(path) in str(e.value)


def test_failed_write_keeps_the_complete_file(tmp_path, monkeypatch):
    checkpointer = linear_checkpoints(tmp_path, [0])
    checkpointer.save("model_final", iteration=0)
    before = (tmp_path / "model_final.pth").read_bytes()
    real_save = torch.save

    def crash_halfway(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[:100])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_final", iteration=1)
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert temp_files(tmp_path) == []
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(tmp_path / "model_final.pth").st_mode & 0o777 == 0o666 & ~mask


CHILD = r"""
import io, os, runpy, signal, sys
repo, kill = sys.argv[1], sys.argv[2] == "kill"
sys.path.insert(0, repo)
import torch

real_save, iterations = torch.save, []


def save(obj, f, *args, **kwargs):
    # After the last iteration Detectron2 writes the periodic checkpoint, then model_final: the
    # second save of that iteration writes half of model_final, then the process is killed.
    if kill and isinstance(obj, dict) and "model" in obj:
        iterations.append(obj.get("iteration"))
        if iterations.count(obj.get("iteration")) == 2:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.save = save
sys.argv = ["tools/train_net.py", *sys.argv[3:]]
runpy.run_path(os.path.join(repo, "tools", "train_net.py"), run_name="__main__")
"""


def test_kill_during_and_after_checkpoint_writes(tmp_path, tiny_synthetic_opts):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    out = tmp_path / "out"

    def run(kill, *extra):
        return subprocess.run(
            [sys.executable, str(child), REPO, kill, "--config-file", RETINANET, *extra, *tiny_synthetic_opts,
             *NO_TEST, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)],
            cwd=REPO, env=env_with_repo(), capture_output=True, text=True, timeout=600,
        )

    # kill -9 halfway through writing model_final.pth, after model_0000000/1.pth were written
    proc = run("kill")
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert re.search(r"Saving checkpoint to \S*model_final\.pth", proc.stdout + proc.stderr)
    assert readable(out / "model_0000000.pth") and readable(out / "model_0000001.pth")
    assert not (out / "model_final.pth").exists() or readable(out / "model_final.pth")
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"

    # --resume: no iteration is left to train, and on success model_final.pth is complete
    proc = run("no-kill", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 1
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert temp_files(out) == []


# -------------------------------------------------------------------------- 2. divergence guard
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "MODEL.FPN.OUT_CHANNELS", "64",
         "MODEL.RETINANET.NUM_CONVS", "1", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64"]


class Inject(HookBase):
    """Calls ``fn(model)`` in ``when`` ("before_step" / "after_step") from iteration ``start`` on."""

    def __init__(self, when, start, fn):
        self.when, self.start, self.fn = when, start, fn

    def _maybe(self, when):
        if when == self.when and self.trainer.iter >= self.start:
            with torch.no_grad():
                self.fn(self.trainer.model)

    def before_step(self):
        self._maybe("before_step")

    def after_step(self):
        self._maybe("after_step")


def train_until_stopped(config, opts, out, inject=None, max_iter=4):
    import weakref

    from detectron2.utils.env import seed_all_rng

    cfg = setup_cfg(config, [*opts, *NO_TEST, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "1",
                             "OUTPUT_DIR", str(out)])
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    if inject is not None:  # first, before the guard
        inject.trainer = weakref.proxy(trainer)
        trainer._hooks.insert(0, inject)
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as e:
        trainer.train()
    written = sorted(f for f in os.listdir(out) if f.endswith(".pth"))
    return str(e.value), written


def stopped_at(message):
    return int(re.search(r"iteration=(\d+)", message).group(1))


def test_guard_stops_the_diverging_iou_aware_retinanet(tiny_synthetic_opts, tmp_path):
    """Focal-EIoU RetinaNet at SOLVER.BASE_LR 10. Its box loss drops to exactly
    0 (no box overlaps) while loss_cls and the weights explode, all finite."""
    message, written = train_until_stopped(
        IOU_AWARE, [*tiny_synthetic_opts, "SOLVER.BASE_LR", "10.0", "SOLVER.WARMUP_ITERS", "0",
                    "SOLVER.DIVERGENCE_GUARD.ZERO_BOX_LOSS_ITERS", "2"], tmp_path, max_iter=12)
    assert "loss_box_reg has been exactly 0 for 2 iterations" in message or "infinite or NaN" in message
    it = stopped_at(message)
    assert written == [f"model_{i:07d}.pth" for i in range(it)]  # nothing from the diverged iteration on


def test_guard_zero_box_loss_with_positives(tiny_synthetic_opts, tmp_path, warnings_logged):
    """Every predicted box moved 1000 anchor widths away: Focal-EIoU is exactly 0 (IoU^gamma = 0)."""

    def move_boxes_away(model):
        model.head.bbox_pred.bias.view(-1, 4)[:, 0] = 1000.0

    message, written = train_until_stopped(
        IOU_AWARE, [*tiny_synthetic_opts, *SMALL, "SOLVER.DIVERGENCE_GUARD.ZERO_BOX_LOSS_ITERS", "2"], tmp_path,
        inject=Inject("before_step", 1, move_boxes_away))
    assert "loss_box_reg has been exactly 0 for 2 iterations (up to iteration=2)" in message
    assert "SOLVER.DIVERGENCE_GUARD.ZERO_BOX_LOSS_ITERS" in message
    assert written == ["model_0000000.pth", "model_0000001.pth"]
    assert any("loss_box_reg is exactly 0 at iteration 1" in m for m in warnings_logged)


@pytest.mark.parametrize("config, inject, expected", [
    # stock RetinaNet: an infinite classification bias -> infinite predictions
    (RETINANET, Inject("before_step", 1, lambda m: m.head.cls_score.bias.fill_(float("inf"))),
     "Predictions of head became infinite or NaN at iteration=1"),
    # stock Faster R-CNN: a parameter becomes NaN in an optimizer step
    (RCNN, Inject("after_step", 1, lambda m: m.roi_heads.box_predictor.bbox_pred.weight[0, 0].fill_(float("nan"))),
     "Parameters became infinite or NaN at iteration=1: roi_heads.box_predictor.bbox_pred.weight"),
], ids=["retinanet-predictions", "faster_rcnn-parameters"])
def test_guard_non_finite_predictions_and_parameters(tiny_synthetic_opts, tmp_path, config, inject, expected):
    message, written = train_until_stopped(config, [*tiny_synthetic_opts, *SMALL], tmp_path, inject=inject)
    assert expected in message
    assert written == ["model_0000000.pth"]


def test_guard_config(tiny_synthetic_opts):
    from iou_aware.divergence import DivergenceGuard

    with pytest.raises(ValueError, match="SOLVER.DIVERGENCE_GUARD.ZERO_BOX_LOSS_ITERS"):
        DivergenceGuard(zero_box_loss_iters=-1)
    # a box loss weighted 0 is 0 by construction: not checked
    cfg = setup_cfg(IOU_AWARE, [*tiny_synthetic_opts, "MODEL.IOU_AWARE.BOX_LOSS_WEIGHT", "0"])
    assert "loss_box_reg" in DivergenceGuard.from_config(cfg).unchecked
    assert DivergenceGuard.from_config(setup_cfg(IOU_AWARE, tiny_synthetic_opts)).unchecked == set()
    off = setup_cfg(IOU_AWARE, [*tiny_synthetic_opts, "SOLVER.DIVERGENCE_GUARD.ENABLED", "False"])
    assert not any(isinstance(h, DivergenceGuard) for h in Trainer(off)._hooks)


# --------------------------------------------------------------------------------------- 5. demo
def shapes_image(path, size=(128, 128), seed=0, boxes=()):
    """An RGB image with filled rectangles ``boxes`` ([x, y, w, h]) on a noisy background."""
    rng = np.random.default_rng(seed)
    img = (rng.random((size[1], size[0], 3)) * 60).astype(np.uint8)
    for k, (x, y, w, h) in enumerate(boxes):
        img[int(y):int(y + h), int(x):int(x + w)] = [(200, 60, 60), (60, 200, 60), (60, 60, 200)][k % 3]
    Image.fromarray(img).save(path)


@pytest.mark.parametrize("option, value", [
    ("--confidence-threshold", "2"), ("--confidence-threshold", "-1"), ("--max-images", "-1"),
    ("--scale", "0"), ("--output", "a file"),
])
def test_demo_rejects_bad_arguments(demo_tool, capsys, tmp_path, stock_weights, option, value):
    shapes_image(tmp_path / "a.png")
    args = {"--output": str(tmp_path / "out"), option: value}
    if option == "--output":
        args["--output"] = str(tmp_path / "a.png")
    argv = ["--config-file", RETINANET, "--input", str(tmp_path / "a.png")]
    for k, v in args.items():
        argv += [k, v]
    rc = demo_tool.main([*argv, "--opts", "MODEL.WEIGHTS", stock_weights])
    err = capsys.readouterr().err
    assert rc == 2 and option in err, err


def test_demo_refuses_unusable_weights(demo_tool, capsys, tmp_path, stock_weights):
    shapes_image(tmp_path / "a.png")
    text = tmp_path / "w.pth"
    text.write_text("not weights")
    for config, weights, expected in [(RETINANET, str(text), str(text)),  # unreadable
                                      (IOU_AWARE, stock_weights, "head.iou_pred")]:  # no IoU head weights
        rc = demo_tool.main(["--config-file", config, "--input", str(tmp_path / "a.png"), "--output",
                             str(tmp_path / "out"), "--opts", "MODEL.WEIGHTS", weights])
        err = capsys.readouterr().err
        assert rc == 2 and "MODEL.WEIGHTS" in err and expected in err, err


def test_demo_scale_must_be_auto_or_a_number(demo_tool, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        demo_tool.main(["--config-file", RETINANET, "--input", str(tmp_path), "--output", str(tmp_path),
                        "--scale", "big"])
    assert e.value.code == 2 and "--scale" in capsys.readouterr().err


def test_demo_skips_unreadable_images_and_names_outputs_uniquely(demo_tool, capsys, tmp_path, stock_weights):
    images = tmp_path / "images"
    images.mkdir()
    shapes_image(images / "a.png", boxes=[(10, 10, 40, 30)])
    shapes_image(images / "b.png", seed=1)
    shapes_image(images / "b.jpg", seed=2)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    out = tmp_path / "out"
    argv = ["--config-file", RETINANET, "--input", str(images), str(images / "a.png"), "--output", str(out),
            "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", stock_weights]
    rc = demo_tool.main(argv)
    err = capsys.readouterr().err
    assert rc == 1 and "broken.png" in err
    with open(out / "detections.json") as f:
        dets = json.load(f)
    assert sorted(os.path.basename(p) for p in dets) == ["a.png", "b.jpg", "b.png"]  # a.png given twice: once
    assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == ["a.png", "b_jpg.png", "b_png.png"]
    # 128 px inputs are drawn 4x (short side 512 px); the JSON keeps input coordinates
    assert Image.open(out / "a.png").size == (512, 512)
    assert all(0 <= v <= 128 for r in dets[str(images / "a.png")] for v in r["bbox_xyxy"])

    rc = demo_tool.main([*argv[:-3], "--scale", "1", "--max-images", "1",
                         "--opts", "MODEL.WEIGHTS", stock_weights])
    assert rc == 0 and Image.open(out / "a.png").size == (128, 128)


# ------------------------------------------------------------------- 8. your own COCO-format data
CATEGORIES = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}, {"id": 3, "name": "blue"}]


def write_coco(folder, split, n_images, size=(96, 80), categories=CATEGORIES, first_id=0):
    """``folder/<split>.json`` + ``folder/images/<split>_<i>.png``: 2 boxes per image, written by hand."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        boxes = [[8 + 3 * i, 10, 30, 20], [50, 30 + 2 * i, 24, 34]]
        name = f"{split}_{i}.png"
        shapes_image(folder / "images" / name, size=size, seed=i, boxes=boxes)
        images.append({"id": first_id + i, "file_name": name, "width": size[0], "height": size[1]})
        for k, b in enumerate(boxes):
            annotations.append({"id": len(annotations) + 1, "image_id": first_id + i, "bbox": b,
                                "category_id": categories[(i + k) % len(categories)]["id"],
                                "area": b[2] * b[3], "iscrowd": 0})
    data = {"images": images, "annotations": annotations, "categories": categories}
    (folder / f"{split}.json").write_text(json.dumps(data))
    return data


def spec(folder, name="my_train", split="train"):
    return f"{name}={folder / f'{split}.json'}:{folder / 'images'}"


USE_MY_TRAIN = ['DATASETS.TRAIN', '("my_train",)', "DATASETS.TEST", '("my_train",)',
                "MODEL.RETINANET.NUM_CLASSES", "3"]


def test_coco_files_register_a_dataset(tmp_path):
    data = write_coco(tmp_path, "train", 3)
    cfg = setup_cfg(IOU_AWARE, [*USE_MY_TRAIN, "DATASETS.COCO_FILES", f"['{spec(tmp_path)}']"],
                    coco_files=[spec(tmp_path)])  # the same entry in the config and from --dataset
    assert list(cfg.DATASETS.COCO_FILES) == [spec(tmp_path)]
    dicts = DatasetCatalog.get("my_train")
    assert len(dicts) == 3
    first = dicts[0]["annotations"]
    assert [a["bbox"] for a in first] == [a["bbox"] for a in data["annotations"][:2]]
    assert [a["category_id"] for a in first] == [0, 1]  # category ids 1, 2 -> classes 0, 1
    assert MetadataCatalog.get("my_train").thing_classes == ["red", "green", "blue"]


def dataset_error(tmp_path, *opts, config=IOU_AWARE, specs=None):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        setup_cfg(config, [*USE_MY_TRAIN, *opts], coco_files=specs or [spec(tmp_path)])
    return str(e.value)


def test_coco_files_errors(tmp_path):
    assert "train.json" in dataset_error(tmp_path) and "does not exist" in dataset_error(tmp_path)
    data = write_coco(tmp_path, "train", 3)
    assert "NAME=JSON:IMAGE_ROOT" in dataset_error(tmp_path, specs=["my_train"])
    assert "NAME=JSON:IMAGE_ROOT" in dataset_error(tmp_path, specs=[f"my_train={tmp_path / 'train.json'}"])
    assert "already a registered dataset" in dataset_error(
        tmp_path, specs=[spec(tmp_path, name="synthetic_shapes_val")])

    err = dataset_error(tmp_path, "MODEL.RETINANET.NUM_CLASSES", "2")
    assert "3 categories" in err and "set MODEL.RETINANET.NUM_CLASSES 3" in err
    err = dataset_error(tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", "2", config=os.path.join(
        REPO, "configs/synthetic/faster_rcnn_R18_FPN_focal_eiou.yaml"))
    assert "set MODEL.ROI_HEADS.NUM_CLASSES 3" in err

    def broken(change):
        bad = json.loads(json.dumps(data))
        change(bad)
        (tmp_path / "train.json").write_text(json.dumps(bad))
        return dataset_error(tmp_path)

    err = broken(lambda d: d["annotations"][1].update(category_id=7))
    assert "category_id 7" in err and "train_0.png" in err and "train.json" in err
    err = broken(lambda d: d["annotations"][2].update(bbox=[80, 10, 30, 20]))  # x + w = 110 > 96
    assert "outside the 96x80 image" in err and "train_1.png" in err
    err = broken(lambda d: d["images"][2].update(file_name="missing.png"))
    assert "missing.png" in err and "do not exist under the image folder" in err
    err = broken(lambda d: d.update(categories=[]))
    assert "'categories'" in err

    (tmp_path / "train.json").write_text(json.dumps(data))
    write_coco(tmp_path, "val", 1, categories=CATEGORIES[:2])
    err = dataset_error(tmp_path, "DATASETS.TEST", '("my_val",)',
                        specs=[spec(tmp_path), spec(tmp_path, "my_val", "val")])
    assert "different categories" in err


def readme_block(heading):
    """The ```bash block under ``heading`` in README.md, continuation lines joined."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split(f"\n{heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return block.replace("\\\n", " ")


def test_readme_train_on_your_own_data(tmp_path):
    data = tmp_path / "my_shapes"
    write_coco(data, "train", 6)
    write_coco(data, "val", 2, first_id=100)
    command = readme_block("## Train on your own data").strip()
    assert command.startswith("python tools/train_net.py") and "--dataset my_train=" in command
    command = (command.replace("python ", f"{sys.executable} ", 1).replace("data/my_shapes", str(data))
               .replace("output/my_shapes", str(tmp_path / "output")))
    command += (" SOLVER.MAX_ITER 2 SOLVER.IMS_PER_BATCH 2 DATALOADER.NUM_WORKERS 0 TEST.EVAL_PERIOD 0"
                " MODEL.RETINANET.SCORE_THRESH_TEST 0.0")
    proc = subprocess.run(["bash", "-c", command], cwd=REPO, env=env_with_repo(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "output" / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert any("loss_box_reg" in r for r in records)  # trained
    evals = [r for r in records if "bbox/AP" in r]  # and evaluated on my_val
    assert evals and "bbox/AP50" in evals[-1]
    assert os.path.isfile(tmp_path / "output" / "inference" / "my_val" / "coco_instances_results.json")
    assert readable(tmp_path / "output" / "model_final.pth")
