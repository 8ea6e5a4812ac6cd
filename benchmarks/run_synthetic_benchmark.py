#!/usr/bin/env python
"""Accuracy of the stock detectors and each method on the synthetic dataset, over seeds.

Trains every config with the same schedule and seeds (one subprocess per run, through
tools/train_net.py), reads the final evaluation from each run's metrics.json and writes a table of
mean and spread (standard deviation over seeds): AP, AP50, AP75, AP90, mAP75:95, score/IoU Pearson
correlation, AIC and, for models with an IoU head, predicted/actual IoU Pearson correlation.

    python benchmarks/run_synthetic_benchmark.py                       # default configs, seeds 0 1
    python benchmarks/run_synthetic_benchmark.py --configs configs/synthetic/retinanet_R18_FPN.yaml \
        configs/synthetic/retinanet_R18_FPN_focal_eiou.yaml --seeds 0 1 2 --opts SOLVER.MAX_ITER 2000
    python benchmarks/run_synthetic_benchmark.py --report-only          # the table so far, trains nothing

Finished runs (a final evaluation in metrics.json) are reused, so an interrupted benchmark resumes. A
run that fails (for example a diverged loss) is listed as failed in the table and the others go on;
the exit status is then 1, and later invocations skip it unless given --retry-failed. A run whose
saved config.yaml disagrees with a key its config file chain (or --opts) sets now is stale: its
folder is moved to ``<folder>.stale-<time>`` and the run is made again (--report-only lists it).
Writes OUTPUT/results.csv and OUTPUT/results.md.
"""

import argparse
import ast
import csv
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import time

