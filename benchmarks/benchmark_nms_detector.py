#!/usr/bin/env python
"""IoU-guided NMS on a detector's own candidates: its two suppressor searches against torchvision.

    python benchmarks/benchmark_nms_detector.py \\
        --config-file configs/synthetic/retinanet_R18_FPN_iou_aware.yaml \\
        --weights output/synthetic/retinanet_R18_FPN_iou_aware/model_final.pth
    python benchmarks/benchmark_nms_detector.py \\
        --config-file configs/synthetic/faster_rcnn_R18_FPN_smooth_eiou_iouhead.yaml \\
        --weights output/benchmarks/synthetic/faster_rcnn_R18_FPN_smooth_eiou_iouhead_seed0/model_final.pth

``iou_guided_nms`` finds, for every box that NMS removes, the kept box that removed it, either by
testing every (kept, removed) pair of a class (dense) or by a spatially bucketed search (grid);
``iou_aware.nms.suppressor`` picks one from the size of the padded per-class blocks
(``_DENSE_PAIRS_*``; ``docs/nms.md``).
This tool measures that choice where it matters, on what a detector really sends to NMS: it runs
the config's detector (which must have the IoU head; its NMS is set to ``iou_guided``) on the
first ``--images`` test images at the config's score threshold, records each image's NMS input,
then times per image, interleaved and median of ``--repeats``: torchvision's ``batched_nms`` on the
scores (the stock detector's NMS), ``iou_guided_nms`` with the dense search forced, with the grid
forced, and with its own choice. The two searches must return identical results (checked; the tool
fails otherwise). CPU runs use one thread and process CPU time, as ``benchmarks/benchmark_nms.py``.

Writes one CSV row per image (``--output``) and prints the totals. Without ``--weights`` the
detector has fresh weights, whose scores mostly fall below the usual threshold: pass
``MODEL.RETINANET.SCORE_THRESH_TEST 0`` (or the RoI head's) as a trailing override then.
"""

import argparse
import contextlib
import copy
import csv
import inspect
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from benchmarks.common import trailing_overrides  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    clock_for,
    clock_name,
    interleaved_rounds,
    median,
    pinned_threads,
    time_call,
)
from iou_aware.engine import setup_cfg  # noqa: E402
from iou_aware.nms import iou_guided as iou_guided_module, suppressor  # noqa: E402

FIELDS = ["image", "candidates", "classes", "kept", "padded_pairs", "search", "torchvision_ms", "dense_ms",
          "grid_ms", "default_ms"]


@contextlib.contextmanager
def search_limit(limit):
    """Force the dense search (limit: huge), the grid (0), or leave the choice (None)."""
    saved = suppressor._DENSE_PAIRS_CPU, suppressor._DENSE_PAIRS_CUDA
    if limit is not None:
        suppressor._DENSE_PAIRS_CPU = suppressor._DENSE_PAIRS_CUDA = limit
    try:
        yield
    finally:
        suppressor._DENSE_PAIRS_CPU, suppressor._DENSE_PAIRS_CUDA = saved


SEARCHES = {"dense": 1 << 62, "grid": 0, "default": None}


