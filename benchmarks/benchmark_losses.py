#!/usr/bin/env python
"""Forward + backward time of every registered box loss (``iou_aware.losses.BOX_LOSS_REGISTRY``).

For each device (CPU, and CUDA when available) and each size N, every loss runs
``loss(x, target, reduction="sum").backward()`` on N pairs: box losses on ``(N, 4)`` boxes, the
delta losses (smooth-L1, FocalL1, IoU-balanced smooth-L1) on ``(N, 4)`` regression deltas (plus
``(N,)`` IoUs for the IoU-balanced one). torchvision's ``generalized_box_iou_loss``,
``distance_box_iou_loss`` and ``complete_box_iou_loss`` run in the same loop as references.

Timing: one warm-up round, then ``--repeats`` rounds (x3 below N = 1e6); in each round every loss
runs once, in an order rotated from round to round (so a noisy moment does not hit one loss only);
the median over rounds is reported. By default the CPU runs on one thread and is timed by this
process's CPU time, which other jobs on a shared machine barely disturb (elapsed time with two
threads on a busy 2-core machine varied by 10x between rounds); ``--threads N --clock wall`` times
multi-threaded elapsed time instead. Ratios: ``vs_tv_*`` = our time / torchvision's time,
``vs_iou`` = time / our plain IoU loss's time. Targets: our giou/diou/ciou <= torchvision's; every
other loss <= 2x our IoU loss. Results: a table on stdout and a CSV file (``--output``).

    python benchmarks/benchmark_losses.py                           # N = 1e4, 1e5, 1e6, 1 thread
    python benchmarks/benchmark_losses.py --threads 0 --clock wall  # torch's threads, elapsed time
    python benchmarks/benchmark_losses.py --sizes 1e4 1e5 --output out.csv
"""

import argparse
import csv
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchvision.ops import (  # noqa: E402
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
)

from benchmarks.timing import (  # noqa: E402
    CLOCKS,
    clock_name,
    interleaved_rounds,
    median,
    set_threads,
    time_call,
)
from iou_aware.losses import BOX_LOSS_REGISTRY  # noqa: E402

REFERENCES = {
    "tv_giou": generalized_box_iou_loss,
    "tv_diou": distance_box_iou_loss,
    "tv_ciou": complete_box_iou_loss,
}
# Our loss -> the torchvision loss it must not be slower than.
TV_TARGETS = {"giou": "tv_giou", "diou": "tv_diou", "ciou": "tv_ciou"}
MAX_VS_IOU = 2.0


def make_inputs(n: int, device: torch.device, generator: torch.Generator):
    """Boxes around 0..800 px with sizes 8..200 px; predictions are noisy targets (most overlap,
    some do not), deltas ~ N(0, 0.5), IoUs ~ U(0, 1)."""

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(device)

    xy = rand(n, 2) * 800
    wh = rand(n, 2) * 192 + 8
    target = torch.cat([xy, xy + wh], dim=1)
    noise = (rand(n, 4) - 0.5) * wh.repeat(1, 2)
    pred = target + noise
    pred = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:]), torch.maximum(pred[:, :2], pred[:, 2:])], 1)
    deltas = (rand(n, 4) - 0.5) * 2
    delta_target = (rand(n, 4) - 0.5) * 2
    ious = rand(n)
    return {"boxes": (pred, target), "deltas": (deltas, delta_target), "ious": ious}


def make_calls(inputs):
    """name -> (kind, zero-argument-except-leaf callable)."""
    calls = {}
    pred, target = inputs["boxes"]
    deltas, delta_target = inputs["deltas"]
    for name, fn in REFERENCES.items():
        calls[name] = (pred, lambda x, fn=fn: fn(x, target, reduction="sum"))
    for name in BOX_LOSS_REGISTRY:
        entry = BOX_LOSS_REGISTRY.get(name)
        fn = entry.fn
        if entry.meta["inputs"] == "boxes":
            calls[name] = (pred, lambda x, fn=fn: fn(x, target, reduction="sum"))
        elif entry.meta.get("needs_ious"):
            calls[name] = (deltas, lambda x, fn=fn: fn(x, delta_target, inputs["ious"], reduction="sum"))
        else:
            calls[name] = (deltas, lambda x, fn=fn: fn(x, delta_target, reduction="sum"))
    return calls


