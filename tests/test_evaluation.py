"""Tests of iou_aware.evaluation: AP per IoU threshold, score/IoU consistency, edge cases, plot tool.

Tiny COCO-format datasets are written to tmp_path and registered under unique names; detections are
fed to the evaluator as Detectron2 ``Instances`` through ``process``/``evaluate`` (no model).
"""

import contextlib
import io
import json
import logging
import math
import os
import uuid
from collections import defaultdict

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from conftest import load_tool
from iou_aware.evaluation import (
    IoUAwareCOCOEvaluator,
    average_inconsistency_coefficient,
    consistency_metrics,
    iou_binned_means,
    match_detections,
    match_results_to_gt,
    pearson,
    rankdata,
    spearman,
)

THRESHOLDS = [50, 55, 60, 65, 70, 75, 80, 85, 90, 95]
EVAL_LOGGER = "detectron2.evaluation.coco_evaluation"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def d2_log(caplog):
    """Capture the evaluator's logger even when Detectron2's setup_logger disabled propagation."""
    lg = logging.getLogger(EVAL_LOGGER)
    old_level = lg.level
    lg.setLevel(logging.INFO)
    lg.addHandler(caplog.handler)
    yield caplog
    lg.removeHandler(caplog.handler)
    lg.setLevel(old_level)