import yaml
from fvcore.common.config import CfgNode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs/synthetic/*_R18_FPN*.yaml"))
)
METRICS = ["AP", "AP50", "AP75", "AP90", "mAP75:95", "score_iou_pearson", "AIC", "pred_iou_pearson"]


def final_evaluation(output_dir):
    """The evaluation at the end of training: the last record of metrics.json that holds bbox/AP,
    if it was logged at the run's last iteration (SOLVER.MAX_ITER of the run's config.yaml; runs
    copied in without a config.yaml are taken as they are). None otherwise, so that an
    evaluation from the middle of an interrupted run (TEST.EVAL_PERIOD) is not taken as final."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if "bbox/AP" in rec:
                last = rec
    config = os.path.join(output_dir, "config.yaml")
    if last is not None and os.path.isfile(config):
        with open(config) as f:
            max_iter = yaml.safe_load(f)["SOLVER"]["MAX_ITER"]
        if last.get("iteration", -1) < max_iter - 1:
            return None
    return last


def _normalize(value):
    """Config values as Detectron2 dumps them: "(1, 2)" written in a config file is the list [1, 2]."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    return value


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_file_values(path):
    """Every key a config file sets, its _BASE_ chain merged as Detectron2 merges it."""
    return _flatten(CfgNode.load_yaml_with_base(path))


def changed_settings(config, output_dir, opts=()):
    """``(key, value the run used, value the config gives now)`` for every key that the config file
    chain or ``opts`` sets and the run's saved config.yaml disagrees with: a run trained before the
    config was edited is stale. Empty when either file is missing (runs copied in)."""
    saved, path = os.path.join(output_dir, "config.yaml"), os.path.join(REPO, config)
    if not (os.path.isfile(saved) and os.path.isfile(path)):
        return []
    with open(saved) as f:
        ran = _flatten(yaml.safe_load(f) or {})
    wanted = config_file_values(path)
    wanted.update(zip(opts[::2], opts[1::2]))
    return [
        (key, ran.get(key, "(not set)"), value)
        for key, value in sorted(wanted.items())
        if key not in ("OUTPUT_DIR", "SEED", "VERSION")
        and (key not in ran or _normalize(ran[key]) != _normalize(value))
    ]


def set_aside(output_dir):
    """Rename the metrics.json of an earlier, unfinished or failed attempt (Detectron2 appends to
    it), so that a new run's evaluation is not mixed with the old records."""
    path = os.path.join(output_dir, "metrics.json")
    if os.path.isfile(path):
        os.replace(path, path + f".attempt-{time.strftime('%Y%m%d-%H%M%S')}")


def run_one(config, seed, output_dir, opts, num_gpus):
    cmd = [
        sys.executable, "tools/train_net.py", "--num-gpus", str(num_gpus), "--config-file", config,
        "SEED", str(seed), "OUTPUT_DIR", output_dir, *opts,
    ]
    print("[benchmark] $", " ".join(cmd), flush=True)
    start = time.time()
    with open(os.path.join(output_dir, "stdout.log"), "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {output_dir}/stdout.log)"
    print(f"[benchmark] {status} in {time.time() - start:.0f} s", flush=True)
    return proc.returncode


FAILED_MARK = "FAILED.txt"  # in a run's folder: training failed or left no final evaluation
FRACTIONS = ("score_iou_pearson", "AIC", "pred_iou_pearson")  # the AP metrics are percentages


def fmt(metric, values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    digits = 3 if metric in FRACTIONS else 1
    if len(values) == 1:  # one seed: no spread to show
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--output", default="output/benchmarks/synthetic")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per run (CPU: gloo)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs marked as failed")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: the table of the finished runs, the others listed as not run")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for every run")
    args = p.parse_args(argv)

    rows, failed, missing, stale = [], {}, {}, {}
    total = len(args.configs) * len(args.seeds)
    for k, (config, seed) in enumerate((c, s) for c in args.configs for s in args.seeds):
        name = os.path.splitext(os.path.basename(config))[0]
        out = os.path.abspath(os.path.join(args.output, f"{name}_seed{seed}"))
        os.makedirs(out, exist_ok=True)
        print(f"[benchmark] run {k + 1}/{total}: {name} seed {seed}", flush=True)
        marker = os.path.join(out, FAILED_MARK)
        changes = changed_settings(config, out, args.opts)
        if changes:
            said = "; ".join(f"{key}: {old!r} then, {new!r} now" for key, old, new in changes)
            if args.report_only:
                print(f"[benchmark] {out} is stale (the config changed: {said})", flush=True)
                stale.setdefault(name, []).append(seed)
                continue
            aside = f"{out}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
            print(f"[benchmark] the config changed since this run ({said}): moved to {aside}, "
                  "running again", flush=True)
            os.replace(out, aside)
            os.makedirs(out)
        if args.retry_failed and os.path.exists(marker):
            os.remove(marker)
            set_aside(out)
        if args.report_only and not os.path.exists(marker) and final_evaluation(out) is None:
            missing.setdefault(name, []).append(seed)
            continue
        if not os.path.exists(marker) and final_evaluation(out) is None:
            set_aside(out)
            returncode = run_one(config, seed, out, args.opts, args.num_gpus)
            if returncode != 0 or final_evaluation(out) is None:
                with open(marker, "w") as f:
                    f.write(f"training exited with status {returncode}; see stdout.log\n" if returncode
                            else "training finished without a final evaluation in metrics.json\n")
        rec = None if os.path.exists(marker) else final_evaluation(out)
        if rec is None:
            # A run that diverged (Detectron2 stops on a non-finite loss) or crashed is a result too:
            # it is reported in the table instead of stopping the remaining runs.
            print(f"[benchmark] no final evaluation in {out}/metrics.json; counted as failed", flush=True)
            failed.setdefault(name, []).append(seed)
            continue
        rows.append({"config": name, "seed": seed, **{m: rec.get(f"bbox/{m}") for m in METRICS}})

    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["config", "seed", *METRICS])
        w.writeheader()
        w.writerows(rows)
    lines = [
        f"| config | seeds | {' | '.join(METRICS)} |",
        "|" + " --- |" * (len(METRICS) + 2),
    ]
    for name in dict.fromkeys(os.path.splitext(os.path.basename(c))[0] for c in args.configs):
        runs = [r for r in rows if r["config"] == name]
        cells = [fmt(m, [r[m] for r in runs]) for m in METRICS]
        seeds = str(len(runs))
        for what, seeds_of in (("failed", failed), ("not run", missing), ("stale: config changed", stale)):
            if name in seeds_of:
                seeds += f" (seed {', '.join(map(str, seeds_of[name]))} {what})"
        lines.append(f"| {name} | {seeds} | {' | '.join(cells)} |")
    table = "\n".join(lines)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"[benchmark] wrote {args.output}/results.csv and results.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