def time_once(base, call, device, clock) -> float:
    x = base.detach().clone().requires_grad_(True)
    return time_call(lambda: call(x).backward(), (), device, clock)[0]


def bench(device: torch.device, n: int, repeats: int, seed: int, clock=time.perf_counter):
    gen = torch.Generator().manual_seed(seed)
    calls = make_calls(make_inputs(n, device, gen))
    times = interleaved_rounds(lambda name: time_once(*calls[name], device, clock), calls, repeats, warmup=1)
    return {name: median(ts) for name, ts in times.items()}


def rows_for(device_name, threads, clock_name, n, med):
    rows = []
    for name, t in med.items():
        row = {
            "device": device_name,
            "threads": threads,
            "clock": clock_name,
            "n": n,
            "loss": name,
            "inputs": "boxes" if name in REFERENCES else BOX_LOSS_REGISTRY.get(name).meta["inputs"],
            "median_ms": t * 1e3,
            "vs_tv_giou": t / med["tv_giou"],
            "vs_tv_diou": t / med["tv_diou"],
            "vs_tv_ciou": t / med["tv_ciou"],
            "vs_iou": t / med["iou"],
        }
        if name in TV_TARGETS:
            ratio = t / med[TV_TARGETS[name]]
            row["target"] = f"<= {TV_TARGETS[name]}"
            row["target_met"] = ratio <= 1.0
        elif name in REFERENCES or name == "iou":
            row["target"], row["target_met"] = "", ""
        else:
            row["target"] = f"<= {MAX_VS_IOU:g}x iou"
            row["target_met"] = t / med["iou"] <= MAX_VS_IOU
        rows.append(row)
    return rows


def print_table(rows):
    header = (
        f"{'device':<6} {'thr':>3} {'clock':<5} {'N':>8} {'loss':<24} {'ms':>9} "
        f"{'/tv_giou':>8} {'/tv_diou':>8} {'/tv_ciou':>8} {'/iou':>6}  target"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        met = "" if r["target"] == "" else ("ok " if r["target_met"] else "MISSED ") + r["target"]
        print(
            f"{r['device']:<6} {r['threads']:>3} {r['clock']:<5} {r['n']:>8} {r['loss']:<24} "
            f"{r['median_ms']:>9.2f} "
            f"{r['vs_tv_giou']:>8.2f} {r['vs_tv_diou']:>8.2f} {r['vs_tv_ciou']:>8.2f} {r['vs_iou']:>6.2f}  {met}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6], help="numbers of pairs N")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed rounds at the largest sizes (x3 below 1e6)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's default)"
    )
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="cpu",
        help="cpu (default): this process's CPU time, steady on a machine shared with other jobs "
        "when --threads is 1 (CUDA is always timed by the wall clock); wall: elapsed time",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random boxes")
    parser.add_argument("--output", default="output/benchmarks/losses.csv", help="CSV file to write")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device is available to torch here")
    rows = []
    for dev in devices:
        device = torch.device(dev)
        for size in args.sizes:
            n = int(size)
            repeats = args.repeats if n >= 10**6 else 3 * args.repeats
            clock = clock_name(device, args.clock)
            med = bench(device, n, repeats, args.seed, CLOCKS[clock])
            threads = torch.get_num_threads() if device.type == "cpu" else ""
            new_rows = rows_for(device.type, threads, clock, n, med)
            print_table(new_rows)
            print()
            rows += new_rows

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.output, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    missed = [f"{r['device']} N={r['n']} {r['loss']}" for r in rows if r["target_met"] is False]
    print(f"wrote {args.output}")
    print("targets missed: " + (", ".join(missed) if missed else "none"))


if __name__ == "__main__":
    main()
