#!/usr/bin/env python
"""Training and inference overhead of each IoU-aware configuration against the stock detector.

Every configuration named by ``--configs`` (default: the nine method configs of
``configs/synthetic/``) is compared with the stock detector of its family, the stock config in
the same folder (``retinanet_R18_FPN.yaml``, ``faster_rcnn_R18_FPN.yaml`` or
``fcos_R18_FPN.yaml``): same backbone, input
size, batch and seed (checked), and the same initial weights wherever the shapes agree (the
stock ``state_dict`` is copied into the IoU-aware model; only the IoU head's new layer keeps its
own initialization).

Measured, all models in one process, **interleaved**: a timed round runs, per detector, the
training iterations ``stock, m1, stock, m2, ..., mn, stock`` (the methods' order rotated from round
to round), then the same sandwich for inference on each of the round's images. Every method run
sits between two stock runs a few seconds apart, and its *ratio* is taken to the mean of those two,
so that a change of machine load hits both sides of the ratio alike.

- ``train ms/iter``: forward + backward + SGD step (Detectron2's ``build_optimizer``: momentum,
  weight decay; the learning rate is the warm-up's first one, BASE_LR * WARMUP_FACTOR, so that
  repeated steps on the fixed batch stay finite) on a fixed batch of ``SOLVER.IMS_PER_BATCH``
  images (8 at 128 px) read from ``synthetic_shapes_train`` through Detectron2's
  ``DatasetMapper(cfg, is_train=True)``.
- ``infer ms/img``: ``model.eval()`` and ``torch.no_grad()``, one image per call. By default the
  test score threshold is 0 so that every candidate up to the config's top-k reaches NMS (freshly
  initialized weights score every RetinaNet candidate about 0.01, below the usual 0.05, which
  would leave NMS idle): the worst case for the NMS variants. ``--infer-score-thresh config``
  keeps the config's threshold. ``--weights`` loads a trained checkpoint into every model (where
  names and shapes match), so that inference sees a trained detector's candidates.
- ``loss ms`` / ``post ms``: the (headline-clock) forward time of the loss computation (RetinaNet and FCOS
  ``forward_training`` after the head, including anchor labelling; Faster R-CNN
  ``box_predictor.losses``) and of the post-processing (RetinaNet ``forward_inference``; Faster
  R-CNN ``box_predictor.inference``, the NMS included): where the methods differ from stock.
- ``peak MB``: the peak of tensor memory allocated during one training iteration above what was
  allocated when it started (activations, gradients, loss temporaries; the previous gradients are
  freed before it starts, so the start holds the parameters, the optimizer state and the batch). CUDA:
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the allocation
  events of PyTorch's profiler (``profile_memory=True``) summed in time order, which counts
  exactly the bytes PyTorch's CPU allocator hands out and takes back (the process RSS does not:
  glibc keeps freed memory, so RSS peaks of models sharing one process say little). Measured in
  one untimed round after the warm-up; "n/a" if the profiler's event tree is unavailable.

Times are medians over the timed rounds; ``ratio`` = the median over the runs of a method of its
time divided by the mean time of the two stock runs around it; ``ratio IQR`` = the 25th-75th
percentile of those ratios, a measure of the noise.

Clock (``--clock auto``): on CPU with one thread (the default, ``--threads``), the process CPU
time, which counts the work itself and not the time the process waited for a core; on a shared
machine it is far steadier than wall time (two cores shared with other jobs, without the stock
sandwich: wall-clock ratios spread over 0.55-1.35 for methods whose CPU-time ratios were
0.97-1.02). Wall time is recorded as well (``*_wall_*`` columns, "wall ratio"). On CUDA, or with
more than one thread, the headline is wall time (with ``torch.cuda.synchronize``). One thread on
CPU because OpenMP threads spin-waiting for each other on an oversubscribed machine made
iterations several times slower and erratic.

Target: training and inference overhead at most 5% (ratio <= 1.05), except where a
paper says otherwise; ratios above it are marked with ``*``.

    python benchmarks/benchmark_training.py                             # full run, CPU
    python benchmarks/benchmark_training.py --device cuda --iters 50
    python benchmarks/benchmark_training.py --configs configs/synthetic/retinanet_R18_FPN_harmonic.yaml
    python benchmarks/benchmark_training.py --configs configs/synthetic/retinanet_R18_FPN_iou_aware.yaml \
        -- MODEL.IOU_AWARE.NMS.TYPE standard                            # config overrides, last
    python benchmarks/benchmark_training.py --quick                     # 2 rounds, batch 2 (tests)

Trailing ``KEY VALUE`` pairs, after every option, override every config (e.g.
``DATASETS.SYNTHETIC.ROOT /tmp/d``); right after ``--configs`` separate them with ``--``
(``--configs X.yaml -- KEY VALUE``), else they are read as more configs.
"""

