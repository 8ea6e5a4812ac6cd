#!/usr/bin/env python
"""The steps of ``benchmarks/gpu/run.py``; each runs in its own process:

    python benchmarks/gpu/steps.py STEP --out OUTDIR --scratch DIR --device cuda|cpu [--quick]

A step writes its CSV (if any) to OUTDIR and ``DIR/STEP.json``: ``{"status": "pass" | "fail",
"figures": one line, "details": markdown}``. Exit code 3 (step ``tests`` only) stops the run: an
import failed. ``--quick`` shrinks every step to toy sizes (CPU, about a minute for all five).

- ``tests``: imports every package the run needs (naming the missing pip package), then
  ``pytest -k cuda tests`` (the tests named or marked for CUDA); on CUDA at least one must pass.
- ``kernels``: ``benchmark_losses`` (every box loss against torchvision's, N up to 1e6) and
  ``benchmark_nms`` (every NMS type against torchvision's ``batched_nms``, 2k-100k boxes, 1 and
  80 classes) on the device.
- ``training``: ``benchmark_training`` on the COCO R50-FPN configs (random init, 80 classes) at
  800x1333: synthetic 480x800 images scaled up by the configs' own resize, batch 2; every method
  config against its stock detector, interleaved, plus the IoU-head configs with every other
  registered NMS type.
- ``amp``: every box loss in both COCO detectors (same inputs), a few iterations of Detectron2's
  ``AMPTrainer.run_step`` (``SOLVER.AMP.ENABLED``); losses and gradients must be finite.
- ``ddp``: ``tools/train_net.py --num-gpus 2`` with ``IOU_AWARE_SHARE_GPUS=1`` (gloo, both
  processes on the one GPU), a few iterations and the final evaluation on the synthetic dataset.
"""

import argparse
import csv
import importlib
import inspect
import itertools
import json
import math
import os
import re
import subprocess
import sys
import traceback
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
COCO = os.path.join(REPO, "configs", "COCO-Detection")
STOCK = {"RetinaNet": "retinanet_R_50_FPN_1x", "Faster R-CNN": "faster_rcnn_R_50_FPN_1x"}
IOU_HEAD_METHOD = "smooth_eiou_iouhead"  # the configs with an IoU head: every NMS type runs on them
STOP_EXIT_CODE = 3
# import name -> pip package (the ones the GPU machine may lack come from .gpu_wheels)
IMPORTS = {
    "torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "cv2": "opencv-python-headless",
    "PIL": "pillow", "yaml": "pyyaml", "tqdm": "tqdm", "tabulate": "tabulate", "cloudpickle": "cloudpickle",
    "portalocker": "portalocker", "tensorboard": "tensorboard", "pytest": "pytest",
    "pytest_timeout": "pytest-timeout", "termcolor": "termcolor", "yacs": "yacs", "iopath": "iopath",
    "fvcore": "fvcore", "antlr4": "antlr4-python3-runtime", "omegaconf": "omegaconf", "hydra": "hydra-core",
    "pycocotools": "pycocotools", "detectron2": "sal-detectron2 (Detectron2)",
}
# full imports that pull in the rest (a missing dependency of theirs is named by its module)
DEEP_IMPORTS = ["pycocotools.mask", "detectron2.modeling", "detectron2.engine", "iou_aware.engine",
                "iou_aware.evaluation"]


def result(status, figures, details="", stop=False):
    return {"status": status, "figures": figures, "details": details, "stop": stop}


def write_csv(path, rows, fields=None):
    fields = fields or (list(rows[0]) if rows else ["empty"])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def md_table(head, rows):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def load_tool(name):
    """The benchmark script ``benchmarks/<name>.py`` as a module."""
    return importlib.import_module(f"benchmarks.{name}")


