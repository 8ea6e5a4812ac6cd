#!/usr/bin/env python
"""Benchmark the NMS variants of ``iou_aware.nms`` against torchvision's ``batched_nms``.

    python benchmarks/benchmark_nms.py                 # CPU, and CUDA when present
    python benchmarks/benchmark_nms.py --sizes 2000 20000 --classes 80 --repeats 9
    python benchmarks/benchmark_nms.py --devices cpu --output output/benchmarks/nms_cpu.csv

Inputs look like a detector's pre-NMS output: boxes jittered around a few objects per image
(log-uniform object sizes from 24 to 400 px in a 1333 x 800 image, one object per 50 boxes, at most
100), scores that fall with the jitter plus 20 % low-scored background boxes; with 80 classes, 80 %
of an object's boxes carry its class and the rest a random one. Predicted IoUs follow the true
overlap with noise.

All variants of one configuration are timed in the same run, interleaved (every repeat times each
variant once, in rotating order), and the median over repeats is reported with its ratio to
torchvision's ``batched_nms`` (the stock baseline). Results go to the console as a table and to a
CSV file (``--output``, default ``output/benchmarks/nms.csv``).

CPU runs use one torch thread by default (torchvision's CPU NMS kernel is single-threaded, and on a
shared machine the small multi-threaded ops mostly measure contention) and then time process CPU
time, which other processes barely disturb; CUDA runs time the wall clock after a synchronize.
Variants slower than ``--slow-budget`` seconds over all repeats get 3 repeats. Every registered
NMS type beyond the four above is timed too, called through the registry with its config
defaults ("type diou", "type cluster", ...). The default grid (4 sizes x 2 class counts) runs in
about 30 seconds on a 2-core CPU, most of it the 20k boxes of one class. The last line checks the
targets: score-fused within 1.3x and IoU-guided within 3x torchvision at 80 classes, 2k and 20k boxes.
"""

import argparse
import csv
import math
import os
import platform
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timing import (  # noqa: E402
    clock_for,
    clock_name,
    interleaved_rounds,
    median,
    set_threads,
    time_call,
)
from iou_aware.nms import (  # noqa: E402
    NMS_REGISTRY,
    batched_nms,
    iou_guided_nms,
    score_fused_nms,
    soft_nms,
)

# Registered types timed through their public functions in variants(); every other registered
# type is timed through the registry with its config defaults ("type <name>").
TIMED_BY_FUNCTION = ("standard", "score_fused", "iou_guided", "soft")

IMAGE_W, IMAGE_H = 1333, 800