import argparse
import copy
import csv
import datetime
import gc
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from detectron2.data import DatasetCatalog, DatasetMapper  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from benchmarks.common import trailing_overrides  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    CLOCKS,
    Timed,
    clock_name,
    make_sync,
    measure,
    median,
    pinned_threads,
    quartiles,
    rotated,
    set_threads,
)
from iou_aware.engine import setup_cfg  # noqa: E402

SYNTHETIC = "configs/synthetic"
STOCK_CONFIGS = {
    "RetinaNet": f"{SYNTHETIC}/retinanet_R18_FPN.yaml",
    "Faster R-CNN": f"{SYNTHETIC}/faster_rcnn_R18_FPN.yaml",
    "FCOS": f"{SYNTHETIC}/fcos_R18_FPN.yaml",
}
DEFAULT_CONFIGS = [
    f"{SYNTHETIC}/retinanet_R18_FPN_{m}.yaml"
    for m in ("iou_balanced", "smooth_eiou_iouhead", "harmonic", "alpha_iou", "focal_eiou")
] + [
    f"{SYNTHETIC}/faster_rcnn_R18_FPN_{m}.yaml"
    for m in ("smooth_eiou_iouhead", "harmonic", "alpha_iou", "focal_eiou")
]
TARGET_RATIO = 1.05
FIELDS = [
    "method", "detector", "config", "device", "threads", "clock", "batch", "rounds", "infer_images",
    "train_ms", "train_ratio", "train_ratio_q25", "train_ratio_q75", "train_wall_ms", "train_wall_ratio",
    "loss_ms", "infer_ms", "infer_ratio", "infer_ratio_q25", "infer_ratio_q75",
    "infer_wall_ms", "infer_wall_ratio", "post_ms",
    "peak_mb", "peak_ratio", "fwd_bwd_peak_mb", "fwd_bwd_peak_ratio", "params_m", "extra_params",
]


# ------------------------------------------------------------------------------------- set-up
def detector_of(cfg) -> str:
    arch = cfg.MODEL.META_ARCHITECTURE
    if "RetinaNet" in arch:
        return "RetinaNet"
    if arch == "GeneralizedRCNN":
        return "Faster R-CNN"
    if "FCOS" in arch:
        return "FCOS"
    raise ValueError(f"{arch!r}: only RetinaNet, FCOS and GeneralizedRCNN configs are benchmarked")


STOCK_PREFIXES = (
    "retinanet_R18_FPN", "faster_rcnn_R18_FPN", "retinanet_R_50_FPN_1x", "faster_rcnn_R_50_FPN_1x",
    "fcos_R18_FPN", "fcos_R_50_FPN_1x",
)
# keys that must agree between a method and its stock detector
SAME_SETTING_KEYS = (
    "MODEL.BACKBONE.NAME", "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NORM", "MODEL.FPN.OUT_CHANNELS",
    "MODEL.ANCHOR_GENERATOR.SIZES", "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST", "SOLVER.IMS_PER_BATCH", "SEED", "DATASETS.TRAIN",
)


def method_name(config: str) -> str:
    """``retinanet_R18_FPN_harmonic.yaml`` -> ``harmonic``; stock configs -> ``stock``."""
    stem = os.path.splitext(os.path.basename(config))[0]
    for prefix in STOCK_PREFIXES:
        if stem.startswith(prefix):
            return stem[len(prefix):].lstrip("_") or "stock"
    return stem


def stock_config_for(config: str, detector: str) -> str:
    """The stock config next to a method config (``<dir>/retinanet_R18_FPN.yaml`` for
    ``<dir>/retinanet_R18_FPN_harmonic.yaml``), else the synthetic stock config of its detector."""
    stem = os.path.splitext(os.path.basename(config))[0]
    for prefix in STOCK_PREFIXES:
        if stem.startswith(prefix):
            candidate = os.path.join(os.path.dirname(config), prefix + ".yaml")
            if os.path.exists(candidate if os.path.isabs(candidate) else os.path.join(REPO, candidate)):
                return candidate
    return STOCK_CONFIGS[detector]