def run_tool(name, argv):
    """``main`` of ``benchmarks/<name>.py`` in this process (no new Python start-up); 0, or 1 if
    it raised (traceback printed). ``sys.argv`` is set as well, for a ``main`` that reads it."""
    print(f"$ python benchmarks/{name}.py " + " ".join(argv), flush=True)
    saved = sys.argv
    sys.argv = [f"{name}.py", *argv]
    try:
        main = load_tool(name).main
        main(argv) if "argv" in inspect.signature(main).parameters else main()
        return 0
    except (Exception, SystemExit):  # noqa: BLE001 (the step records the failure)
        traceback.print_exc()
        return 1
    finally:
        sys.argv = saved


# ----------------------------------------------------------------------------------- step tests
def check_imports():
    """``[problem, ...]`` naming the pip package of each import that fails."""
    problems = []
    for module in list(IMPORTS) + DEEP_IMPORTS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            missing = (e.name or module).split(".")[0]
            problems.append(f"pip package {IMPORTS.get(missing, missing)} is missing "
                            f"(import {module}: no module named {e.name!r})")
        except Exception as e:  # noqa: BLE001 (a broken binary, a numpy ABI mismatch...)
            problems.append(f"import {module} failed: {type(e).__name__}: {e}")
    return list(dict.fromkeys(problems))


def parse_junit(path):
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                     "seconds": case.get("time"), "message": message})
    return rows


def step_tests(a):
    problems = check_imports()
    if problems:
        return result("fail", "; ".join(problems) + ". Carry the wheels: bash benchmarks/gpu/prepare.sh "
                      "here, then the run with carry [\".gpu_wheels\"] (benchmarks/gpu/README.md)", stop=True)
    import detectron2
    import numpy
    import torch
    import torchvision

    cuda = torch.cuda.is_available()
    card = torch.cuda.get_device_name() if cuda else "no CUDA device"
    versions = (f"Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
                f"torchvision {torchvision.__version__}, numpy {numpy.__version__}, Detectron2 "
                f"{detectron2.__version__}; {card}")
    print(versions, flush=True)
    if a.device == "cuda" and not cuda:
        return result("fail", f"CUDA is not available to torch: {versions}", stop=True)
    junit = os.path.join(a.scratch, "junit.xml")
    import pytest

    where = "tests"
    if a.quick:  # the harness, not the whole collection: the first file with a CUDA test
        where = next((os.path.join("tests", f) for f in sorted(os.listdir(os.path.join(REPO, "tests")))
                      if f.startswith("test_") and f.endswith(".py")
                      and re.search(r"def test_\w*cuda|mark\.cuda", open(os.path.join(REPO, "tests", f)).read())),
                     "tests")
    argv = ["-q", "-p", "no:cacheprovider", "-k", "cuda", where, f"--junitxml={junit}"]
    print("$ pytest " + " ".join(argv), flush=True)
    os.chdir(REPO)
    rc = int(pytest.main(argv))
    rows = parse_junit(junit) if os.path.exists(junit) else []
    write_csv(os.path.join(a.out, "tests.csv"), rows, ["test", "outcome", "seconds", "message"])
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "failed", "error", "skipped")}
    # pytest's exit code 5: no test selected, a failure only where CUDA tests must run
    ok = rc == 0 and counts["passed"] > 0 if a.device == "cuda" else rc in (0, 5)
    figures = ", ".join(f"{v} {k}" for k, v in counts.items()) + f" (pytest exit code {rc}). {versions}"
    details = md_table(["test", "outcome", "s", "message"],
                       [(r["test"], r["outcome"], r["seconds"], r["message"]) for r in rows])
    return result("pass" if ok else "fail", figures, details)


# --------------------------------------------------------------------------------- step kernels
def losses_summary(rows):
    n = max(int(r["n"]) for r in rows)
    top = [r for r in rows if int(r["n"]) == n]
    tv = {"giou": "vs_tv_giou", "diou": "vs_tv_diou", "ciou": "vs_tv_ciou"}
    slowest = max((float(r["vs_iou"]), r["loss"]) for r in top if not r["loss"].startswith("tv_"))
    figures = (f"losses at N={n}: " + ", ".join(f"{r['loss']} {float(r[tv[r['loss']]]):.2f}x tv" for r in top
                                                if r["loss"] in tv)
               + f", slowest {slowest[1]} {slowest[0]:.2f}x our iou")
    details = f"Box losses, forward + backward, N = {n} pairs:\n\n" + md_table(
        ["loss", "ms", "/ tv giou", "/ our iou"],
        [(r["loss"], f"{float(r['median_ms']):.3f}", f"{float(r['vs_tv_giou']):.2f}", f"{float(r['vs_iou']):.2f}")
         for r in top])
    return figures, details