def _warnings(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def _write_dataset(tmp_path, images, annotations, categories, with_annotations=True):
    """Write a COCO json and register its metadata under a unique name; returns (name, path)."""
    data = {
        "images": [{"id": i, "width": 300, "height": 300, "file_name": f"{i}.jpg"} for i in images],
        "categories": [{"id": c, "name": n} for c, n in categories],
    }
    if with_annotations:
        anns = []
        for k, a in enumerate(annotations, start=1):
            x, y, w, h = a["bbox"]
            anns.append(
                {
                    "id": a.get("id", k),
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(a.get("iscrowd", 0)),
                }
            )
        data["annotations"] = anns
    name = f"test_eval_{uuid.uuid4().hex[:10]}"
    path = str(tmp_path / f"{name}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    MetadataCatalog.get(name).set(
        json_file=path,
        thing_classes=[n for _, n in categories],
        thing_dataset_id_to_contiguous_id={c: i for i, (c, _) in enumerate(categories)},
    )
    return name, path


def _instances(dets, contiguous, with_pred_iou=False):
    """``dets``: list of dicts with xywh ``bbox``, ``score``, ``category_id`` (dataset id)."""
    inst = Instances((300, 300))
    boxes = [
        [d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
        for d in dets
    ]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
    inst.pred_classes = torch.tensor(
        [contiguous[d["category_id"]] for d in dets], dtype=torch.int64
    )
    if with_pred_iou:
        inst.pred_ious = torch.tensor([d["pred_iou"] for d in dets], dtype=torch.float32)
    return inst


def _evaluate(name, out_dir, images, dets, with_pred_iou=False, **kwargs):
    """Feed per-image detections through process() and return evaluate()'s results."""
    ev = IoUAwareCOCOEvaluator(name, distributed=False, output_dir=str(out_dir), **kwargs)
    ev.reset()
    contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    for img in images:
        img_dets = [d for d in dets if d["image_id"] == img]
        ev.process(
            [{"image_id": img}], [{"instances": _instances(img_dets, contiguous, with_pred_iou)}]
        )
    with contextlib.redirect_stdout(io.StringIO()):
        return ev.evaluate()


def _box_iou_xywh(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# ---------------------------------------------------------------------------------------------
# (1) AP at each IoU threshold == pycocotools run directly on the same detection file
# ---------------------------------------------------------------------------------------------

CATEGORIES = [(1, "circle"), (3, "square"), (7, "triangle")]


def _random_dataset(seed=0):
    """Images 1-8; 3 categories; a crowd region in image 2 listed *before* its category's regular
    gts (so COCO's ignore-last reordering of gts matters); images 6 and 7 without detections;
    image 8 without ground truth but with false positives."""
    rng = np.random.default_rng(seed)
    images = list(range(1, 9))
    anns, dets = [], []
    anns.append({"image_id": 2, "category_id": 1, "bbox": [150, 150, 120, 120], "iscrowd": 1})
    for img in images[:7]:
        for cat, _ in CATEGORIES:
            for _ in range(int(rng.integers(0, 4))):
                w, h = rng.uniform(10, 80, size=2)
                x, y = rng.uniform(0, 140, size=2)
                anns.append({"image_id": img, "category_id": cat, "bbox": [x, y, w, h]})
    anns.append({"image_id": 2, "category_id": 1, "bbox": [160, 160, 40, 40]})  # inside the crowd
    for a in anns:
        if a["image_id"] in (6, 7) or a.get("iscrowd"):
            continue
        for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per gt, jittered
            x, y, w, h = a["bbox"]
            j = rng.normal(0, rng.choice([0.003, 0.03, 0.1]), size=4) * np.array([w, h, w, h])
            dets.append(
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    "bbox": [x + j[0], y + j[1], max(2.0, w + j[2]), max(2.0, h + j[3])],
                    "score": float(rng.uniform(0.05, 1.0)),
                }
            )
    for img in (1, 2, 3, 8):  # false positives, some of them in the crowd region of image 2
        for _ in range(3):
            cat = CATEGORIES[int(rng.integers(0, 3))][0]
            x, y = rng.uniform(150, 250, size=2)
            dets.append(
                {
                    "image_id": img,
                    "category_id": cat,
                    "bbox": [x, y, 20.0, 20.0],
                    "score": float(rng.uniform(0, 1)),
                }
            )
    dets.append(
        {"image_id": 2, "category_id": 1, "bbox": [200, 200, 30, 30], "score": 0.99}
    )  # on crowd
    return images, anns, dets


def _cocoeval_direct(gt_path, res_path, iou_thrs, cat_ids=None):
    """AP (percent) from an independent pycocotools run restricted to the given thresholds."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes(res_path)
        E = COCOeval(gt, dt, "bbox")
        E.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        if cat_ids is not None:
            E.params.catIds = cat_ids
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E.stats[0] * 100 if E.stats[0] >= 0 else float("nan")


def test_ap_per_threshold_matches_pycocotools(tmp_path):
    images, anns, dets = _random_dataset()
    name, gt_path = _write_dataset(tmp_path, images, anns, CATEGORIES)
    res = _evaluate(name, tmp_path / "out", images, dets, per_category_keys=True)["bbox"]

    # same output files as COCOEvaluator
    res_path = str(tmp_path / "out" / "coco_instances_results.json")
    assert os.path.isfile(res_path)
    assert os.path.isfile(tmp_path / "out" / "instances_predictions.pth")
    with open(res_path) as f:
        assert len(json.load(f)) == len(dets)

    default_thrs = np.linspace(0.5, 0.95, 10)  # pycocotools' own iouThrs, to hit the same floats
    for i, t in enumerate(THRESHOLDS):
        assert res[f"AP{t}"] == pytest.approx(
            _cocoeval_direct(gt_path, res_path, [default_thrs[i]]), abs=1e-9
        )
    assert res["mAP75:95"] == pytest.approx(
        _cocoeval_direct(gt_path, res_path, default_thrs[5:]), abs=1e-9
    )
    # consistent with Detectron2's own keys from COCOeval.stats
    assert np.mean([res[f"AP{t}"] for t in THRESHOLDS]) == pytest.approx(res["AP"], abs=1e-9)
    # per category, at every threshold and over 0.75:0.95
    for cat, cname in CATEGORIES:
        for i, t in enumerate(THRESHOLDS):
            expected = _cocoeval_direct(gt_path, res_path, [default_thrs[i]], cat_ids=[cat])
            assert res[f"AP{t}-{cname}"] == pytest.approx(expected, abs=1e-9)
        expected = _cocoeval_direct(gt_path, res_path, default_thrs[5:], cat_ids=[cat])
        assert res[f"mAP75:95-{cname}"] == pytest.approx(expected, abs=1e-9)
        assert res[f"AP50-{cname}"] <= 100.0
    # sanity: AP falls with the threshold on jittered boxes, and the values are not degenerate
    assert 0 < res["AP95"] < res["AP50"] <= 100


def _reference_matches(gt_path, res_path, thr=0.5, max_dets=100):
    """An independent implementation of COCO's greedy matching (bbox, area 'all'), for checking."""
    with open(gt_path) as f:
        gt = json.load(f)
    with open(res_path) as f:
        dts = json.load(f)
    gts_by = defaultdict(list)
    for a in gt["annotations"]:
        gts_by[a["image_id"], a["category_id"]].append(a)
    dts_by = defaultdict(list)
    for d in dts:
        dts_by[d["image_id"], d["category_id"]].append(d)
    out = {}
    for key, ds in dts_by.items():
        ds = sorted(ds, key=lambda d: -d["score"])[
            :max_dets
        ]  # python sort is stable like mergesort
        gs = sorted(gts_by.get(key, []), key=lambda g: g["iscrowd"])  # crowd (ignored) last
        taken = set()
        for d in ds:
            best, best_iou = None, min(thr, 1 - 1e-10)
            for j, g in enumerate(gs):
                if j in taken and not g["iscrowd"]:
                    continue
                if best is not None and not gs[best]["iscrowd"] and g["iscrowd"]:
                    break
                if g["iscrowd"]:  # crowd IoU: intersection over the detection's area
                    x1, y1 = max(d["bbox"][0], g["bbox"][0]), max(d["bbox"][1], g["bbox"][1])
                    x2 = min(d["bbox"][0] + d["bbox"][2], g["bbox"][0] + g["bbox"][2])
                    y2 = min(d["bbox"][1] + d["bbox"][3], g["bbox"][1] + g["bbox"][3])
                    iou = max(0, x2 - x1) * max(0, y2 - y1) / (d["bbox"][2] * d["bbox"][3])
                else:
                    iou = _box_iou_xywh(d["bbox"], g["bbox"])
                if iou < best_iou:
                    continue
                best, best_iou = j, iou
            if best is not None:
                taken.add(best)
                if not gs[best]["iscrowd"]:
                    out[(key[0], d["score"])] = (gs[best]["id"], best_iou)
    return out


def test_match_detections_against_reference_and_fast_impl_fallback(tmp_path):
    images, anns, dets = _random_dataset(seed=1)
    name, gt_path = _write_dataset(tmp_path, images, anns, CATEGORIES)
    res = _evaluate(name, tmp_path / "out", images, dets)["bbox"]
    res_path = str(tmp_path / "out" / "coco_instances_results.json")
    with open(res_path) as f:
        results = json.load(f)

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        E = COCOeval(gt, gt.loadRes(results), "bbox")
        E.evaluate()
    m = match_detections(E)
    ref = _reference_matches(gt_path, res_path)
    got = {
        (int(i), float(s)): (int(g), float(u))
        for i, s, g, u in zip(m.image_ids, m.scores, m.gt_ids, m.ious)
    }
    assert len(got) == len(m) and len(m) > 10
    assert set(got) == set(ref)
    for k, (g, u) in got.items():
        assert g == ref[k][0]
        assert u == pytest.approx(ref[k][1], abs=1e-9)
    # the detection on the crowd region is matched to the crowd by COCO, and left out here
    crowd_id = next(a["id"] for a in gt.dataset["annotations"] if a["iscrowd"])
    on_crowd = next(
        d["id"] for d in E.cocoDt.dataset["annotations"] if d["bbox"] == [200.0, 200.0, 30.0, 30.0]
    )
    e = next(
        e
        for e in E.evalImgs
        if e and e["image_id"] == 2 and e["category_id"] == 1 and e["aRng"] == [0, 1e10]
    )
    d = e["dtIds"].index(on_crowd)
    assert e["dtMatches"][0, d] == crowd_id and e["dtIgnore"][0, d]
    assert crowd_id not in set(m.gt_ids.tolist()) and on_crowd not in set(m.dt_ids.tolist())
    # ... while regular gts listed after the crowd in the same image/category are matched, with
    # their IoU read from the right column although COCO reorders the gts (crowd last)
    assert e["gtIds"][-1] == crowd_id and gt.getAnnIds(imgIds=2, catIds=1)[0] == crowd_id
    assert np.any((m.image_ids == 2) & (m.category_ids == 1))

    # Detectron2's COCOeval_opt keeps no evalImgs: the fallback re-runs COCO's evaluateImg
    E.evalImgs = defaultdict(list)
    m2 = match_detections(E)
    for field in ("image_ids", "category_ids", "dt_ids", "gt_ids", "scores", "ious"):
        np.testing.assert_array_equal(getattr(m2, field), getattr(m, field))
    assert len(E.params.iouThrs) == 10  # params restored

    # the plot tool's path (match_results_to_gt) gives the numbers the evaluator reported
    m3 = match_results_to_gt(gt, results)
    expected = consistency_metrics(m3.scores, m3.ious)
    np.testing.assert_array_equal(np.sort(m3.dt_ids), np.sort(m.dt_ids))
    for k, v in expected.items():
        assert res[k] == pytest.approx(v, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# (2) + (3) consistency metrics on hand-made detections, worked out by hand
# ---------------------------------------------------------------------------------------------

HAND_CATEGORIES = [(1, "cat"), (2, "dog")]
HAND_IMAGES = [1, 2, 3, 4, 5]
HAND_ANNS = [
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},  # A
    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 0, 10, 10]},  # B
    {"id": 3, "image_id": 1, "category_id": 1, "bbox": [200, 0, 50, 50], "iscrowd": 1},  # C (crowd)
    {"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10]},  # D
    {"id": 5, "image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 20]},  # E
    {"id": 6, "image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 10]},  # F
    {"id": 7, "image_id": 3, "category_id": 2, "bbox": [30, 30, 10, 10]},  # G
    {"id": 8, "image_id": 5, "category_id": 2, "bbox": [0, 0, 10, 10]},  # H (never detected)
]
# Scores and predicted IoUs are dyadic so that float32 storage keeps them exact.
HAND_DETS = [
    # image 1 -- A: IoU 55/100 = 11/20 -> matched (greedy: the highest score takes A)
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 5.5], "score": 0.875, "pred_iou": 0.5},
    # A again: IoU 95/100 = 19/20 but A is taken by the 0.875 detection -> unmatched, excluded
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9.5], "score": 0.5, "pred_iou": 0.25},
    # B: IoU 85/100 = 17/20 -> matched
    {"image_id": 1, "category_id": 1, "bbox": [100, 0, 10, 8.5], "score": 0.75, "pred_iou": 0.875},
    # inside the crowd region C: crowd IoU = 100/100 (dt area) -> matched to crowd, ignored, excluded
    {"image_id": 1, "category_id": 1, "bbox": [210, 10, 10, 10], "score": 0.625, "pred_iou": 0.25},
    # far from everything: IoU 0 -> unmatched, excluded
    {
        "image_id": 1,
        "category_id": 1,
        "bbox": [150, 150, 10, 10],
        "score": 0.9375,
        "pred_iou": 0.25,
    },
    # image 2 -- D: IoU 75/100 = 3/4 -> matched
    {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 7.5], "score": 0.25, "pred_iou": 0.75},
    # E: IoU 160/400 = 2/5 < 1/2 -> low-IoU, unmatched at 0.5, excluded
    {"image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 8], "score": 0.375, "pred_iou": 0.25},
    # on D but class "cat": no cat ground truth there (IoU 0 with E) -> unmatched, excluded
    {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8125, "pred_iou": 0.25},
    # image 3 -- F: IoU 65/100 = 13/20 -> matched
    {"image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 6.5], "score": 0.625, "pred_iou": 0.625},
    # G: IoU 95/100 = 19/20 -> matched
    {"image_id": 3, "category_id": 2, "bbox": [30, 30, 10, 9.5], "score": 0.75, "pred_iou": 0.875},
    # image 4 has no ground truth: false positive, excluded; image 5 has no detection
    {"image_id": 4, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.5, "pred_iou": 0.25},
]
# The five matched detections (score, IoU, predicted IoU):
#   (7/8, 11/20, 1/2), (3/4, 17/20, 7/8), (1/4, 3/4, 3/4), (5/8, 13/20, 5/8), (3/4, 19/20, 7/8)
#
# AIC = mean |score - IoU| = (0.325 + 0.1 + 0.5 + 0.025 + 0.2) / 5 = 1.15 / 5 = 0.23
#
# Pearson(score, IoU): mean score 13/20, mean IoU 3/4;
#   40*(score - mean) = [9, 4, -16, -1, 4],  10*(IoU - mean) = [-2, 1, 0, -1, 2]
#   sum of products -5, sums of squares 370 and 10  ->  r = -5 / sqrt(3700) = -1 / sqrt(148)
# Spearman(score, IoU): score ranks [5, 3.5, 1, 2, 3.5] (tie 3/4 -> 3.5), IoU ranks [1, 4, 3, 2, 5];
#   centred: [2, .5, -2, -1, .5] and [-2, 1, 0, -1, 2]; products sum -1.5, squares 9.5 and 10
#   -> rho = -1.5 / sqrt(95)
# Pearson(pred IoU, IoU): mean pred 29/40; 40*(pred - mean) = [-9, 6, 1, -4, 6];
#   products with [-2, 1, 0, -1, 2] sum 40, squares 170 and 10 -> r = 40 / sqrt(1700) = 4 / sqrt(17)
# Spearman(pred IoU, IoU): pred ranks [1, 4.5, 3, 2, 4.5]; centred [-2, 1.5, 0, -1, 1.5];
#   products sum 9.5, squares 9.5 and 10 -> rho = 9.5 / sqrt(95) = sqrt(0.95)
HAND_EXPECTED = {
    "AIC": 0.23,
    "score_iou_pearson": -1 / math.sqrt(148),
    "score_iou_spearman": -1.5 / math.sqrt(95),
    "pred_iou_pearson": 4 / math.sqrt(17),
    "pred_iou_spearman": math.sqrt(0.95),
}


@pytest.mark.parametrize("with_pred_iou", [False, True])
def test_consistency_on_hand_made_detections(tmp_path, d2_log, with_pred_iou):
    name, gt_path = _write_dataset(tmp_path, HAND_IMAGES, HAND_ANNS, HAND_CATEGORIES)
    res = _evaluate(name, tmp_path / "out", HAND_IMAGES, HAND_DETS, with_pred_iou=with_pred_iou)[
        "bbox"
    ]

    for key in ("AIC", "score_iou_pearson", "score_iou_spearman"):
        assert res[key] == pytest.approx(HAND_EXPECTED[key], abs=1e-9), key
    if with_pred_iou:
        for key in ("pred_iou_pearson", "pred_iou_spearman"):
            assert res[key] == pytest.approx(HAND_EXPECTED[key], abs=1e-9), key
    else:
        assert "pred_iou_pearson" not in res and "pred_iou_spearman" not in res
    for t in THRESHOLDS:
        assert math.isfinite(res[f"AP{t}"])
    assert math.isfinite(res["mAP75:95"])

    # the saved results stay valid COCO results, with the predicted IoU kept per detection
    res_path = tmp_path / "out" / "coco_instances_results.json"
    with open(res_path) as f:
        saved = json.load(f)
    assert ("pred_iou" in saved[0]) == with_pred_iou
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
    m = match_results_to_gt(gt, saved)
    order = np.argsort(m.gt_ids)  # gt ids A=1, B=2, D=4, F=6, G=7
    np.testing.assert_array_equal(m.gt_ids[order], [1, 2, 4, 6, 7])
    np.testing.assert_allclose(
        m.ious[order], [11 / 20, 17 / 20, 3 / 4, 13 / 20, 19 / 20], atol=1e-12
    )
    np.testing.assert_allclose(m.scores[order], [7 / 8, 3 / 4, 1 / 4, 5 / 8, 3 / 4])
    assert m.num_detections == len(HAND_DETS)
    if with_pred_iou:
        np.testing.assert_allclose(m.pred_ious[order], [1 / 2, 7 / 8, 3 / 4, 5 / 8, 7 / 8])
    else:
        assert m.pred_ious is None

    # binned table: one matched detection per IoU bin, mean score = its score
    bins = iou_binned_means(m.ious, m.scores)
    assert [b["count"] for b in bins] == [1, 1, 1, 1, 1]
    assert [b["mean_score"] for b in bins] == [7 / 8, 5 / 8, 1 / 4, 3 / 4, 3 / 4]
    log = d2_log.text
    assert "AP at each IoU threshold" in log and "mAP75:95" in log and "AP95" in log
    assert "Per-category bbox AP at each IoU threshold" in log
    assert "mean score per IoU bin" in log and "[0.90, 1.00]" in log
    assert "5 of 11 detections matched" in log
    assert ("mean pred IoU" in log) == with_pred_iou


# ---------------------------------------------------------------------------------------------
# consistency functions
# ---------------------------------------------------------------------------------------------


def test_consistency_functions():
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 3.0, 2.0, 3.0]), [4.0, 1.0, 4.0, 2.0, 4.0])
    np.testing.assert_array_equal(rankdata([]), [])
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # monotone but not linear: Spearman 1, Pearson below 1
    x = [0.1, 0.2, 0.3, 0.4]
    y = [0.01, 0.04, 0.09, 0.9]
    assert spearman(x, y) == pytest.approx(1.0) and pearson(x, y) < 0.99
    # undefined cases are nan, not errors
    assert math.isnan(pearson([], []))
    assert math.isnan(pearson([0.5], [0.7]))
    assert math.isnan(pearson([0.5, 0.5], [0.6, 0.7]))
    assert math.isnan(spearman([0.5, 0.5], [0.6, 0.7]))
    assert math.isnan(average_inconsistency_coefficient([], []))
    assert average_inconsistency_coefficient([0.9, 0.5], [0.6, 0.7]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pearson([1, 2], [1, 2, 3])
    # bins: [0.5, 0.6), ..., [0.9, 1.0] (1.0 in the last bin), out-of-range IoUs dropped
    bins = iou_binned_means(
        [0.5, 0.55, 0.6, 0.99, 1.0, 0.3], [0.2, 0.4, 0.5, 0.8, 1.0, 0.9], [0.1] * 6
    )
    assert [b["count"] for b in bins] == [2, 1, 0, 0, 2]
    assert bins[0]["mean_score"] == pytest.approx(0.3) and bins[4]["mean_score"] == pytest.approx(
        0.9
    )
    assert math.isnan(bins[2]["mean_score"]) and math.isnan(bins[2]["mean_pred_iou"])
    assert set(consistency_metrics([0.5, 0.7], [0.6, 0.9])) == {
        "score_iou_pearson",
        "score_iou_spearman",
        "AIC",
    }


# ---------------------------------------------------------------------------------------------
# (4) empty predictions, datasets without annotations, too few matches
# ---------------------------------------------------------------------------------------------


def test_no_predictions_received_warns(tmp_path, d2_log):
    name, _ = _write_dataset(tmp_path, HAND_IMAGES, HAND_ANNS, HAND_CATEGORIES)
    ev = IoUAwareCOCOEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    ev.reset()
    assert ev.evaluate() == {}
    assert "Did not receive valid predictions" in _warnings(d2_log)


def test_empty_detections_give_nan_and_warn(tmp_path, d2_log):
    name, _ = _write_dataset(tmp_path, HAND_IMAGES, HAND_ANNS, HAND_CATEGORIES)
    res = _evaluate(name, tmp_path / "out", HAND_IMAGES, [])["bbox"]
    for key in [f"AP{t}" for t in THRESHOLDS] + [
        "mAP75:95",
        "score_iou_pearson",
        "score_iou_spearman",
        "AIC",
    ]:
        assert math.isnan(res[key]), key
        float(res[key])  # EvalHook's check
    warnings = _warnings(d2_log)
    assert "no bbox predictions" in warnings and "consistency is nan" in warnings


def test_dataset_without_annotations_warns(tmp_path, d2_log):
    name, _ = _write_dataset(tmp_path, HAND_IMAGES, [], HAND_CATEGORIES, with_annotations=False)
    res = _evaluate(name, tmp_path / "out", HAND_IMAGES, HAND_DETS)
    assert res == {}
    assert os.path.isfile(tmp_path / "out" / "coco_instances_results.json")
    assert "has no annotations" in _warnings(d2_log)


def test_dataset_with_empty_annotation_list_warns(tmp_path, d2_log):
    name, _ = _write_dataset(tmp_path, HAND_IMAGES, [], HAND_CATEGORIES, with_annotations=True)
    res = _evaluate(name, tmp_path / "out", HAND_IMAGES, HAND_DETS, with_pred_iou=True)["bbox"]
    for key in ["AP50", "AP95", "mAP75:95", "score_iou_pearson", "AIC", "pred_iou_pearson"]:
        assert math.isnan(res[key]), key
    warnings = _warnings(d2_log)
    assert "no (non-crowd) ground truth" in warnings
    assert "no detection is matched" in warnings


def test_single_match_gives_nan_correlation_but_finite_aic(tmp_path, d2_log):
    name, _ = _write_dataset(tmp_path, HAND_IMAGES, HAND_ANNS, HAND_CATEGORIES)
    dets = [HAND_DETS[2], HAND_DETS[4]]  # B matched (IoU 17/20, score 3/4) + one false positive
    res = _evaluate(name, tmp_path / "out", HAND_IMAGES, dets)["bbox"]
    assert res["AIC"] == pytest.approx(0.1)  # |3/4 - 17/20|
    assert math.isnan(res["score_iou_pearson"]) and math.isnan(res["score_iou_spearman"])
    assert "fewer than two detections" in _warnings(d2_log)


def test_pred_ious_with_trailing_dim(tmp_path):
    name, _ = _write_dataset(tmp_path, HAND_IMAGES, HAND_ANNS, HAND_CATEGORIES)
    ev = IoUAwareCOCOEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    ev.reset()
    contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    for img in HAND_IMAGES:
        d = [x for x in HAND_DETS if x["image_id"] == img]
        inst = _instances(d, contiguous, with_pred_iou=True)
        inst.pred_ious = inst.pred_ious[:, None]  # (N, 1) from an IoU head
        ev.process([{"image_id": img}], [{"instances": inst}])
    with contextlib.redirect_stdout(io.StringIO()):
        res = ev.evaluate()["bbox"]
    assert res["pred_iou_spearman"] == pytest.approx(HAND_EXPECTED["pred_iou_spearman"], abs=1e-9)


# ---------------------------------------------------------------------------------------------
# benchmarks/plot_consistency.py
# ---------------------------------------------------------------------------------------------


def test_plot_consistency_tool(tmp_path):
    name, gt_path = _write_dataset(tmp_path, HAND_IMAGES, HAND_ANNS, HAND_CATEGORIES)
    _evaluate(name, tmp_path / "a", HAND_IMAGES, HAND_DETS, with_pred_iou=True)
    _evaluate(name, tmp_path / "b", HAND_IMAGES, HAND_DETS[:3])
    tool = load_tool("plot_consistency")
    out = tmp_path / "plots" / "consistency.png"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = tool.main(
            [
                str(tmp_path / "a" / "coco_instances_results.json"),
                str(tmp_path / "b" / "coco_instances_results.json"),
                "--labels",
                "run-a",
                "run-b",
                "--dataset",
                name,
                "--output",
                str(out),
            ]
        )
    assert rc == 0 and out.stat().st_size > 1000
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    out2 = tmp_path / "pred.png"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = tool.main(
            [
                str(tmp_path / "a" / "coco_instances_results.json"),
                "--gt-json",
                gt_path,
                "--pred-iou",
                "--output",
                str(out2),
            ]
        )
    assert rc == 0 and out2.stat().st_size > 1000
