#!/usr/bin/env python
"""Run the GPU checks one after another, each in its own process with its own time budget, and
write the figures to OUTDIR (called by ``benchmarks/gpu/run.sh``; see benchmarks/gpu/README.md).

    python benchmarks/gpu/run.py OUTDIR [--device cpu --quick] [--steps tests kernels ...]

A step that fails, or runs past its budget (its process group is killed), is recorded as such and
the next one runs; only a failed import check (step ``tests``) stops the run, since nothing else
could work. OUTDIR receives at most eight flat files:

    summary.md   every step's status, time and figures, with the detail tables
    steps.csv    step, status, seconds (wall), cpu_s (its processes' CPU time), budget_s, figures
    tests.csv    step tests: each CUDA test's outcome and time
    losses.csv   step kernels: every box loss against torchvision (benchmark_losses)
    nms.csv      step kernels: every NMS type against torchvision (benchmark_nms)
    training.csv step training: time / memory / inference ratios to stock (benchmark_training)
    amp.csv      step amp: per detector and box loss, loss and gradient finiteness under AMP
    log.txt      the steps' output (the end of each, if long)

Only the standard library is imported here: a broken environment still gets its summary.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


@dataclass
class Step:
    name: str
    title: str
    budget_s: int  # on the GPU (one H100); with --quick every step gets QUICK_BUDGET_S


STEPS = [
    Step("tests", "imports, then the CUDA tests (pytest -k cuda)", 60),
    Step("kernels", "every box loss and NMS type against torchvision", 90),
    Step("training", "R50-FPN training / inference overhead at 800x1333, batch 2", 150),
    Step("amp", "mixed precision (SOLVER.AMP.ENABLED), every box loss", 75),
    Step("ddp", "2 processes on one GPU (gloo) through tools/train_net.py --num-gpus 2", 75),
]
DEADLINE_S = 460  # the budgets add up to 450 s; the README's device call allows 480 s
QUICK_BUDGET_S = 300  # toy steps take 5-20 s on 2 idle cores; the cap only guards against a hang
STEP_NAMES = [s.name for s in STEPS]
STOP_EXIT_CODE = 3  # a step's exit code that stops the run (the import check failed)
LOG_TAIL = 40_000  # characters of each step's output kept in log.txt


def _children_cpu_s() -> float:
    """CPU time (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(step: Step, args, scratch: str, budget: int):
    """Run one step in its own process group, killed after ``budget`` seconds; returns its result."""
    cmd = [sys.executable, os.path.join(HERE, "steps.py"), step.name, "--out", args.outdir,
           "--scratch", scratch, "--device", args.device] + (["--quick"] if args.quick else [])
    log_path = os.path.join(scratch, f"{step.name}.log")
    result_path = os.path.join(scratch, f"{step.name}.json")
    start = time.perf_counter()
    cpu_before = _children_cpu_s()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cpu":  # one thread per process: several OpenMP threads on a busy machine spin
        env["OMP_NUM_THREADS"] = "1"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=budget)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
    seconds = time.perf_counter() - start
    cpu_s = _children_cpu_s() - cpu_before
    result = {"status": "fail", "figures": "", "details": ""}
    if os.path.exists(result_path):
        with open(result_path) as f:
            result.update(json.load(f))
    if timed_out:
        result["status"] = "timeout"
        result["figures"] = f"killed after its {budget} s budget. " + result.get("figures", "")
    elif rc != 0 and result["status"] == "pass":
        result["status"] = "fail"
    if rc != 0 and not result["figures"]:
        result["figures"] = f"exit code {rc}; see log.txt"
    result.update(step=step.name, seconds=round(seconds, 1), cpu_s=round(cpu_s, 1), budget_s=budget, rc=rc,
                  stop=rc == STOP_EXIT_CODE)
    with open(log_path, errors="replace") as f:
        text = f.read()
    result["log"] = text if len(text) <= LOG_TAIL else "[... start cut ...]\n" + text[-LOG_TAIL:]
    return result