def nms_summary(rows):
    variants = list(dict.fromkeys(r["variant"] for r in rows))  # torchvision's first
    cases = list(dict.fromkeys((int(r["boxes"]), int(r["classes"])) for r in rows))
    ratio = {(int(r["boxes"]), int(r["classes"]), r["variant"]): float(r["ratio_to_torchvision"]) for r in rows}
    ms = {(int(r["boxes"]), int(r["classes"])): float(r["median_ms"]) for r in rows if r["variant"] == variants[0]}
    big = max(cases, key=lambda c: (c[1], c[0]))
    figures = (f"NMS at {big[0]} boxes / {big[1]} classes, x {variants[0]} ({ms[big]:.1f} ms): "
               + ", ".join(f"{v} {ratio[(*big, v)]:.2f}" for v in variants[1:]))
    details = "NMS, time / torchvision's batched_nms (its own ms in the third column):\n\n" + md_table(
        ["boxes", "classes", f"{variants[0]} ms"] + variants[1:],
        [(b, c, f"{ms[(b, c)]:.2f}", *(f"{ratio.get((b, c, v), float('nan')):.2f}" for v in variants[1:]))
         for b, c in cases])
    return figures, details


def step_kernels(a):
    """Each part's CSV and figures are saved as soon as it ends: a step killed at its budget keeps
    the parts done."""
    q, nms_rows, parts, ran = a.quick, [], {}, []
    repeats = ["--repeats", "1" if q else "5"]

    def save(status="fail"):
        done = [parts[k] for k in ("losses", "nms") if k in parts]
        missing = [k for k in ("losses", "nms 80 classes", "nms 1 class") if k not in ran]
        res = result(status, "; ".join(f for f, _ in done) + ("; not done: " + ", ".join(missing) if missing else ""),
                     "\n\n".join(d for _, d in done))
        with open(os.path.join(a.scratch, "kernels.json"), "w") as f:
            json.dump(res, f)
        return res

    out_csv = os.path.join(a.scratch, "losses.csv")
    if run_tool("benchmark_losses", ["--devices", a.device, "--sizes", *(["1000"] if q else ["1e4", "1e5", "1e6"]),
                                     *repeats, "--output", out_csv]) == 0:
        parts["losses"] = losses_summary(read_csv(out_csv))
        os.replace(out_csv, os.path.join(a.out, "losses.csv"))
        ran.append("losses")
    save()
    # 80 classes up to 100k boxes; one class (the sequential worst case of soft-NMS) up to 10k
    for label, classes, sizes in (("nms 80 classes", "80", ["2000", "10000", "30000", "100000"]),
                                  ("nms 1 class", "1", ["2000", "10000"])):
        out_csv = os.path.join(a.scratch, "nms.csv")
        if run_tool("benchmark_nms", ["--devices", a.device, "--classes", classes, "--sizes",
                                      *(["300"] if q else sizes), *repeats, "--slow-budget", "2",
                                      "--output", out_csv]) == 0:
            nms_rows += read_csv(out_csv)
            write_csv(os.path.join(a.out, "nms.csv"), nms_rows)
            parts["nms"] = nms_summary(nms_rows)
            ran.append(label)
        save()
    return save("pass" if len(ran) == 3 else "fail")