@contextlib.contextmanager
def patched(module, name, wrapper_of):
    original = getattr(module, name)
    setattr(module, name, wrapper_of(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def capture_nms_inputs(cfg, weights, num_images):
    """Run the detector on the first ``num_images`` test images; for each ``iou_guided_nms`` call,
    ``(image index, arguments by name)``."""
    if not cfg.DATASETS.TEST:
        raise ValueError("the config names no test dataset (DATASETS.TEST) to take images from")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.IOU_AWARE.NMS.TYPE = "iou_guided"  # whatever the config ranks with
    cfg.freeze()
    model = build_model(cfg)
    model.eval()
    if weights:
        DetectionCheckpointer(model).load(weights)
    dataset = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:num_images]
    mapper = DatasetMapper(cfg, is_train=False)
    calls = []
    image = None

    def recording(original):
        signature = inspect.signature(original)

        def wrapper(*args, **kwargs):
            calls.append((image, dict(signature.bind(*args, **kwargs).arguments)))
            return original(*args, **kwargs)
        return wrapper

    with patched(iou_guided_module, "iou_guided_nms", recording), torch.no_grad():
        for image, d in enumerate(dataset):
            model([mapper(copy.deepcopy(d))])
    return calls


def padded_pairs(keep, idxs):
    """Pairs in the dense search's padded blocks: classes x most kept x most removed per class."""
    _, dense_ids = torch.unique(idxs, return_inverse=True)
    per_class = torch.bincount(dense_ids)
    kept = torch.bincount(dense_ids[keep], minlength=per_class.numel())
    return per_class.numel() * int(kept.max()) * int((per_class - kept).max())


def search_chosen(nms_args):
    """Which search ``iou_guided_nms`` picks by itself for these inputs ('-' if none runs)."""
    chosen = []

    def spy(name):
        def wrap(original):
            def wrapper(*a, **k):
                chosen.append(name)
                return original(*a, **k)
            return wrapper
        return wrap

    with patched(suppressor, "_suppressor_dense", spy("dense")), \
            patched(suppressor, "_suppressor_by_grid", spy("grid")):
        iou_guided_module.iou_guided_nms(**nms_args)
    return chosen[0] if chosen else "-"


def time_image(nms_args, repeats, device, timer):
    """Median ms of each way of running NMS on one image's input, and the IoU-guided keep."""
    stock = [nms_args[k] for k in ("boxes", "scores", "idxs", "iou_threshold")]
    runs = {"torchvision": lambda: torchvision.ops.batched_nms(*stock)}
    for name, limit in SEARCHES.items():
        def run(limit=limit):
            with search_limit(limit):
                return iou_guided_module.iou_guided_nms(**nms_args)
        runs[name] = run
    dense, grid = runs["dense"](), runs["grid"]()
    if not (torch.equal(dense[0], grid[0]) and torch.equal(dense[1], grid[1])):
        raise RuntimeError("the dense and the grid search of iou_guided_nms disagree on this input")
    times = interleaved_rounds(lambda name: time_call(runs[name], (), device, timer)[0], runs, repeats)
    return {name: median(t) * 1e3 for name, t in times.items()}, dense[0]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="a config with the IoU head")
    p.add_argument("--weights", default=None, help="trained checkpoint (default: fresh weights)")
    p.add_argument("--images", type=int, default=24, help="test images to take candidates from")
    p.add_argument("--repeats", type=int, default=15, help="timed interleaved repeats per image (median)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--output", default="output/benchmarks/nms_detector.csv", help="CSV file to write")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, last")
    args = p.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        p.error("--images and --repeats must be >= 1")
    try:
        args.opts = trailing_overrides(args.opts)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    with pinned_threads(args.threads):  # the caller's count comes back (tests)
        return run(args)


def run(args):
    cfg = setup_cfg(args.config_file, args.opts)
    calls = capture_nms_inputs(cfg, args.weights, args.images)
    if not calls:
        raise SystemExit("no image reached NMS: lower the test score threshold (see --help)")
    device = calls[0][1]["boxes"].device
    timer = clock_for(device, "auto")
    print(f"{args.config_file}: {len(calls)} images, device {device}, {torch.get_num_threads()} threads, "
          f"{'process CPU time' if clock_name(device) == 'cpu' else 'wall clock'}, "
          f"median of {args.repeats}; ms per image")
    print(" | ".join(f"{h:>14}" for h in FIELDS))
    rows = []
    for image, nms_args in calls:
        ms, keep = time_image(nms_args, args.repeats, device, timer)
        row = {
            "image": image,
            "candidates": nms_args["boxes"].shape[0],
            "classes": int(nms_args["idxs"].unique().numel()),
            "kept": keep.numel(),
            "padded_pairs": padded_pairs(keep, nms_args["idxs"]),
            "search": search_chosen(nms_args),
            **{f"{name}_ms": round(value, 3) for name, value in ms.items()},
        }
        rows.append(row)
        print(" | ".join(f"{row[h]:>14}" for h in FIELDS), flush=True)
    totals = {name: sum(r[f"{name}_ms"] for r in rows) for name in ("torchvision", *SEARCHES)}
    print("total: " + ", ".join(f"{name} {value:.1f} ms" for name, value in totals.items()))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.output}")
    return rows


if __name__ == "__main__":
    main()
