"""tools/compare_nms.py and iou_aware.evaluation.nms_comparison: the same weights, several NMS types."""

import csv
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from iou_aware.engine import Trainer, setup_cfg
from iou_aware.evaluation.nms_comparison import compare_nms_types, format_nms_table, write_nms_comparison

IOU_AWARE = "configs/synthetic/retinanet_R18_FPN_iou_aware.yaml"
STOCK = "configs/synthetic/retinanet_R18_FPN.yaml"


@pytest.fixture(scope="module")
def trained(repo_root, tiny_synthetic_opts, tmp_path_factory):
    """A 2-iteration IoU-aware RetinaNet (with IoU head) and its config; score threshold 0 so that
    every NMS type sees candidates."""
    out = tmp_path_factory.mktemp("nms_cmp")
    opts = [*tiny_synthetic_opts, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out),
            "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    torch.manual_seed(0)
    cfg = setup_cfg(os.path.join(repo_root, IOU_AWARE), opts)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, opts, str(out / "model_final.pth")


def test_each_row_is_the_evaluation_of_that_nms_type(repo_root, trained):
    cfg, opts, weights = trained
    rows = compare_nms_types(cfg, weights, ["standard", "score_fused"])
    assert [r["nms"] for r in rows] == ["standard", "score_fused"]
    for r in rows:
        assert "skipped" not in r
        assert r["ms_per_image"] > 0
        for key in ("AP", "AP50", "AP75", "AP90", "mAP75:95"):
            assert 0.0 <= r[key] <= 100.0, (r["nms"], key, r[key])
    # the standard row is what Detectron2's own test loop reports for the same weights and type
    std_cfg = setup_cfg(os.path.join(repo_root, IOU_AWARE),
                        [*opts, "MODEL.IOU_AWARE.NMS.TYPE", "standard", "MODEL.WEIGHTS", weights])
    model = Trainer.build_model(std_cfg)
    DetectionCheckpointer(model).load(weights)
    expected = Trainer.test(std_cfg, model)["bbox"]
    for key in ("AP", "AP75", "AP90"):
        assert rows[0][key] == pytest.approx(expected[key], abs=1e-9) or (
            math.isnan(rows[0][key]) and math.isnan(expected[key])
        ), key


def test_type_the_model_cannot_run_is_skipped_with_the_key(repo_root, tiny_synthetic_opts, tmp_path):
    opts = [*tiny_synthetic_opts, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path),
            "MODEL.META_ARCHITECTURE", "IoUAwareRetinaNet"]
    cfg = setup_cfg(os.path.join(repo_root, STOCK), opts)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    rows = compare_nms_types(cfg, str(tmp_path / "model_final.pth"), ["iou_guided"])
    assert "IOU_HEAD.ENABLED" in rows[0]["skipped"]
    table = format_nms_table(rows)
    assert "| iou_guided | skipped: " in table
    paths = write_nms_comparison(rows, str(tmp_path / "cmp"))
    with open(paths["csv"]) as f:
        assert next(csv.DictReader(f))["nms"] == "iou_guided"


def test_cli_prints_the_table_and_writes_files(repo_root, trained, tmp_path):
    _, opts, weights = trained
    proc = subprocess.run(
        [sys.executable, "tools/compare_nms.py", "--config-file", IOU_AWARE, "--types", "standard",
         "iou_guided", "--output", str(tmp_path), *opts, "MODEL.WEIGHTS", weights],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| NMS | AP | AP50 | AP75 | AP90 |" in proc.stdout
    assert "| standard |" in proc.stdout and "| iou_guided |" in proc.stdout
    assert os.path.isfile(tmp_path / "nms_comparison.md") and os.path.isfile(tmp_path / "nms_comparison.csv")
    # missing weights: a clear error naming MODEL.WEIGHTS, exit 2
    proc = subprocess.run(
        [sys.executable, "tools/compare_nms.py", "--config-file", IOU_AWARE, *opts,
         "MODEL.WEIGHTS", str(tmp_path / "nope.pth")],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2 and "MODEL.WEIGHTS" in proc.stderr