def make_detections(num_boxes, num_classes, seed=0, device="cpu"):
    """Detector-like boxes, scores, predicted IoUs and classes (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    n_obj = max(1, min(100, num_boxes // 50))
    size = torch.exp(torch.empty(n_obj).uniform_(math.log(24), math.log(400), generator=g))
    aspect = torch.exp(torch.empty(n_obj).uniform_(-0.7, 0.7, generator=g))
    ow = (size * aspect.sqrt()).clamp(max=IMAGE_W * 0.9)
    oh = (size / aspect.sqrt()).clamp(max=IMAGE_H * 0.9)
    cx = torch.rand(n_obj, generator=g) * (IMAGE_W - ow) + ow / 2
    cy = torch.rand(n_obj, generator=g) * (IMAGE_H - oh) + oh / 2
    obj_cls = torch.randint(0, num_classes, (n_obj,), generator=g)

    n_bg = num_boxes // 5
    n_fg = num_boxes - n_bg
    obj = torch.randint(0, n_obj, (n_fg,), generator=g)
    jitter = torch.randn(n_fg, 4, generator=g) * 0.12
    bcx = cx[obj] + jitter[:, 0] * ow[obj]
    bcy = cy[obj] + jitter[:, 1] * oh[obj]
    bw = ow[obj] * torch.exp(jitter[:, 2])
    bh = oh[obj] * torch.exp(jitter[:, 3])
    fg = torch.stack([bcx - bw / 2, bcy - bh / 2, bcx + bw / 2, bcy + bh / 2], 1)
    quality = torch.exp(-(jitter**2).sum(1) * 8)  # about the IoU with the object
    fg_cls = torch.where(
        torch.rand(n_fg, generator=g) < 0.8,
        obj_cls[obj],
        torch.randint(0, num_classes, (n_fg,), generator=g),
    )
    fg_scores = (quality * torch.rand(n_fg, generator=g) ** 0.5).clamp(0.01, 1)
    fg_ious = (quality + torch.randn(n_fg, generator=g) * 0.1).clamp(0, 1)

    side = torch.exp(torch.empty(n_bg).uniform_(math.log(16), math.log(300), generator=g))
    bx = torch.rand(n_bg, generator=g) * (IMAGE_W - side)
    by = torch.rand(n_bg, generator=g) * (IMAGE_H - side)
    bg = torch.stack(
        [bx, by, bx + side, by + side * torch.exp(torch.randn(n_bg, generator=g) * 0.3)], 1
    )
    bg_scores = torch.rand(n_bg, generator=g) ** 4 * 0.3 + 0.01
    bg_ious = torch.rand(n_bg, generator=g) * 0.3

    boxes = torch.cat([fg, bg])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, IMAGE_W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, IMAGE_H)
    scores = torch.cat([fg_scores, bg_scores])
    ious = torch.cat([fg_ious, bg_ious])
    idxs = torch.cat([fg_cls, torch.randint(0, num_classes, (n_bg,), generator=g)])
    p = torch.randperm(num_boxes, generator=g)
    return tuple(t[p].to(device) for t in (boxes, scores, ious, idxs))


def variants(iou_threshold):
    tv = torchvision.ops.batched_nms
    return [
        ("torchvision.batched_nms", lambda b, s, i, c: tv(b, s, c, iou_threshold)),
        ("batched_nms", lambda b, s, i, c: batched_nms(b, s, c, iou_threshold)),
        ("score_fused_nms", lambda b, s, i, c: score_fused_nms(b, s, i, c, iou_threshold)),
        ("iou_guided_nms", lambda b, s, i, c: iou_guided_nms(b, s, i, c, iou_threshold)),
        ("soft_nms gaussian", lambda b, s, i, c: soft_nms(b, s, c, method="gaussian")),
        (
            "soft_nms linear",
            lambda b, s, i, c: soft_nms(b, s, c, method="linear", iou_threshold=0.3),
        ),
    ] + registered_variants(iou_threshold)


def registered_variants(iou_threshold):
    """Every registered NMS type not in TIMED_BY_FUNCTION, called as the detectors call it: with
    its config keys' defaults (and the predicted IoUs for types that take them)."""
    out = []
    for name in NMS_REGISTRY.names():
        if name in TIMED_BY_FUNCTION:
            continue
        entry = NMS_REGISTRY.get(name)
        kwargs = NMS_REGISTRY.arguments(name, {})
        needs_ious = bool(entry.meta.get("needs_ious", False))

        def call(b, s, i, c, fn=entry.fn, kwargs=kwargs, needs_ious=needs_ious):
            return fn(b, s, c, iou_threshold, **kwargs, **({"ious": i} if needs_ious else {}))

        out.append((f"type {name}", call))
    return out


def bench_config(
    device, num_boxes, num_classes, repeats, iou_threshold, seed, slow_budget_s, timer
):
    args = make_detections(num_boxes, num_classes, seed=seed, device=device)
    todo = dict(variants(iou_threshold))
    kept = {}
    first = {}
    for name, fn in todo.items():  # warm-up, the number of kept boxes and a first time
        first[name], out = time_call(fn, args, device, timer)
        kept[name] = (out[0] if isinstance(out, tuple) else out).numel()
    times = interleaved_rounds(
        lambda name: time_call(todo[name], args, device, timer)[0],
        todo,
        repeats,
        # variants slower than the budget per call run fewer repeats (at least 3)
        skip=lambda name, r: r >= 3 and first[name] * repeats > slow_budget_s,
    )
    medians = {name: median(t) * 1e3 for name, t in times.items()}
    return medians, kept, {name: len(t) for name, t in times.items()}