def check_same_setting(stock_cfg, cfg, config: str, stock_config: str) -> None:
    """Raise if the method's backbone, input size, batch, seed... differ from its stock's."""
    def get(c, key):
        for part in key.split("."):
            c = c[part]
        return c

    diff = [
        f"{k}: {get(cfg, k)} vs {get(stock_cfg, k)}"
        for k in SAME_SETTING_KEYS
        if get(cfg, k) != get(stock_cfg, k)
    ]
    if diff:
        raise ValueError(f"{config} and its stock {stock_config} differ in: " + "; ".join(diff))


def bench_opts(args) -> List[str]:
    opts = ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", ""]
    if args.infer_score_thresh != "config":
        t = str(float(args.infer_score_thresh))
        opts += ["MODEL.RETINANET.SCORE_THRESH_TEST", t, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", t,
                 "MODEL.FCOS.SCORE_THRESH_TEST", t]
    return opts + list(args.opts)


def fixed_batch(cfg, n_images: int) -> List[dict]:
    """The first ``n_images`` of the config's training set through ``DatasetMapper(is_train=True)``
    (the random flip seeded by ``cfg.SEED``): the same list of dicts feeds every model."""
    dataset = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    if len(dataset) < n_images:
        raise ValueError(f"{cfg.DATASETS.TRAIN[0]} has {len(dataset)} images, {n_images} needed")
    mapper = DatasetMapper(cfg, is_train=True)
    np.random.seed(cfg.SEED)
    torch.manual_seed(cfg.SEED)
    return [mapper(copy.deepcopy(d)) for d in dataset[:n_images]]


class Entry:
    """One model under test with its optimizer, its timers and the measurements."""

    def __init__(self, config: str, cfg, model, detector: str, sync, clock):
        self.config, self.cfg, self.model, self.detector = config, cfg, model, detector
        self.method = method_name(config)
        self.optimizer = build_optimizer(cfg, model)
        lr = cfg.SOLVER.BASE_LR * cfg.SOLVER.WARMUP_FACTOR
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr"] / cfg.SOLVER.BASE_LR
        if detector in ("RetinaNet", "FCOS"):
            owner, loss_name, post_name = model, "forward_training", "forward_inference"
        else:
            owner = model.roi_heads.box_predictor
            loss_name, post_name = "losses", "inference"
        self.loss_timer = Timed(getattr(owner, loss_name), sync, clock)
        self.post_timer = Timed(getattr(owner, post_name), sync, clock)
        setattr(owner, loss_name, self.loss_timer)
        setattr(owner, post_name, self.post_timer)
        self.params = sum(p.numel() for p in model.parameters())
        self.train, self.train_wall, self.loss = [], [], []
        self.infer, self.infer_wall, self.post = [], [], []
        self.peak_bytes: Optional[float] = None  # whole iteration
        self.fwd_bwd_peak_bytes: Optional[float] = None  # before the optimizer step
        # ratio of each run to the mean of the two stock runs around it: "train", "infer", "*_wall"
        self.pair_ratios: Dict[str, List[float]] = {}