# ------------------------------------------------------------------------ shared by training, amp
def coco_size_opts(a):
    """Config overrides: the COCO configs on synthetic images (480x800, scaled to 800x1333 by
    the configs' own resize); --quick: a toy detector on 48x80 images scaled to 64x107."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets.coco import load_coco_json

    from iou_aware.data import generate_synthetic_dataset

    name, size = "gpu_run_synthetic_train", ((48, 80) if a.quick else (480, 800))
    root = os.path.join(a.scratch, "datasets")

    def load():
        return load_coco_json(*generate_synthetic_dataset(root, "train", 4, image_size=size), name)

    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, load)
    short, long_ = (64, 107) if a.quick else (800, 1333)
    opts = ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TRAIN", f"({short},)",
            "INPUT.MAX_SIZE_TRAIN", str(long_), "INPUT.MIN_SIZE_TEST", str(short),
            "INPUT.MAX_SIZE_TEST", str(long_), "DATALOADER.NUM_WORKERS", "0", "SEED", "0"]
    if a.quick:  # a toy detector: ResNet-18, narrow FPN and heads, few proposals
        opts += ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS",
                 "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
                 "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
                 "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
                 "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "100"]
    return opts


def wrapper_config(a, stem, base, extra=""):
    """A config file ``<scratch>/configs/<stem>.yaml`` = ``base`` + ``extra`` yaml lines."""
    folder = os.path.join(a.scratch, "configs")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{stem}.yaml")
    with open(path, "w") as f:
        f.write(f'_BASE_: "{base}"\n{extra}')
    return path


# -------------------------------------------------------------------------------- step training
def method_names(stock):
    """The methods of ``configs/COCO-Detection/<stock>_<method>.yaml``, sorted."""
    return sorted(f[len(stock) + 1:-5] for f in os.listdir(COCO) if f.startswith(stock + "_") and f.endswith(".yaml"))


def step_training(a):
    from iou_aware.engine import setup_cfg
    from iou_aware.nms import NMS_REGISTRY

    configs = []
    for det, stock in STOCK.items():
        wrapper_config(a, stock, os.path.join(COCO, f"{stock}.yaml"))  # the stock next to them
        methods = method_names(stock)
        methods = methods[:1] if a.quick else methods
        for m in methods:
            configs.append(wrapper_config(a, f"{stock}_{m}", os.path.join(COCO, f"{stock}_{m}.yaml")))
        head = os.path.join(COCO, f"{stock}_{IOU_HEAD_METHOD}.yaml")
        own = setup_cfg(head).MODEL.IOU_AWARE.NMS.TYPE  # measured as the method itself
        others = [n for n in NMS_REGISTRY.names() if n != own]
        # --quick: one other type, soft-NMS (sequential, the costliest at detector sizes)
        quick = ["soft"] if "soft" in others else others[-1:]
        for nms in quick if a.quick else others:
            configs.append(wrapper_config(a, f"{stock}_{IOU_HEAD_METHOD}_nms_{nms}", head,
                                          f"MODEL:\n  IOU_AWARE:\n    NMS:\n      TYPE: \"{nms}\"\n"))
    out_csv = os.path.join(a.scratch, "training.csv")
    rounds = ["--quick"] if a.quick else ["--iters", "6", "--warmup", "1", "--infer-per-round", "2"]
    rows = load_tool("benchmark_training").main(
        ["--device", a.device, "--configs", *configs, "--batch", "2", *rounds, "--output", out_csv, "--",
         *coco_size_opts(a)])
    os.replace(out_csv, os.path.join(a.out, "training.csv"))
    with open(os.path.splitext(out_csv)[0] + ".md") as f:
        table = f.read()
    def ratio(x):
        return f"{x:.2f}" if isinstance(x, float) else str(x)

    figures = []
    for det in STOCK:
        cells = [f"{r['method']} {ratio(r['train_ratio'])}/{ratio(r['peak_ratio'])}/{ratio(r['infer_ratio'])}"
                 for r in rows if r["detector"] == det and r["method"] != "stock"]
        figures.append(f"{det} ratios to stock, train time/peak memory/inference time: " + ", ".join(cells))
    finite = all(math.isfinite(r["train_ms"]) and math.isfinite(r["infer_ms"]) for r in rows)
    note = (f"\n\n{IOU_HEAD_METHOD} runs its config's NMS type; {IOU_HEAD_METHOD}_nms_<type> is the same "
            "model with another registered NMS type (its training time is the same model's, measured again).")
    return result("pass" if finite else "fail", "; ".join(figures), table.split("\n", 2)[-1] + note)


# ------------------------------------------------------------------------------------- step amp
def cpu_amp_step(trainer):
    """``AMPTrainer.run_step`` refuses to run without CUDA; on CPU (``--quick``) the same steps with
    CPU autocast to bfloat16 and no gradient scaler."""
    import torch

    data = next(trainer._data_loader_iter)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_dict = trainer.model(data)
        losses = sum(loss_dict.values())
    trainer.optimizer.zero_grad()
    losses.backward()
    trainer._write_metrics(loss_dict, 0.0)
    trainer.optimizer.step()


def amp_run(a, cfg, batch, iters):
    """``iters`` AMP steps on a fixed batch; per step ``(losses finite, gradients finite, total loss,
    gradient scale)``. The gradients are read after the step (unscaled by the scaler)."""
    import torch
    from detectron2.engine import AMPTrainer
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    torch.manual_seed(cfg.SEED)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    for group in optimizer.param_groups:  # the warm-up's first learning rate, as in training
        group["lr"] *= cfg.SOLVER.WARMUP_FACTOR
    trainer = AMPTrainer(model, itertools.repeat(batch), optimizer)
    steps = []
    with EventStorage(0) as storage:
        for it in range(iters):
            trainer.iter = storage.iter = it
            trainer.run_step() if a.device == "cuda" else cpu_amp_step(trainer)
            values = [v for k, (v, _) in storage.latest().items() if k.startswith("loss") or k == "total_loss"]
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grads_ok = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
            steps.append((all(math.isfinite(v) for v in values), grads_ok,
                          storage.latest()["total_loss"][0], trainer.grad_scaler.get_scale()))
    return steps


def step_amp(a):
    import gc
    import time

    import torch

    from iou_aware.engine import setup_cfg
    from iou_aware.losses import BOX_LOSS_REGISTRY

    fixed_batch = load_tool("benchmark_training").fixed_batch
    opts = coco_size_opts(a) + ["MODEL.DEVICE", a.device, "MODEL.WEIGHTS", "", "SOLVER.AMP.ENABLED", "True"]
    detectors = list(STOCK)
    if a.quick:  # every loss once, the detectors alternating
        combos = [(detectors[i % 2], loss) for i, loss in enumerate(sorted(BOX_LOSS_REGISTRY.names()))]
    else:
        combos = [(det, loss) for det in detectors for loss in sorted(BOX_LOSS_REGISTRY.names())]
    iters = 1 if a.quick else 4
    rows, batches = [], {}  # one fixed batch per detector: every loss sees the same inputs
    for det, loss in combos:
        row = {"detector": det, "box_loss": loss, "status": "fail", "iterations": iters, "error": ""}
        t0 = time.perf_counter()
        try:
            cfg = setup_cfg(os.path.join(COCO, f"{STOCK[det]}.yaml"), opts + ["MODEL.IOU_AWARE.BOX_LOSS", loss])
            if det not in batches:
                batches[det] = fixed_batch(cfg, 2)
            steps = amp_run(a, cfg, batches[det], iters)
            losses_ok = all(s[0] for s in steps)
            row.update(losses_finite=losses_ok, grads_finite_last=steps[-1][1],
                       skipped_steps=sum(not s[1] for s in steps), grad_scale=steps[-1][3],
                       total_loss_first=f"{steps[0][2]:.4g}", total_loss_last=f"{steps[-1][2]:.4g}",
                       status="pass" if losses_ok and steps[-1][1] else "fail")
        except Exception as e:  # noqa: BLE001 (recorded; the other losses still run)
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        row["seconds"] = f"{time.perf_counter() - t0:.1f}"
        print(row, flush=True)
        rows.append(row)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    fields = ["detector", "box_loss", "status", "iterations", "losses_finite", "grads_finite_last",
              "skipped_steps", "grad_scale", "total_loss_first", "total_loss_last", "seconds", "error"]
    write_csv(os.path.join(a.out, "amp.csv"), rows, fields)
    failed = [f"{r['detector']} {r['box_loss']}" for r in rows if r["status"] != "pass"]
    skipped = sum(int(r.get("skipped_steps") or 0) for r in rows)
    figures = (f"{len(rows) - len(failed)} of {len(rows)} detector x box-loss runs finite ({iters} AMP "
               f"iterations each, {skipped} steps skipped by the gradient scaler in all)"
               + (f"; failed: {', '.join(failed)}" if failed else ""))
    details = md_table(["detector", "box loss", "status", "skipped steps", "scale", "loss first", "last", "error"],
                       [(r["detector"], r["box_loss"], r["status"], r.get("skipped_steps", ""),
                         r.get("grad_scale", ""), r.get("total_loss_first", ""), r.get("total_loss_last", ""),
                         r["error"]) for r in rows])
    return result("fail" if failed else "pass", figures, details)


# ------------------------------------------------------------------------------------- step ddp
def step_ddp(a):
    out_dir = os.path.join(a.scratch, "ddp")
    size = ["DATASETS.SYNTHETIC.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"] if a.quick else []
    cmd = [sys.executable, "tools/train_net.py", "--num-gpus", "2", "--dist-url", "auto", "--config-file",
           "configs/synthetic/retinanet_R18_FPN_smooth_eiou_iouhead.yaml", "MODEL.DEVICE", a.device,
           "DATASETS.SYNTHETIC.ROOT", os.path.join(a.scratch, "datasets"),
           "DATASETS.SYNTHETIC.NUM_TRAIN", "4" if a.quick else "32", "DATASETS.SYNTHETIC.NUM_VAL",
           "2" if a.quick else "8", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2" if a.quick else "8",
           "SOLVER.MAX_ITER", "1" if a.quick else "20", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", out_dir, *size]
    print("$ IOU_AWARE_SHARE_GPUS=1 " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, IOU_AWARE_SHARE_GPUS="1"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(proc.stdout, flush=True)
    records = []
    metrics = os.path.join(out_dir, "metrics.json")
    if os.path.exists(metrics):
        with open(metrics) as f:
            records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if "total_loss" in r]
    evals = [r for r in records if "bbox/AP" in r]
    two = "on 2 devices" in proc.stdout  # Detectron2's evaluator: "... s / iter per device, on 2 devices"
    checks = {"exit code 0": proc.returncode == 0, "training metrics written": bool(train),
              "final loss finite": bool(train) and math.isfinite(train[-1]["total_loss"]),
              "evaluation gathered from 2 processes": two and bool(evals)}
    figures = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items())
    if train:
        t = train[-1]
        figures += (f"; iteration {t['iteration'] + 1}, total loss {t['total_loss']:.3f}"
                    + (f", {t['time']:.3f} s/iter" if "time" in t else ""))
    if evals:
        figures += f"; bbox AP {evals[-1]['bbox/AP']:.2f}"
    return result("pass" if all(checks.values()) else "fail", figures)


STEP_FUNCTIONS = {"tests": step_tests, "kernels": step_kernels, "training": step_training, "amp": step_amp,
                  "ddp": step_ddp}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=list(STEP_FUNCTIONS))
    p.add_argument("--out", required=True, help="the run's output folder")
    p.add_argument("--scratch", required=True, help="folder for intermediate files")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="toy sizes (CPU tests)")
    a = p.parse_args(argv)
    try:
        res = STEP_FUNCTIONS[a.step](a)
    except Exception as e:  # noqa: BLE001 (recorded as the step's failure)
        traceback.print_exc()
        res = result("fail", f"{type(e).__name__}: {e}"[:500])
    with open(os.path.join(a.scratch, f"{a.step}.json"), "w") as f:
        json.dump(res, f)
    if res["stop"]:
        return STOP_EXIT_CODE
    return 0 if res["status"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