# Targets: ratio to torchvision's batched_nms at 80 classes, 2k and 20k boxes.
TARGETS = {"score_fused_nms": 1.3, "iou_guided_nms": 3.0}
TARGET_CASES = {(80, 2000), (80, 20000)}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 20000],
                        help="numbers of candidate boxes")
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 80],
                        help="numbers of classes the boxes are spread over")
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda when available"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed interleaved repeats (median)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="NMS IoU threshold")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: torchvision's CPU NMS kernel is single-threaded, and "
        "on a shared machine multi-threaded small ops mostly measure thread contention; "
        "0 keeps torch's default)",
    )
    parser.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="auto: process CPU time on CPU with one thread, wall clock otherwise",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic boxes")
    parser.add_argument(
        "--slow-budget",
        type=float,
        default=6.0,
        help="seconds per variant and configuration before repeats are cut to 3",
    )
    parser.add_argument("--output", default="output/benchmarks/nms.csv", help="CSV file to write")
    args = parser.parse_args()

    set_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device is available to torch here")
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"python {platform.python_version()}, {torch.get_num_threads()} CPU threads, "
        f"{platform.processor() or platform.machine()}"
    )
    if torch.cuda.is_available():
        print(f"CUDA device: {torch.cuda.get_device_name()}")
    print(
        f"IoU threshold {args.iou_threshold}; median of {args.repeats} interleaved repeats; "
        "ms (x torchvision); device/clock: cpu = process CPU time, wall = wall clock\n"
    )

    rows = []
    names = [name for name, _ in variants(args.iou_threshold)]
    header = ["device", "boxes", "classes"] + names
    widths = [8, 7, 7] + [22] * len(names)
    print(" | ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for device_name in devices:
        device = torch.device(device_name)
        timer = clock_for(device, args.clock)
        clock = clock_name(device, args.clock)
        for num_classes in args.classes:
            for num_boxes in args.sizes:
                medians, kept, counts = bench_config(
                    device,
                    num_boxes,
                    num_classes,
                    args.repeats,
                    args.iou_threshold,
                    args.seed,
                    args.slow_budget,
                    timer,
                )
                base = medians[names[0]]
                cells = [f"{medians[n]:9.2f} ({medians[n] / base:5.2f}x)" for n in names]
                print(
                    " | ".join(
                        [f"{device_name + '/' + clock:>8}", f"{num_boxes:>7}", f"{num_classes:>7}"]
                        + [f"{c:>22}" for c in cells]
                    )
                )
                for n in names:
                    rows.append(
                        {
                            "device": device_name,
                            "clock": clock,
                            "boxes": num_boxes,
                            "classes": num_classes,
                            "variant": n,
                            "median_ms": round(medians[n], 4),
                            "ratio_to_torchvision": round(medians[n] / base, 4),
                            "repeats": counts[n],
                            "kept": kept[n],
                        }
                    )
    out_dir = os.path.dirname(args.output)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.output, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.output}")
    checked = [r for r in rows if (r["classes"], r["boxes"]) in TARGET_CASES and r["variant"] in TARGETS]
    missed = [f"{r['device']} {r['boxes']}/{r['classes']} {r['variant']} {r['ratio_to_torchvision']:.2f}x"
              for r in checked if r["ratio_to_torchvision"] > TARGETS[r["variant"]]]
    if checked:
        print("targets (80 classes, 2k and 20k boxes: score_fused <= 1.3x, iou_guided <= 3x): "
              + (f"missed: {', '.join(missed)}" if missed else f"all {len(checked)} met"))


if __name__ == "__main__":
    main()