def build_entry(config: str, args, sync, clock, stock: Optional[Entry] = None) -> Entry:
    cfg = setup_cfg(os.path.join(REPO, config) if not os.path.isabs(config) else config, bench_opts(args))
    detector = detector_of(cfg)
    torch.manual_seed(cfg.SEED)
    model = build_model(cfg)
    if stock is not None:
        # the stock weights wherever the shapes agree (the IoU head's layer keeps its own init)
        own = model.state_dict()
        shared = {k: v for k, v in stock.model.state_dict().items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(shared, strict=False)
    if args.weights:
        load_matching_weights(model, args.weights, log=lambda m: print(f"{config}: {m}", flush=True))
    model.train()
    return Entry(config, cfg, model, detector, sync, clock)


def load_matching_weights(model, path: str, log=print) -> int:
    """Load the tensors of the checkpoint ``path`` (Detectron2's ``{"model": state_dict}`` or a bare
    ``state_dict``) whose name and shape match the model's; returns how many were loaded."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise SystemExit(f"--weights {path}: not a state_dict or a {{'model': state_dict}} checkpoint")
    own = model.state_dict()
    shared = {}
    for k, v in state.items():
        if k in own and isinstance(v, (torch.Tensor, np.ndarray)):
            v = torch.as_tensor(v)
            if v.shape == own[k].shape:
                shared[k] = v
    if not shared:
        raise SystemExit(f"--weights {path}: no tensor matches the model's names and shapes")
    model.load_state_dict(shared, strict=False)
    note = "" if len(shared) >= 0.9 * len(own) else " (few: is it this detector family's checkpoint?)"
    log(f"loaded {len(shared)} of the model's {len(own)} tensors from {path}{note}")
    return len(shared)


# ---------------------------------------------------------------------------------- measuring
def train_step(entry: Entry, batch: List[dict], before_step: Callable[[], None] = lambda: None) -> None:
    losses = entry.model(batch)
    total = sum(losses.values())
    entry.optimizer.zero_grad(set_to_none=True)
    total.backward()
    before_step()
    entry.optimizer.step()


def timed_train_step(entry: Entry, batch, sync, clock):
    """One training iteration; records and returns ``(headline-clock time, wall time)``."""
    entry.loss_timer.take()
    times, _ = measure(lambda: train_step(entry, batch), sync, (clock, time.perf_counter))
    entry.train.append(times[0])
    entry.train_wall.append(times[1])
    entry.loss.append(entry.loss_timer.take())
    return times


def timed_inference(entry: Entry, image: dict, sync, clock):
    """Inference on one image (eval mode, no_grad); records and returns the two times."""
    entry.model.eval()
    entry.post_timer.take()
    with torch.no_grad():
        times, _ = measure(lambda: entry.model([image]), sync, (clock, time.perf_counter))
    entry.model.train()
    entry.infer.append(times[0])
    entry.infer_wall.append(times[1])
    entry.post.append(entry.post_timer.take())
    return times


MARK = "benchmark_training::optimizer_step"


def cpu_peak_bytes(fn: Callable[[Callable[[], None]], None]):
    """Peak of the bytes held by PyTorch's CPU allocator while ``fn`` runs, above the start, from
    the profiler's allocation events: ``(whole run, before the mark)``, where ``fn`` is handed a
    function to call at the mark. ``(None, None)`` if the profiler's event tree (private API) is
    not there."""
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile, record_function
    except ImportError:
        return None, None

    def mark():
        with record_function(MARK):
            pass

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(mark)
    try:
        events, mark_ns = [], None
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
            elif node.name == MARK:
                mark_ns = node.start_time_ns
            stack.extend(node.children)
    except (AttributeError, RuntimeError):
        return None, None
    if not events:
        return None, None
    live = peak = 0
    peak_before = None
    for t, size in sorted(events):
        if mark_ns is not None and peak_before is None and t >= mark_ns:
            peak_before = peak
        live += size
        peak = max(peak, live)
    if mark_ns is not None and peak_before is None:
        peak_before = peak
    return float(peak), (float(peak_before) if peak_before is not None else None)


def measure_peak(entry: Entry, batch, device: torch.device):
    """``(peak of the whole iteration, peak of forward + backward)`` in bytes above the start."""
    # free the previous gradients first, so that "above the start" means above the parameters,
    # the optimizer state and the batch, on both devices (the CPU profiler cannot see the frees
    # of blocks allocated before it started)
    entry.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = []

        def at_step():
            torch.cuda.synchronize(device)
            before.append(torch.cuda.max_memory_allocated(device))

        train_step(entry, batch, at_step)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - start), float(before[0] - start)
    return cpu_peak_bytes(lambda mark: train_step(entry, batch, mark))


def sandwich(stock: Entry, methods: List[Entry], kind: str, step: Callable[[Entry], tuple]) -> None:
    """Run ``step`` on ``stock, m1, stock, m2, ..., mn, stock``; each method gets the ratio of its
    times ``(headline clock, wall)`` to the mean of the two stock runs around it, appended to
    ``m.pair_ratios[kind]`` and ``m.pair_ratios[kind + "_wall"]``."""
    before = step(stock)
    for m in methods:
        t = step(m)
        after = step(stock)
        m.pair_ratios.setdefault(kind, []).append(t[0] / (0.5 * (before[0] + after[0])))
        m.pair_ratios.setdefault(kind + "_wall", []).append(t[1] / (0.5 * (before[1] + after[1])))
        before = after


@dataclass
class Group:
    """A stock detector, the methods compared with it, and their fixed batch."""

    stock: Entry
    methods: List[Entry] = field(default_factory=list)
    batch: List[dict] = field(default_factory=list)
    images: List[dict] = field(default_factory=list)  # the batch without annotations


def run_rounds(groups: List[Group], args, device, sync, clock, log=print) -> None:
    """Warm-up rounds, one memory round, then ``args.iters`` timed rounds.

    A timed round runs, per detector, ``stock, m1, stock, m2, ..., stock`` training iterations
    (the methods' order rotated from round to round, the detectors' order alternated), then the
    same sandwich for inference on each of the round's images: every method run sits between two
    stock runs a few seconds apart, so its ratio to their mean cancels slow changes of load.
    """
    everyone = [(e, g) for g in groups for e in [g.stock] + g.methods]
    k_img = args.infer_per_round
    total = args.warmup + 1 + args.iters
    for rnd in range(total):
        t_round = time.perf_counter()
        gc.collect()
        if rnd < args.warmup:
            kind = "warm-up"
            for e, g in everyone:
                train_step(e, g.batch)
                e.model.eval()
                with torch.no_grad():
                    e.model([g.images[0]])
                e.model.train()
        elif rnd == args.warmup:
            kind = "memory"  # after the warm-up: the optimizer state exists by now
            for e, g in everyone:
                e.peak_bytes, e.fwd_bwd_peak_bytes = measure_peak(e, g.batch, device)
        else:
            kind = "timed"
            j = rnd - args.warmup - 1
            order = groups if j % 2 == 0 else groups[::-1]
            order_of_methods = []
            for g in order:
                order_of_methods.append(rotated(g.methods, j))
                sandwich(g.stock, order_of_methods[-1], "train", lambda e: timed_train_step(e, g.batch, sync, clock))
            for i in range(k_img):
                for g, ms in zip(order, order_of_methods):
                    image = g.images[(j * k_img + i) % len(g.images)]
                    sandwich(g.stock, ms, "infer", lambda e: timed_inference(e, image, sync, clock))
        log(f"round {rnd + 1}/{total} ({kind}): {time.perf_counter() - t_round:.1f} s")


# ------------------------------------------------------------------------------------ results
def _ratio(a: Optional[float], b: Optional[float]):
    return a / b if a is not None and b else "n/a"


def _mb(x: Optional[float]):
    return x / 2**20 if x is not None else "n/a"


def make_rows(groups: List[Group], args, device) -> List[dict]:
    rows = []
    threads = torch.get_num_threads() if device.type == "cpu" else ""
    for g in groups:
        stock = g.stock
        for e in [stock] + g.methods:
            pr = e.pair_ratios
            if e is stock:  # by definition
                pr = {k: [1.0] for k in ("train", "train_wall", "infer", "infer_wall")}
            train_q, infer_q = quartiles(pr["train"]), quartiles(pr["infer"])
            rows.append({
                "method": e.method,
                "detector": e.detector,
                "config": e.config,
                "device": device.type,
                "threads": threads,
                "clock": args.clock,
                "batch": len(g.batch),
                "rounds": args.iters,
                "infer_images": args.iters * args.infer_per_round,
                "train_ms": median(e.train) * 1e3,
                "train_ratio": median(pr["train"]),
                "train_ratio_q25": train_q[0],
                "train_ratio_q75": train_q[1],
                "train_wall_ms": median(e.train_wall) * 1e3,
                "train_wall_ratio": median(pr["train_wall"]),
                "loss_ms": median(e.loss) * 1e3,
                "infer_ms": median(e.infer) * 1e3,
                "infer_ratio": median(pr["infer"]),
                "infer_ratio_q25": infer_q[0],
                "infer_ratio_q75": infer_q[1],
                "infer_wall_ms": median(e.infer_wall) * 1e3,
                "infer_wall_ratio": median(pr["infer_wall"]),
                "post_ms": median(e.post) * 1e3,
                "peak_mb": _mb(e.peak_bytes),
                "peak_ratio": _ratio(e.peak_bytes, stock.peak_bytes),
                "fwd_bwd_peak_mb": _mb(e.fwd_bwd_peak_bytes),
                "fwd_bwd_peak_ratio": _ratio(e.fwd_bwd_peak_bytes, stock.fwd_bwd_peak_bytes),
                "params_m": e.params / 1e6,
                "extra_params": e.params - stock.params,
            })
    return rows


def _fmt_ratio(r) -> str:
    if not isinstance(r, float):
        return str(r)
    return f"{r:.3f}" + ("*" if r > TARGET_RATIO else "")


def _fmt_mb(x) -> str:
    return f"{x:.0f}" if isinstance(x, float) else str(x)


def markdown_table(rows: List[dict]) -> str:
    clock = rows[0]["clock"]
    extra = clock != "wall"
    head = ["method", "detector", f"train ms/iter ({clock})", "ratio", "ratio IQR"]
    head += ["wall ratio"] if extra else []
    head += ["loss ms", f"infer ms/img ({clock})", "ratio", "ratio IQR"]
    head += ["wall ratio"] if extra else []
    head += ["post ms", "peak MB", "ratio", "fwd+bwd peak MB", "ratio", "params M", "params vs stock"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["detector"], f"{r['train_ms']:.0f}", _fmt_ratio(r["train_ratio"]),
                 f"{r['train_ratio_q25']:.2f}-{r['train_ratio_q75']:.2f}"]
        cells += [_fmt_ratio(r["train_wall_ratio"])] if extra else []
        cells += [f"{r['loss_ms']:.1f}", f"{r['infer_ms']:.1f}", _fmt_ratio(r["infer_ratio"]),
                  f"{r['infer_ratio_q25']:.2f}-{r['infer_ratio_q75']:.2f}"]
        cells += [_fmt_ratio(r["infer_wall_ratio"])] if extra else []
        cells += [f"{r['post_ms']:.1f}", _fmt_mb(r["peak_mb"]), _fmt_ratio(r["peak_ratio"]),
                  _fmt_mb(r["fwd_bwd_peak_mb"]), _fmt_ratio(r["fwd_bwd_peak_ratio"]), f"{r['params_m']:.3f}",
                  f"{r['extra_params']:+,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(rows: List[dict], header: str, csv_path: str, md_path: str) -> None:
    for path in (csv_path, md_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    with open(md_path, "w") as f:
        f.write(header + "\n\n" + markdown_table(rows) + "\n")


# --------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                   help="IoU-aware configs (paths relative to the repository or absolute); each is "
                   "compared with the stock config of its detector")
    p.add_argument("--iters", type=int, default=8,
                   help="timed rounds (each: one training iteration of every method, between stock ones)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (plus one memory round)")
    p.add_argument("--infer-per-round", type=int, default=2, help="images each model infers per timed round")
    p.add_argument("--batch", type=int, default=None, help="training batch (default SOLVER.IMS_PER_BATCH)")
    p.add_argument("--infer-score-thresh", default="0.0",
                   help="test score threshold of both detectors (default 0: every candidate up to the "
                   "top-k reaches NMS), or 'config'")
    p.add_argument("--weights", default=None,
                   help="trained checkpoint loaded into every model where names and shapes match "
                   "(default: fresh weights); give it configs of the checkpoint's detector family. "
                   "With trained weights and --infer-score-thresh config, inference sees the "
                   "candidates a trained detector sends to NMS")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU; 0: torch's default)")
    p.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                   help="headline clock: wall, or cpu (process CPU time; CPU device only); auto = cpu "
                   "on the CPU device with one thread, else wall. Wall time is recorded either way")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests: 2 rounds, 1 warm-up, batch 2, 1 image a round")
    p.add_argument("--output", default="output/benchmarks/training.csv",
                   help="CSV path; the markdown table goes next to it with the suffix .md")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="KEY VALUE config overrides for every config, last; after --configs, "
                   "separate them with --  (--configs a.yaml -- MODEL.X 1)")
    args = p.parse_args(argv)
    try:
        args.opts = trailing_overrides(args.opts)
    except ValueError as e:
        p.error(str(e))
    if args.quick:
        args.iters, args.warmup, args.infer_per_round = 2, 1, 1
        args.batch = args.batch or 2
    if args.infer_score_thresh != "config":
        try:
            float(args.infer_score_thresh)
        except ValueError:
            p.error(f"--infer-score-thresh: a number or 'config', got {args.infer_score_thresh!r}")
    if args.iters < 1 or args.warmup < 0 or args.infer_per_round < 1:
        p.error("--iters and --infer-per-round must be >= 1, --warmup >= 0")
    if args.clock == "cpu" and not args.device.startswith("cpu"):
        p.error("--clock cpu needs --device cpu")
    return args


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]}, {len(names)} logical cores" if names else platform.machine()
    except OSError:
        return platform.processor() or platform.machine()


def main(argv=None) -> List[dict]:
    """Run the benchmark, print the table, write CSV + markdown; returns the rows."""
    with pinned_threads():  # the caller's thread count comes back (tests)
        return _main(parse_args(argv))


def _main(args) -> List[dict]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if device.type == "cpu" and args.threads != 0:  # 0: torch's default, as in the other benchmarks
        set_threads(args.threads or 1)
    args.clock = clock_name(device, args.clock)
    clock = CLOCKS[args.clock]
    sync = make_sync(device)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    t_start = time.perf_counter()
    with EventStorage(0):
        by_stock: Dict[str, Group] = {}
        for config in args.configs:
            path = config if os.path.isabs(config) else os.path.join(REPO, config)
            cfg = setup_cfg(path, bench_opts(args))
            if method_name(config) == "stock":
                continue
            stock_config = stock_config_for(config, detector_of(cfg))
            if stock_config not in by_stock:
                by_stock[stock_config] = Group(build_entry(stock_config, args, sync, clock))
            group = by_stock[stock_config]
            check_same_setting(group.stock.cfg, cfg, config, stock_config)
            group.methods.append(build_entry(config, args, sync, clock, stock=group.stock))
        if not by_stock:
            raise SystemExit("no IoU-aware config to compare (only stock configs given)")
        groups = list(by_stock.values())
        for g in groups:
            g.batch = fixed_batch(g.stock.cfg, args.batch or g.stock.cfg.SOLVER.IMS_PER_BATCH)
            g.images = [{k: v for k, v in d.items() if k != "instances"} for d in g.batch]
        everyone = [e for g in groups for e in [g.stock] + g.methods]
        log(f"{len(everyone)} models ({', '.join(f'{e.detector} {e.method}' for e in everyone)}); "
            f"batch {len(groups[0].batch)} x {tuple(groups[0].batch[0]['image'].shape)}, device {device}, "
            f"threads {torch.get_num_threads() if device.type == 'cpu' else '-'}, clock {args.clock}; "
            f"set-up {time.perf_counter() - t_start:.1f} s")
        run_rounds(groups, args, device, sync, clock, log)
    rows = make_rows(groups, args, device)

    csv_path = args.output
    md_path = os.path.splitext(csv_path)[0] + ".md"
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    clock_words = {
        "cpu": "process CPU time (one thread: the work itself, not the time spent waiting for a core "
               "on a shared machine; wall-clock ratios in the 'wall ratio' columns)",
        "wall": "wall-clock time",
    }[args.clock]
    header = (
        f"# Training / inference overhead against stock Detectron2\n\n"
        f"{datetime.datetime.now().isoformat(timespec='seconds')}, torch {torch.__version__}, device "
        f"{device.type} ({dev_name}), threads {rows[0]['threads'] or '-'}, clock: {clock_words}. "
        f"Training batch {rows[0]['batch']} images of {tuple(groups[0].batch[0]['image'].shape[1:])} px, "
        f"inference 1 image; "
        f"{args.iters} timed rounds after {args.warmup} warm-up + 1 memory round, "
        f"{args.infer_per_round} images per model per round; test score threshold "
        f"{args.infer_score_thresh}; weights: {args.weights or 'fresh (stock init shared)'}; "
        f"process max RSS {rss:.0f} MB; "
        f"{time.perf_counter() - t_start:.0f} s in all.\n\n"
        "Times are medians; ratio = median over the method's runs of its time / the mean of the two "
        "stock runs (same detector) just before and after it; ratio IQR = 25th-75th percentile of "
        "those ratios; * = above the 5% target. loss ms / post ms: forward "
        "time of the loss computation / of the post-processing (NMS included). peak MB: peak tensor "
        "memory allocated during one training iteration above its start; fwd+bwd: before the "
        "optimizer step (see the tool's docstring)."
    )
    write_outputs(rows, header, csv_path, md_path)
    print()
    print(markdown_table(rows))
    print(f"\nwrote {csv_path} and {md_path}")
    over = [f"{r['detector']} {r['method']} ({k.split('_')[0]} {r[k]:.3f})" for r in rows
            for k in ("train_ratio", "infer_ratio") if r["method"] != "stock" and r[k] > TARGET_RATIO]
    print("above the 5% target: " + (", ".join(over) if over else "none"))
    return rows


if __name__ == "__main__":
    main()
