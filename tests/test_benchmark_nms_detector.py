"""benchmarks/benchmark_nms_detector.py on a fresh RetinaNet with the IoU head, two tiny images.

Checks what the tool writes and that it compares the two suppressor searches of IoU-guided NMS on
real detector candidates (the tool fails if they disagree), never the timings themselves.
"""

import csv

import pytest

from conftest import load_tool

CONFIG = "configs/synthetic/retinanet_R18_FPN_iou_aware.yaml"


@pytest.fixture(scope="module")
def tool():
    return load_tool("benchmark_nms_detector")


def test_rows_per_image_with_both_searches(tool, tiny_synthetic_opts, tmp_path):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "nms_detector.csv"
    # fresh weights score every candidate about 0.01: threshold 0 sends them all to NMS
    returned = tool.main([
        "--config-file", CONFIG, "--images", "2", "--repeats", "1", "--output", str(out),
        *tiny_synthetic_opts, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
    ])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert torch.get_num_threads() == threads  # the tool's one thread does not leak to the caller
    assert len(rows) == len(returned) == 2
    assert [r["image"] for r in rows] == ["0", "1"]
    assert set(rows[0]) == set(tool.FIELDS)
    for r in rows:
        assert int(r["candidates"]) > int(r["kept"]) > 0
        assert int(r["padded_pairs"]) >= int(r["candidates"]) - int(r["kept"])
        assert r["search"] in ("dense", "grid")
        for name in ("torchvision_ms", "dense_ms", "grid_ms", "default_ms"):
            assert float(r[name]) > 0


def test_the_searches_are_really_forced(tool, tiny_synthetic_opts):
    # search_limit must make iou_guided_nms take the named search on the same input
    cfg = tool.setup_cfg(CONFIG, [*tiny_synthetic_opts, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    (image, nms_args), = tool.capture_nms_inputs(cfg, None, 1)
    assert image == 0
    for name, limit in tool.SEARCHES.items():
        if limit is None:
            continue
        with tool.search_limit(limit):
            assert tool.search_chosen(nms_args) == name


def test_config_without_iou_head_is_refused(tool, tiny_synthetic_opts, tmp_path):
    with pytest.raises(ValueError, match="IOU_HEAD.ENABLED True"):
        tool.main([
            "--config-file", "configs/synthetic/retinanet_R18_FPN_focal_eiou.yaml", "--images", "1",
            "--output", str(tmp_path / "x.csv"), *tiny_synthetic_opts,
        ])