def write_outputs(args, results, started: float) -> None:
    with open(os.path.join(args.outdir, "steps.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "status", "seconds", "cpu_s", "budget_s", "figures"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    with open(os.path.join(args.outdir, "log.txt"), "w") as f:
        for r in results:
            f.write(f"===== step {r['step']}: {r['status']} ({r['seconds']} s, exit code {r['rc']})\n")
            f.write(r.get("log", "") + "\n")
    passed = sum(r["status"] == "pass" for r in results)
    mode = "CPU, toy sizes (--quick)" if args.quick else f"device {args.device}"
    lines = [
        "# GPU readiness run", "",
        f"{datetime.datetime.now().isoformat(timespec='seconds')}, {mode}, Python "
        f"{platform.python_version()}, {time.perf_counter() - started:.0f} s in all: "
        f"**{passed} of {len(results)} steps passed**.", "",
        "| step | what | status | seconds (budget) | figures |", "|---|---|---|---|---|",
    ]
    titles = {s.name: s.title for s in STEPS}
    for r in results:
        figures = r["figures"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['step']} | {titles[r['step']]} | {r['status']} | "
                     f"{r['seconds']:.0f} ({r['budget_s']}) | {figures} |")
    for r in results:
        if r.get("details"):
            lines += ["", f"## {r['step']}: {titles[r['step']]}", "", r["details"].rstrip()]
    with open(os.path.join(args.outdir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", help="folder for the summary and CSVs (created; at most 8 files)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="toy sizes: every step in about a minute on CPU")
    p.add_argument("--steps", nargs="+", choices=STEP_NAMES, default=STEP_NAMES,
                   help="run only these steps (in the usual order)")
    p.add_argument("--deadline-s", type=int, default=None,
                   help=f"the whole run ends within this many seconds: a step gets at most what is left "
                   f"(default {DEADLINE_S}, under the device call's timeout of README.md; --quick: no limit)")
    args = p.parse_args(argv)
    if args.deadline_s is None:
        args.deadline_s = len(STEPS) * QUICK_BUDGET_S if args.quick else DEADLINE_S
    if args.device not in ("cuda", "cpu"):
        p.error(f"--device: cuda or cpu, got {args.device!r}")
    args.outdir = os.path.abspath(args.outdir)
    os.makedirs(args.outdir, exist_ok=True)
    started = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="iou_aware_gpu_run_")
    results, stopped_by = [], None
    try:
        for step in STEPS:
            if step.name not in args.steps:
                continue
            left = args.deadline_s - (time.perf_counter() - started) - 5
            budget = int(min(QUICK_BUDGET_S if args.quick else step.budget_s, left))
            why = (f"stopped: step {stopped_by} failed" if stopped_by else
                   f"out of time: {left:.0f} s left of --deadline-s {args.deadline_s}" if budget < 15 else "")
            if why:
                results.append(dict(step=step.name, status="not run", seconds=0.0, cpu_s=0.0, budget_s=0, rc="-",
                                    figures=why, details=""))
                continue
            print(f"[gpu-run] step {step.name}: {step.title} (budget {budget} s) ...", flush=True)
            r = run_step(step, args, scratch, budget)
            print(f"[gpu-run] step {step.name}: {r['status']} in {r['seconds']:.0f} s. {r['figures']}",
                  flush=True)
            if r["status"] != "pass":
                print(r["log"][-3000:], flush=True)
            results.append(r)
            stopped_by = step.name if r["stop"] else None
            write_outputs(args, results, started)  # after every step: a killed run keeps the rest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_outputs(args, results, started)
    print(f"[gpu-run] wrote {args.outdir}/summary.md; "
          f"{sum(r['status'] == 'pass' for r in results)} of {len(results)} steps passed", flush=True)
    return 0 if all(r["status"] == "pass" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
