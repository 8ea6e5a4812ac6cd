"""benchmarks/benchmark_training.py in quick mode: one RetinaNet method against stock RetinaNet.

Checks the shape of what the tool writes (rows, columns, finite positive times), never the timings
themselves. Uses the session's tiny synthetic dataset (``tiny_synthetic_opts``), so it does not
generate the full one.
"""

import csv
import math
import os

import pytest

from conftest import load_tool

METHOD_CONFIG = "configs/synthetic/retinanet_R18_FPN_iou_balanced.yaml"
EXPECTED_COLUMNS = {
    "method", "detector", "config", "device", "threads", "clock", "batch", "rounds", "infer_images",
    "train_ms", "train_ratio", "train_ratio_q25", "train_ratio_q75", "train_wall_ms",
    "train_wall_ratio", "loss_ms", "infer_ms", "infer_ratio", "infer_ratio_q25", "infer_ratio_q75",
    "infer_wall_ms", "infer_wall_ratio", "post_ms", "peak_mb", "peak_ratio", "fwd_bwd_peak_mb",
    "fwd_bwd_peak_ratio", "params_m", "extra_params",
}
POSITIVE = ("train_ms", "train_wall_ms", "loss_ms", "infer_ms", "infer_wall_ms", "post_ms", "params_m",
            "train_ratio", "infer_ratio", "train_ratio_q25", "train_ratio_q75", "infer_ratio_q25",
            "infer_ratio_q75", "train_wall_ratio", "infer_wall_ratio")


@pytest.fixture(scope="module")
def tool():
    return load_tool("benchmark_training")


@pytest.fixture(scope="module")
def quick_run(tool, tiny_synthetic_opts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "training.csv"
    returned = tool.main(["--quick", "--configs", METHOD_CONFIG, "--output", str(out), *tiny_synthetic_opts])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    return out, rows, returned


def test_csv_rows_and_columns(quick_run):
    out, rows, returned = quick_run
    assert set(rows[0]) == EXPECTED_COLUMNS
    assert [(r["method"], r["detector"]) for r in rows] == [
        ("stock", "RetinaNet"), ("iou_balanced", "RetinaNet"),
    ]
    assert [r["method"] for r in returned] == [r["method"] for r in rows]
    assert rows[1]["config"] == METHOD_CONFIG
    # the IoU-balanced losses only reweight: no module is added to the stock detector
    assert [int(r["extra_params"]) for r in rows] == [0, 0]
    for r in rows:
        assert r["device"] == "cpu" and r["threads"] == "1" and r["clock"] == "cpu"
        assert int(r["batch"]) == 2 and int(r["rounds"]) == 2 and int(r["infer_images"]) == 2


def test_times_finite_and_positive(quick_run):
    _, rows, _ = quick_run
    for r in rows:
        for key in POSITIVE:
            value = float(r[key])
            assert math.isfinite(value) and value > 0, (r["method"], key, r[key])
    stock = rows[0]
    for key in ("train_ratio", "infer_ratio", "train_ratio_q25", "train_ratio_q75"):
        assert float(stock[key]) == pytest.approx(1.0)


def test_memory_columns(quick_run):
    _, rows, _ = quick_run
    # "n/a" is allowed per row (the profiler's event tree is private API), but a tool that measures
    # no memory at all with the pinned torch is broken
    assert any(r["peak_mb"] != "n/a" for r in rows)
    for r in rows:
        if r["peak_mb"] == "n/a":
            assert r["peak_ratio"] == "n/a"
            continue
        peak, fwd_bwd = float(r["peak_mb"]), float(r["fwd_bwd_peak_mb"])
        assert math.isfinite(peak) and 0 < fwd_bwd <= peak
        # at least the gradients of every parameter (float32) are allocated during an iteration
        assert fwd_bwd >= float(r["params_m"]) * 1e6 * 4 / 2**20 * 0.9


def test_markdown_written(quick_run):
    out, rows, _ = quick_run
    md = os.path.splitext(str(out))[0] + ".md"
    text = open(md).read()
    assert "| method | detector |" in text
    for r in rows:
        assert f"| {r['method']} | {r['detector']} |" in text


def test_method_names(tool):
    assert tool.method_name("configs/synthetic/retinanet_R18_FPN.yaml") == "stock"
    assert tool.method_name("configs/synthetic/faster_rcnn_R18_FPN_smooth_eiou_iouhead.yaml") == "smooth_eiou_iouhead"
    assert tool.method_name("configs/synthetic/retinanet_R18_FPN_alpha_iou.yaml") == "alpha_iou"


def test_load_matching_weights(tool, tmp_path):
    import torch

    source = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    target = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))  # last layer differs
    path = tmp_path / "model_final.pth"
    torch.save({"model": {**source.state_dict(), "extra.weight": torch.zeros(1)}}, path)
    before = target[1].weight.clone()
    assert tool.load_matching_weights(target, str(path), log=lambda m: None) == 2
    assert torch.equal(target[0].weight, source[0].weight) and torch.equal(target[0].bias, source[0].bias)
    assert torch.equal(target[1].weight, before)  # shape mismatch: left as it was
    torch.save({"other.weight": torch.zeros(1)}, path)  # a bare state_dict with nothing in common
    with pytest.raises(SystemExit, match="no tensor matches"):
        tool.load_matching_weights(target, str(path), log=lambda m: None)


def test_fcos_method_against_stock_fcos(tool, tiny_synthetic_opts, tmp_path):
    # the one-stage configs are compared with IoUAwareFCOS at default keys (Detectron2's FCOS);
    # Varifocal Loss drops the centerness branch: one 3x3 conv of FPN.OUT_CHANNELS inputs, 1 output
    config = "configs/synthetic/fcos_R18_FPN_varifocal.yaml"
    assert tool.method_name(config) == "varifocal"
    assert tool.stock_config_for(config, "FCOS") == "configs/synthetic/fcos_R18_FPN.yaml"
    out = tmp_path / "training.csv"
    rows = tool.main(["--quick", "--configs", config, "--output", str(out), *tiny_synthetic_opts])
    assert [(r["method"], r["detector"]) for r in rows] == [("stock", "FCOS"), ("varifocal", "FCOS")]
    from iou_aware.engine import setup_cfg

    channels = setup_cfg(config, list(tiny_synthetic_opts)).MODEL.FPN.OUT_CHANNELS
    assert [int(r["extra_params"]) for r in rows] == [0, -(9 * channels + 1)]
