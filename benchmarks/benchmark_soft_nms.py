#!/usr/bin/env python
"""Soft-NMS (``iou_aware.nms.soft_nms``) against the straightforward per-class loop.

The loop is ``tests/test_nms.py::reference_soft_nms``, Bodla et al.'s Algorithm 1 one class at a
time, the form of a per-class soft-NMS loop written on the CPU (mmcv's CPU soft-NMS, Detectron2's
soft-NMS pull request): pick the best remaining box, decay the others, repeat. Both get the same
detector-like boxes as ``benchmark_nms.py`` (float32), one thread, process CPU time, rounds
interleaved; the table gives the median time of each and the speed-up (loop time / ours) with its
range over the rounds, and whether the keep lists agree (float32 rounding can swap two boxes
whose decayed scores tie to 1e-9; in float64 they agree exactly, ``tests/test_nms.py``).

    python benchmarks/benchmark_soft_nms.py
    python benchmarks/benchmark_soft_nms.py --sizes 2000 --classes 80 --rounds 9
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO, os.path.join(REPO, "tests"), os.path.join(REPO, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)

from benchmark_nms import make_detections  # noqa: E402
from test_nms import reference_soft_nms  # noqa: E402
from timing import clock_for, interleaved_rounds, median, pinned_threads, time_call  # noqa: E402

from iou_aware.nms import soft_nms  # noqa: E402

SIGMA, NT, SCORE_THRESH = 0.5, 0.3, 0.001


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 2000, 5000])
    p.add_argument("--classes", nargs="+", type=int, default=[80, 1])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    rows = []
    with pinned_threads(1):
        timer = clock_for("cpu", "cpu")
        for classes in args.classes:
            for n in args.sizes:
                boxes, scores, *_, idxs = make_detections(n, classes, seed=0)
                for method in ("gaussian", "linear"):
                    calls = {
                        "ours": lambda: soft_nms(boxes, scores, idxs, SIGMA, NT, method, SCORE_THRESH),
                        "loop": lambda: reference_soft_nms(boxes, scores, idxs, SIGMA, NT, method, SCORE_THRESH),
                    }

                    outputs = {}

                    def run(name):
                        elapsed, outputs[name] = time_call(calls[name], (), "cpu", timer)
                        return elapsed

                    times = interleaved_rounds(run, calls, args.rounds, warmup=1)
                    ratios = [loop / ours for loop, ours in zip(times["loop"], times["ours"])]
                    same = outputs["ours"][0].tolist() == outputs["loop"][0]
                    rows.append(f"| {n} | {classes} | {method} | {median(times['ours']) * 1e3:.1f} | "
                                f"{median(times['loop']) * 1e3:.1f} | {median(times['loop']) / median(times['ours']):.1f}x "
                                f"({min(ratios):.1f}-{max(ratios):.1f}) | {'yes' if same else 'no'} |")
                    print(rows[-1], flush=True)
    header = ("| boxes | classes | method | soft_nms ms | per-class loop ms | speed-up (range) | same keep |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")
    print("\n" + header + "\n" + "\n".join(rows))
    return rows


if __name__ == "__main__":
    main()
