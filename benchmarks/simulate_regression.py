#!/usr/bin/env python
"""The papers' box-regression simulations, run on the losses of ``iou_aware.losses`` (CPU, minutes).

1. **Zhang et al., Algorithm 1** (Focal-EIoU paper, sec. 5.1, Fig. 6-8). Every anchor is regressed
   to every target by plain gradient descent on one loss, ``B_t = B_{t-1} - mu * dL(B_{t-1}, B_gt)/dB``
   (the paper prints ``+``, which would be gradient *ascent*), for ``T = 200`` iterations with
   ``mu = 0.1`` for ``t <= 0.8 T``, ``0.01`` for ``t <= 0.9 T`` and ``0.001`` after. Recorded per
   iteration: the regression error ``E(t) = sum |B_t - B_gt|`` (L1 over the 4 coordinates and all
   anchor-target pairs, Fig. 7a/8a) and the IoU of every pair (box plots, Fig. 7b/8b).

   - setup 1: ``N = 1000`` points uniform in the 20 x 20 square ``[0, 20]^2``, at each point 7 x 7
     anchors (areas 50, 67, 75, 100, 133, 150, 200 x aspect ratios 1:4, 1:3, 1:2, 1:1, 2:1, 3:1,
     4:1), 7 targets of area 100 centred at (10, 10) with the same 7 aspect ratios;
   - setup 2: ``N = 100`` points uniform in the square of side 2.5 centred at (10, 10), 3 x 3
     anchors (areas 50, 100, 150 x ratios 1:3, 1:1, 3:1), 3 targets of area 100 (ratios 1:3, 1:1, 3:1).

   "Scale" in the paper is the box *area* (the targets have "an area of 100"); an aspect ratio
   ``r = w:h`` gives ``w = sqrt(area r)``, ``h = sqrt(area / r)``.

   Each pair is an independent regression (the gradient of the summed loss w.r.t. one box is that
   box's own gradient), computed for all pairs of a setup at once.

   **Coordinate scale.** Taken literally (coordinates as printed, boxes about 10 units wide,
   ``mu = 0.1``) Algorithm 1 does not converge in 200 iterations: the gradient of an IoU-type loss
   w.r.t. a coordinate is about ``1 / box size``, so a box moves about ``0.1 / 10`` per iteration
   (``--coord-scale 1``: the mean IoU of setup 1 goes from 0.14 to 0.18 with the IoU loss, 0.20
   with GIoU and EIoU). By default all coordinates are divided by ``--coord-scale 10`` before the
   regression, so the targets have area 1 and the anchors 0.5 to 2, the geometry of Zheng et al.'s
   DIoU simulation from which Algorithm 1 derives. IoU is scale-free; the regression error is
   reported in the paper's units (multiplied back by the scale). Dividing the coordinates by ``s``
   multiplies the step *relative to the box size* by ``s^2`` for every loss here except
   Smooth-EIoU with SOT, which is scale-invariant (Peng & Yu eq. 28). With ``s = 10`` the step
   0.1 is large: losses with a non-zero gradient at the optimum oscillate around it until the
   step drops at ``t = 0.8 T``, and losses that enlarge the gradient near the optimum (alpha-IoU,
   IoU-balanced smooth-L1, smooth-L1 + HIoU) overshoot; ``--coord-scale 5`` or ``1`` shows the
   slower regimes.

   Losses: IoU, GIoU, DIoU, CIoU, Efficient IoU (Zhang eq. 7), Focal-EIoU (eq. 10, gamma 0.5,
   per pair as Algorithm 1 writes it, and with the eq. 11 batch normalization ``W_i / mean(W)``),
   alpha-IoU (alpha 3, no penalty), HIoU (Wang & Zhang eq. 10, gamma 0.8), Smooth-EIoU (Peng & Yu
   eq. 23) with and without SOT (eq. 28), smooth-L1 on Detectron2 deltas (weights 1, beta 0.11)
   relative to the initial anchor, Wang & Zhang's full localization loss smooth-L1 + 1.5 HIoU
   (eq. 11, what the project's harmonic configs train), and the IoU-balanced smooth-L1 (Wu & Li
   eq. 3-4, lambda 1.5, ``w_loc = 3.049``, their Table 4 value for lambda 1.5). Wu & Li set
   ``w_loc`` so that the loss sum of the *positives* at the first iteration equals smooth-L1's;
   over all pairs of a setup, most of them with IoU near 0 here, that rule gives ``w_loc`` of
   about 21 (setup 1) and 5 (setup 2), far outside what the paper meant, so the paper's number is
   used (the rule's value is in the summary). Every loss is composed as the detectors compose it
   (``iou_aware.losses.BoxLoss``: deltas, hooks, eq. 11 normalization), on the raw coordinates.

2. **Peng & Yu toy examples** (Fig. 4c, 5a, 5b): a single predicted box ``(0, 0, x, y)`` with ``x, y``
   free (the parameterization of their Fig. 4) regressed to ``(0, 0, s, s)`` by gradient descent
   with a constant step ``--toy-lr``:

   - Fig. 4c: ``1 - EIoU`` (the "-EIoU" loss shifted by its minimum) versus Smooth-EIoU, both with
     SOT, target (0, 0, 1, 1), start (0, 0, 0.5, 0.5);
   - Fig. 5a: Smooth-EIoU with / without SOT, target (0, 0, s, s) and start (0, 0, s/2, s/2) for
     s = 1, 2, 4;
   - Fig. 5b: Smooth-EIoU with / without SOT, target (0, 0, 1, 1), starts (0, 0, 0.5, 0.5),
     (0, 0, 2, 2), (0, 0, 4, 4).

Outputs (under ``--output``): ``zhang_setup{1,2}_curves.csv`` (per loss and iteration: error,
IoU statistics), ``zhang_setup{1,2}_iou_quantiles.csv`` (box-plot statistics), ``peng_toy.csv``,
PNGs ``zhang_setup{k}_error.png`` (Fig. 7a/8a), ``zhang_setup{k}_iou_box.png`` (Fig. 7b/8b),
``zhang_setup{k}_high_iou.png``, ``peng_fig4c.png``, ``peng_fig5a.png``, ``peng_fig5b.png``,
``summary.txt``. ``--projects-dir projects`` also writes each paper's figures to
``projects/<Paper>/figures/``.

Examples::

    python benchmarks/simulate_regression.py                  # default sizes, about 3 minutes on 1 core
    python benchmarks/simulate_regression.py --points1 1000   # the paper's 1000 points (setup 1: 4x longer)
    python benchmarks/simulate_regression.py --coord-scale 1 --no-toy --output output/simulations_scale1
    python benchmarks/simulate_regression.py --quick --output /tmp/sim   # seconds (used by the tests)
"""

import argparse
import csv
import math
import os
import sys
import time
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from iou_aware.geometry import aligned_iou, extended_iou  # noqa: E402
from iou_aware.losses import BoxLoss, smooth_extended_iou_loss, smooth_l1_loss  # noqa: E402

FOCAL_GAMMA = 0.5  # Zhang et al. Fig. 7-8 caption
ALPHA = 3.0  # He et al.: alpha = 3 "performing consistently well"
HIOU_GAMMA = 0.8  # Wang & Zhang Table 5
HIOU_ALPHA = 1.5  # Wang & Zhang Table 5: weight of HIoU next to smooth-L1 (eq. 11)
IOU_BALANCED_LAMBDA = 1.5  # Wu & Li Table 4
IOU_BALANCED_W_LOC = 3.049  # Wu & Li Table 4: w_loc for lambda = 1.5
SMOOTH_L1_BETA = 0.11  # RetinaNet / Wu & Li (delta = 0.111)
HIGH_IOU = (0.5, 0.75, 0.9)  # thresholds of the "fraction of pairs with IoU >= t" columns
INIT_HIGH = 0.5  # "high-quality anchors": initial IoU >= 0.5 (the usual positive threshold)
DEFAULT_COORD_SCALE = 10.0  # targets of area 1 (see the module docstring)


# --------------------------------------------------------------------------------------------
# losses: name -> (label, registered box loss, its arguments[, apply its detector hook])
#
# Each is composed by iou_aware.losses.BoxLoss, the detectors' own composition, on the raw box
# coordinates (normalize_boxes=False: Algorithm 1 regresses the coordinates themselves), with
# regression deltas relative to the initial anchor (AnchorDeltas) and RetinaNet's smooth-L1 beta
# as "the detector's own". Focal-EIoU per pair (Algorithm 1 as written) is the bare loss; with
# its hook it is the eq. 11 batch normalization sum_i W_i L_i / sum_i W_i over all pairs of the
# setup, times the number of pairs as the detector does: each box's gradient is
# W_i / mean(W) * dL_i (W detached), a per-pair step comparable to the other losses' (eq. 11
# literally, without the factor, would divide every step by ~1e5 pairs).
# --------------------------------------------------------------------------------------------

LOSSES = OrderedDict(
    [
        ("iou", ("IoU", "iou", {})),
        ("giou", ("GIoU", "giou", {})),
        ("diou", ("DIoU", "diou", {})),
        ("ciou", ("CIoU", "ciou", {})),
        ("efficient_iou", ("EIoU (efficient)", "efficient_iou", {})),
        ("focal_efficient_iou", ("Focal-EIoU", "focal_efficient_iou", {"gamma": FOCAL_GAMMA}, False)),
        ("focal_efficient_iou_eq11",
         ("Focal-EIoU, eq. 11 norm.", "focal_efficient_iou", {"gamma": FOCAL_GAMMA})),
        ("alpha_iou", ("alpha-IoU (a=3)", "alpha_iou", {"alpha": ALPHA})),
        ("harmonic_iou", ("HIoU (g=0.8)", "harmonic_iou", {"gamma": HIOU_GAMMA, "add_smooth_l1": False})),
        ("smooth_extended_iou_sot", ("Smooth-EIoU + SOT", "smooth_extended_iou", {"sot": True})),
        ("smooth_extended_iou", ("Smooth-EIoU, no SOT", "smooth_extended_iou", {"sot": False})),
        ("smooth_l1", ("smooth-L1 (deltas)", "smooth_l1", {})),
        # Wang & Zhang eq. 11: smooth-L1 on the deltas + alpha * HIoU (alpha 1.5, gamma 0.8), the box
        # loss of the project's harmonic configs (MODEL.IOU_AWARE.HIOU.ADD_SMOOTH_L1 True)
        ("harmonic_full", ("smooth-L1 + 1.5 HIoU", "harmonic_iou",
                           {"gamma": HIOU_GAMMA, "alpha": HIOU_ALPHA, "add_smooth_l1": True})),
        ("iou_balanced_smooth_l1", ("IoU-bal. smooth-L1", "iou_balanced_smooth_l1",
                                    {"lam": IOU_BALANCED_LAMBDA, "loc_weight": IOU_BALANCED_W_LOC})),
    ]
)
DELTA_LOSSES = ("smooth_l1", "iou_balanced_smooth_l1", "harmonic_full")  # drawn dashed


class AnchorDeltas:
    """The box transform of the simulation's delta losses: :func:`encode_deltas` of the predicted
    box relative to its initial anchor (the boxes themselves are regressed, never decoded)."""

    @staticmethod
    def get_deltas(anchors, boxes):
        return encode_deltas(boxes, anchors)


def make_loss(loss_name, w_loc=None):
    """The :class:`iou_aware.losses.BoxLoss` of ``LOSSES[loss_name]``; ``w_loc`` replaces the
    IoU-balanced ``loc_weight``."""
    _, registered, args, *rest = LOSSES[loss_name]
    args = dict(args)
    if w_loc is not None and "loc_weight" in args:
        args["loc_weight"] = w_loc
    return BoxLoss(registered, args, AnchorDeltas(), normalize_boxes=False,
                   compose=rest[0] if rest else True,
                   detector_defaults={"smooth_l1_beta": SMOOTH_L1_BETA})


def encode_deltas(boxes, anchors):
    """Detectron2's ``Box2BoxTransform`` (weights 1, 1, 1, 1): ``(dx, dy, dw, dh)`` of ``boxes``
    relative to ``anchors``. Widths are floored at 1e-6 so a collapsed box keeps a finite log."""
    aw = anchors[:, 2] - anchors[:, 0]
    ah = anchors[:, 3] - anchors[:, 1]
    ax = anchors[:, 0] + 0.5 * aw
    ay = anchors[:, 1] + 0.5 * ah
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6)
    x = 0.5 * (boxes[:, 0] + boxes[:, 2])
    y = 0.5 * (boxes[:, 1] + boxes[:, 3])
    return torch.stack([(x - ax) / aw, (y - ay) / ah, torch.log(w / aw), torch.log(h / ah)], dim=1)


# --------------------------------------------------------------------------------------------
# Zhang et al. Algorithm 1
# --------------------------------------------------------------------------------------------

SETUPS = {
    1: dict(ratios=[1 / 4, 1 / 3, 1 / 2, 1, 2, 3, 4], areas=[50, 67, 75, 100, 133, 150, 200],
            square=(0.0, 20.0), points=1000),
    2: dict(ratios=[1 / 3, 1, 3], areas=[50, 100, 150], square=(10 - 1.25, 10 + 1.25), points=100),
}
TARGET_AREA = 100.0
TARGET_CENTRE = 10.0


def _boxes(cx, cy, w, h):
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def make_setup(setup, num_points=None, seed=0, coord_scale=DEFAULT_COORD_SCALE, dtype=torch.float32):
    """Anchors and targets of Zhang et al.'s setup 1 or 2, as aligned pairs.

    Returns ``(anchors, targets, meta)``: ``(P, 4)`` tensors in coordinates divided by
    ``coord_scale``, pairs ordered (target, point, anchor shape), ``P = A * N * A^2``.
    """
    cfg = SETUPS[setup]
    n = cfg["points"] if num_points is None else int(num_points)
    g = torch.Generator().manual_seed(seed + 1000 * setup)
    lo, hi = cfg["square"]
    pts = lo + (hi - lo) * torch.rand(n, 2, generator=g, dtype=torch.float64)
    ratios = torch.tensor(cfg["ratios"], dtype=torch.float64)
    areas = torch.tensor(cfg["areas"], dtype=torch.float64)
    aw = (areas[:, None] * ratios[None, :]).sqrt().flatten()  # (S,) area-major
    ah = (areas[:, None] / ratios[None, :]).sqrt().flatten()
    anchors = _boxes(pts[:, None, 0], pts[:, None, 1], aw[None], ah[None])  # (N, S, 4)
    tw = (TARGET_AREA * ratios).sqrt()
    th = (TARGET_AREA / ratios).sqrt()
    c = torch.full_like(tw, TARGET_CENTRE)
    targets = _boxes(c, c, tw, th)  # (A, 4)
    a, s = targets.shape[0], anchors.shape[1]
    anchors = anchors[None].expand(a, n, s, 4).reshape(-1, 4)
    targets = targets[:, None, None].expand(a, n, s, 4).reshape(-1, 4)
    meta = dict(setup=setup, points=n, anchors_per_point=s, targets=a, pairs=anchors.shape[0])
    anchors = (anchors / coord_scale).to(dtype).contiguous()
    targets = (targets / coord_scale).to(dtype).contiguous()
    return anchors, targets, meta


def step_size(t, iterations, lr=0.1):
    """Algorithm 1, lines 6-8: ``lr`` for ``t <= 0.8 T``, ``lr / 10`` for ``t <= 0.9 T``,
    ``lr / 100`` after."""
    if t <= 0.8 * iterations:
        return lr
    if t <= 0.9 * iterations:
        return lr * 0.1
    return lr * 0.01


def _quantiles(x, qs=(0.05, 0.25, 0.5, 0.75, 0.95)):
    s, _ = torch.sort(x)
    n = s.numel()
    out = []
    for q in qs:  # linear interpolation between order statistics (numpy's default)
        pos = q * (n - 1)
        i = int(math.floor(pos))
        j = min(i + 1, n - 1)
        out.append(float(s[i] + (s[j] - s[i]) * (pos - i)))
    return out


def regress(loss_name, anchors, targets, iterations=200, lr=0.1, coord_scale=DEFAULT_COORD_SCALE,
            stat_every=5, w_loc=None):
    """Algorithm 1 for one loss: returns a dict of per-iteration numpy arrays (index 0 = before the
    first step) and the box statistics at ``stat_iters``."""
    loss_fn = make_loss(loss_name, w_loc)
    with torch.no_grad():
        iou0 = aligned_iou(anchors, targets)
    init_hi = (iou0 >= INIT_HIGH).to(iou0.dtype)
    n_hi = int(init_hi.sum())
    n_lo = iou0.numel() - n_hi
    rows = {k: [] for k in ["iteration", "lr", "error_sum", "error_mean", "iou_mean",
                            "iou_mean_init_high", "iou_mean_init_low"]
            + [f"frac_iou_ge_{t}" for t in HIGH_IOU]}
    quant = {"iteration": [], "stats": []}
    stat_iters = set(range(0, iterations + 1, stat_every)) | {iterations}
    nonfinite_at = None
    boxes = anchors.clone()

    def record(t, mu):
        with torch.no_grad():
            iou = aligned_iou(boxes, targets)
            err = (boxes - targets).abs().sum(dim=1) * coord_scale
            rows["iteration"].append(t)
            rows["lr"].append(mu)
            rows["error_sum"].append(float(err.sum()))
            rows["error_mean"].append(float(err.mean()))
            rows["iou_mean"].append(float(iou.mean()))
            hi_sum = float(iou @ init_hi)
            rows["iou_mean_init_high"].append(hi_sum / n_hi if n_hi else float("nan"))
            lo_mean = (float(iou.sum()) - hi_sum) / n_lo if n_lo else float("nan")
            rows["iou_mean_init_low"].append(lo_mean)
            for th in HIGH_IOU:
                rows[f"frac_iou_ge_{th}"].append(float((iou >= th).double().mean()))
            if t in stat_iters:
                quant["iteration"].append(t)
                quant["stats"].append(_quantiles(iou) + [float(iou.mean())])

    record(0, 0.0)
    for t in range(1, iterations + 1):
        mu = step_size(t, iterations, lr)
        b = boxes.requires_grad_(True)
        loss, _ = loss_fn(anchors, None, targets, pred_boxes=b)
        (grad,) = torch.autograd.grad(loss.sum(), b)
        boxes = (b - mu * grad).detach()
        if nonfinite_at is None and not bool(torch.isfinite(boxes).all()):
            nonfinite_at = t
        record(t, mu)
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["quantile_iterations"] = np.asarray(quant["iteration"])
    out["quantiles"] = np.asarray(quant["stats"])  # (K, 6): p5, q1, median, q3, p95, mean
    out["nonfinite_at"] = nonfinite_at
    out["initial_iou"] = iou0.numpy()
    out["final_iou"] = aligned_iou(boxes, targets).numpy()
    out["w_loc"] = IOU_BALANCED_W_LOC if w_loc is None else w_loc
    return out


def iou_balanced_w_loc(anchors, targets):
    """Wu & Li's rule applied to all pairs (reported, not used): ``w_loc`` such that the
    IoU-balanced loss sum equals the smooth-L1 sum at the first iteration,
    ``sum_i sL1_i / sum_i IoU_i^lambda sL1_i``."""
    with torch.no_grad():
        sl1 = smooth_l1_loss(encode_deltas(anchors, anchors), encode_deltas(targets, anchors),
                             beta=SMOOTH_L1_BETA).sum(dim=1)
        w = aligned_iou(anchors, targets).pow(IOU_BALANCED_LAMBDA)
        den = float((w * sl1).sum())
    return float(sl1.sum()) / den if den > 0 else 1.0


def run_zhang(setup, losses=None, num_points=None, iterations=200, lr=0.1,
              coord_scale=DEFAULT_COORD_SCALE, seed=0, stat_every=5, log=print):
    """Algorithm 1 for every loss on one setup: ``(meta, {loss: result})``."""
    anchors, targets, meta = make_setup(setup, num_points, seed, coord_scale)
    meta.update(iterations=iterations, lr=lr, coord_scale=coord_scale, seed=seed,
                w_loc=IOU_BALANCED_W_LOC, w_loc_rule_all_pairs=iou_balanced_w_loc(anchors, targets))
    results = OrderedDict()
    for name in losses or list(LOSSES):
        t0 = time.time()
        results[name] = regress(name, anchors, targets, iterations, lr, coord_scale, stat_every)
        r = results[name]
        log(f"  setup {setup} {name:26s} mean IoU {r['iou_mean'][0]:.3f} -> {r['iou_mean'][-1]:.3f}"
            f"  error {r['error_sum'][0]:.4g} -> {r['error_sum'][-1]:.4g}  ({time.time() - t0:.1f} s)"
            + (f"  NON-FINITE from iteration {r['nonfinite_at']}" if r["nonfinite_at"] else ""))
    return meta, results


# --------------------------------------------------------------------------------------------
# Peng & Yu toy examples
# --------------------------------------------------------------------------------------------


def toy_regression(target_size, start_size, power=2.0, sot=True, iterations=200, lr=0.1):
    """Regress ``(0, 0, x, y)`` (``x, y`` free, start ``x = y = start_size``) to
    ``(0, 0, s, s)`` with ``s = target_size`` on ``(1 - EIoU)^power`` (Smooth-EIoU for power 2,
    "-EIoU" + 1 for power 1), gradient descent with constant step ``lr``. float64.

    Returns per-iteration arrays (index 0 = start): ``x``, ``y``, ``eiou`` (extended IoU), ``loss``.
    """
    dtype = torch.float64
    target = torch.tensor([[0.0, 0.0, target_size, target_size]], dtype=dtype)
    xy = torch.tensor([start_size, start_size], dtype=dtype)
    zero = torch.zeros(2, dtype=dtype)
    xs, ys, eious, losses = [], [], [], []

    def record(p):
        box = torch.cat([zero, p])[None]
        e = float(extended_iou(box, target)[0])
        xs.append(float(p[0]))
        ys.append(float(p[1]))
        eious.append(e)
        losses.append((1.0 - e) ** power)

    record(xy)
    for _ in range(iterations):
        p = xy.clone().requires_grad_(True)
        box = torch.cat([zero, p])[None]
        loss = smooth_extended_iou_loss(box, target, power=power, sot=sot, reduction="sum")
        (g,) = torch.autograd.grad(loss, p)
        xy = (p - lr * g).detach()
        record(xy)
    return {k: np.asarray(v) for k, v in zip(("x", "y", "eiou", "loss"), (xs, ys, eious, losses))}


def run_peng(iterations=200, lr=0.1):
    """All toy curves: ``{experiment: {curve label: result}}``."""
    out = OrderedDict()
    out["fig4c"] = OrderedDict(
        [
            ("1 - EIoU (linear), SOT",
             toy_regression(1.0, 0.5, power=1.0, sot=True, iterations=iterations, lr=lr)),
            ("Smooth-EIoU, SOT",
             toy_regression(1.0, 0.5, power=2.0, sot=True, iterations=iterations, lr=lr)),
        ]
    )
    fig5a = OrderedDict()
    for sot in (True, False):
        for s in (1.0, 2.0, 4.0):
            fig5a[f"target {s:g}, start {s / 2:g}, {'SOT' if sot else 'no SOT'}"] = toy_regression(
                s, s / 2, power=2.0, sot=sot, iterations=iterations, lr=lr)
    out["fig5a"] = fig5a
    fig5b = OrderedDict()
    for sot in (True, False):
        for start in (0.5, 2.0, 4.0):
            fig5b[f"target 1, start {start:g}, {'SOT' if sot else 'no SOT'}"] = toy_regression(
                1.0, start, power=2.0, sot=sot, iterations=iterations, lr=lr)
    out["fig5b"] = fig5b
    return out


# --------------------------------------------------------------------------------------------
# output: CSV, PNG
# --------------------------------------------------------------------------------------------

CURVE_COLUMNS = ["iteration", "lr", "error_sum", "error_mean", "iou_mean", "iou_mean_init_high",
                 "iou_mean_init_low"] + [f"frac_iou_ge_{t}" for t in HIGH_IOU]


def write_zhang_csv(meta, results, out_dir):
    k = meta["setup"]
    curves = os.path.join(out_dir, f"zhang_setup{k}_curves.csv")
    with open(curves, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["loss"] + CURVE_COLUMNS)
        for name, r in results.items():
            for i in range(len(r["iteration"])):
                w.writerow([name] + [_fmt(r[c][i]) for c in CURVE_COLUMNS])
    quant = os.path.join(out_dir, f"zhang_setup{k}_iou_quantiles.csv")
    with open(quant, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["loss", "iteration", "p05", "q1", "median", "q3", "p95", "mean"])
        for name, r in results.items():
            for it, row in zip(r["quantile_iterations"], r["quantiles"]):
                w.writerow([name, int(it)] + [_fmt(v) for v in row])
    return [curves, quant]


def write_peng_csv(toy, out_dir):
    path = os.path.join(out_dir, "peng_toy.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "curve", "iteration", "x", "y", "extended_iou", "loss"])
        for exp, curves in toy.items():
            for label, r in curves.items():
                for i in range(len(r["x"])):
                    w.writerow([exp, label, i, _fmt(r["x"][i]), _fmt(r["y"][i]), _fmt(r["eiou"][i]),
                                _fmt(r["loss"][i])])
    return [path]


def _fmt(v):
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.7g}"


def _colors(n):
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


DPI = 80


def _save(fig, path):
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_error(meta, results, path, losses=None):
    """Fig. 7a / 8a: the regression-error sum per iteration (log scale)."""
    names = [n for n in (losses or results) if n in results]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for c, n in zip(_colors(len(names)), names):
        r = results[n]
        ax.plot(r["iteration"], np.maximum(r["error_sum"], 1e-12), color=c, lw=1.4,
                ls="--" if n in DELTA_LOSSES else "-", label=LOSSES[n][0])
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("regression error sum  E(t) = sum |B - B_gt|")
    ax.set_title(_setup_title(meta))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def _setup_title(meta):
    return (f"Zhang et al. Alg. 1, setup {meta['setup']}: {meta['points']} points x "
            f"{meta['anchors_per_point']} anchors x {meta['targets']} targets "
            f"(coord / {meta['coord_scale']:g})")


def plot_iou_box(meta, results, path, losses=None, num_boxes=9):
    """Fig. 7b / 8b: box plots of the IoU of all pairs at selected iterations, one panel per loss.
    Boxes: quartiles and median; whiskers: 5th and 95th percentiles; dot: mean."""
    names = [n for n in (losses or results) if n in results]
    cols = min(5, len(names))
    rows = int(math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.3 * rows), sharey=True, squeeze=False)
    for ax, n in zip(axes.flat, names):
        r = results[n]
        its = r["quantile_iterations"]
        pick = np.unique(np.linspace(0, len(its) - 1, min(num_boxes, len(its))).round().astype(int))
        stats = []
        for i in pick:
            p5, q1, med, q3, p95, mean = r["quantiles"][i]
            stats.append(dict(med=med, q1=q1, q3=q3, whislo=p5, whishi=p95, mean=mean, fliers=[],
                              label=str(int(its[i]))))
        ax.bxp(stats, showmeans=True, showfliers=False, widths=0.6,
               meanprops=dict(marker="o", markersize=3, markerfacecolor="k", markeredgecolor="k"),
               medianprops=dict(color="C3"))
        ax.set_title(LOSSES[n][0], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("IoU", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("iteration", fontsize=8)
    fig.suptitle(_setup_title(meta) + "\nbox: quartiles, whiskers: 5th-95th percentile, dot: mean",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_high_iou(meta, results, path, losses=None):
    """Mean IoU of all pairs and of the initially high-quality pairs, and the fraction of pairs
    with IoU >= 0.9, per iteration."""
    names = [n for n in (losses or results) if n in results]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for c, n in zip(_colors(len(names)), names):
        r = results[n]
        ls = "--" if n in DELTA_LOSSES else "-"
        axes[0].plot(r["iteration"], r["iou_mean"], color=c, ls=ls, lw=1.3, label=LOSSES[n][0])
        axes[1].plot(r["iteration"], r["frac_iou_ge_0.9"], color=c, ls=ls, lw=1.3, label=LOSSES[n][0])
    axes[0].set_ylabel("mean IoU (all pairs)")
    axes[1].set_ylabel("fraction of pairs with IoU >= 0.9")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(_setup_title(meta), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_focus(zhang, losses, title, path):
    """One row per setup: error sum, mean IoU (solid: all pairs, dashed: pairs with initial IoU >=
    0.5) and the fraction of pairs with IoU >= 0.9, for a few losses."""
    setups = list(zhang)
    fig, axes = plt.subplots(len(setups), 3, figsize=(10.5, 2.9 * len(setups)), squeeze=False)
    for row, k in zip(axes, setups):
        meta, results = zhang[k]
        names = [n for n in losses if n in results]
        for c, n in zip(_colors(len(names)), names):
            r = results[n]
            lab = LOSSES[n][0]
            row[0].plot(r["iteration"], np.maximum(r["error_sum"], 1e-12), color=c, lw=1.4, label=lab)
            row[1].plot(r["iteration"], r["iou_mean"], color=c, lw=1.4, label=lab)
            row[1].plot(r["iteration"], r["iou_mean_init_high"], color=c, lw=1.1, ls="--")
            row[2].plot(r["iteration"], r["frac_iou_ge_0.9"], color=c, lw=1.4, label=lab)
        row[0].set_yscale("log")
        row[0].set_ylabel(f"setup {k}: error sum")
        row[1].set_ylabel("mean IoU (-- initial IoU >= 0.5)")
        row[2].set_ylabel("fraction IoU >= 0.9")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.set_xlabel("iteration")
    axes[0, 2].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_fig4c(toy, path):
    curves = toy["fig4c"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for c, (label, r) in zip(_colors(len(curves)), curves.items()):
        it = np.arange(len(r["eiou"]))
        axes[0].plot(it, 1 - r["eiou"], color=c, lw=1.4, label=label)
        axes[1].plot(it, r["x"], color=c, lw=1.4, label=f"{label}: x")
    axes[0].set_ylabel("1 - EIoU (distance to the optimum)")
    axes[1].set_ylabel("x (= y) of the predicted box (0, 0, x, y)")
    axes[1].axhline(1.0, color="k", lw=0.8, ls=":")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Peng & Yu Fig. 4c: target (0,0,1,1), start (0,0,0.5,0.5), both with SOT", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_fig5(toy, key, title, path):
    curves = toy[key]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = _colors(3)
    for i, (label, r) in enumerate(curves.items()):
        sot = label.endswith(", SOT")
        ax.plot(np.arange(len(r["loss"])), np.maximum(r["loss"], 1e-16), color=colors[i % 3],
                ls="-" if sot else "--", lw=2.2 if sot else 1.4, alpha=0.8, label=label)
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-12)  # below: the eps = 1e-7 of the EIoU denominator, a numerical floor
    ax.set_xlabel("iteration")
    ax.set_ylabel("Smooth-EIoU loss (1 - EIoU)^2")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


PROJECT_FIGURES = {
    "FocalEIoU": ["iou", "giou", "ciou", "efficient_iou", "focal_efficient_iou",
                  "focal_efficient_iou_eq11"],
    "ExtendedIoU": ["iou", "giou", "smooth_extended_iou_sot", "smooth_extended_iou", "smooth_l1"],
    "AlphaIoU": ["iou", "alpha_iou", "giou"],
    "HarmonicDetection": ["iou", "harmonic_iou", "smooth_l1", "harmonic_full"],
    "IoUBalanced": ["smooth_l1", "iou_balanced_smooth_l1", "iou"],
}
PROJECT_TITLES = {
    "FocalEIoU": "Focal-EIoU vs EIoU and the IoU family (Zhang et al. Alg. 1)",
    "ExtendedIoU": "Smooth-EIoU with / without SOT (Peng & Yu) in Zhang et al.'s Alg. 1",
    "AlphaIoU": "alpha-IoU (alpha = 3) vs IoU in Zhang et al.'s Alg. 1",
    "HarmonicDetection": "HIoU (gamma = 0.8) vs IoU, smooth-L1 + 1.5 HIoU vs smooth-L1 "
                         "in Zhang et al.'s Alg. 1",
    "IoUBalanced": "IoU-balanced smooth-L1 (lambda = 1.5) vs smooth-L1 in Zhang et al.'s Alg. 1",
}


def write_project_figures(zhang, toy, projects_dir, coord_scale=DEFAULT_COORD_SCALE):
    """Each paper's figures under ``projects_dir/<Paper>/figures/``; file names get a ``_scale<s>``
    suffix when the coordinate scale is not the default."""
    written = []
    suffix = "" if coord_scale == DEFAULT_COORD_SCALE else f"_scale{coord_scale:g}"
    for proj, losses in PROJECT_FIGURES.items():
        fdir = os.path.join(projects_dir, proj, "figures")
        os.makedirs(fdir, exist_ok=True)
        if zhang:
            title = f"{PROJECT_TITLES[proj]}, coordinates / {coord_scale:g}"
            written.append(plot_focus(zhang, losses, title,
                                      os.path.join(fdir, f"simulation_focus{suffix}.png")))
        if proj == "FocalEIoU":
            for k, (meta, results) in zhang.items():
                base = os.path.join(fdir, f"setup{k}")
                written.append(plot_error(meta, results, f"{base}_error{suffix}.png"))
                written.append(plot_iou_box(meta, results, f"{base}_iou_box{suffix}.png"))
        if proj == "ExtendedIoU" and toy:
            written.append(plot_fig4c(toy, os.path.join(fdir, "fig4c.png")))
            written.append(plot_fig5(toy, "fig5a", FIG5A_TITLE, os.path.join(fdir, "fig5a.png")))
            written.append(plot_fig5(toy, "fig5b", FIG5B_TITLE, os.path.join(fdir, "fig5b.png")))
    return written


FIG5A_TITLE = "Peng & Yu Fig. 5a: target (0,0,s,s), start (0,0,s/2,s/2), s = 1, 2, 4"
FIG5B_TITLE = "Peng & Yu Fig. 5b: target (0,0,1,1), start (0,0,p,p), p = 0.5, 2, 4"


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------


def summary_lines(zhang, toy):
    lines = []
    for k, (meta, results) in zhang.items():
        lines.append(_setup_title(meta) + f", T = {meta['iterations']}, lr = {meta['lr']:g}")
        lines.append(f"  IoU-balanced w_loc = {meta['w_loc']:g} (Wu & Li's first-step rule over all "
                     f"pairs would give {meta['w_loc_rule_all_pairs']:.3g})")
        lines.append(f"  {'loss':26s} {'mean IoU 0 -> T':>17s} {'IoU>=0.9':>9s} {'init>=0.5':>10s}"
                     f" {'error sum':>11s} {'error/pair':>11s}")
        for n, r in results.items():
            lines.append(
                f"  {n:26s} {r['iou_mean'][0]:7.3f} -> {r['iou_mean'][-1]:6.3f} "
                f"{r['frac_iou_ge_0.9'][-1]:9.3f} {r['iou_mean_init_high'][-1]:10.3f}"
                f" {r['error_sum'][-1]:11.4g} {r['error_mean'][-1]:11.4g}"
                + ("  (non-finite)" if r["nonfinite_at"] else ""))
    if toy:
        lines.append("Peng & Yu toy examples: final 1 - EIoU "
                     "(max |1 - EIoU| over the last 20 iterations)")
        for exp, curves in toy.items():
            for label, r in curves.items():
                tail = np.abs(1 - r["eiou"][-20:]).max()
                lines.append(f"  {exp:6s} {label:36s} {1 - r['eiou'][-1]:10.3g} ({tail:.3g})")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/simulations", help="folder for CSV, PNG and summary")
    p.add_argument("--quick", action="store_true",
                   help="tiny run (few points, 40 iterations, 60 toy iterations): seconds, for tests")
    p.add_argument("--points1", type=int, default=250,
                   help="points of setup 1 (paper: 1000; default 250 keeps the run to a few minutes)")
    p.add_argument("--points2", type=int, default=100, help="points of setup 2 (paper: 100)")
    p.add_argument("--iterations", type=int, default=200, help="T of Algorithm 1 (paper: 200)")
    p.add_argument("--lr", type=float, default=0.1, help="first step of the schedule (paper: 0.1)")
    p.add_argument("--coord-scale", type=float, default=DEFAULT_COORD_SCALE,
                   help="divide all coordinates by this before regressing (1 = the paper's raw units)")
    p.add_argument("--seed", type=int, default=0, help="seed of the points and boxes")
    p.add_argument("--setups", type=int, nargs="*", default=[1, 2], choices=[1, 2],
                   help="Algorithm 1 set-ups to run (1: 7x7 anchors to 7 targets, 2: 3x3 to 3)")
    p.add_argument("--losses", nargs="*", default=list(LOSSES), choices=list(LOSSES),
                   help="losses to regress with (default: all)")
    p.add_argument("--toy-iterations", type=int, default=200, help="iterations of the Peng & Yu examples")
    p.add_argument("--toy-lr", type=float, default=0.1, help="constant step of the Peng & Yu examples")
    p.add_argument("--no-toy", action="store_true", help="skip the Peng & Yu examples")
    p.add_argument("--projects-dir", default="",
                   help="also write each paper's figures to PROJECTS_DIR/<Paper>/figures/")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    args = p.parse_args(argv)
    if args.quick:
        args.points1, args.points2 = min(args.points1, 6), min(args.points2, 12)
        args.iterations = min(args.iterations, 40)
        args.toy_iterations = min(args.toy_iterations, 60)
    torch.set_num_threads(max(1, args.threads))
    os.makedirs(args.output, exist_ok=True)
    t_start = time.time()
    written = []

    zhang = OrderedDict()
    for k in args.setups:
        n = args.points1 if k == 1 else args.points2
        print(f"Zhang et al. Algorithm 1, setup {k} ({n} points, {args.iterations} iterations, "
              f"coordinates / {args.coord_scale:g}):")
        meta, results = run_zhang(k, args.losses, n, args.iterations, args.lr, args.coord_scale,
                                  args.seed, stat_every=1 if args.quick else 5)
        zhang[k] = (meta, results)
        written += write_zhang_csv(meta, results, args.output)
        base = os.path.join(args.output, f"zhang_setup{k}")
        written.append(plot_error(meta, results, f"{base}_error.png"))
        written.append(plot_iou_box(meta, results, f"{base}_iou_box.png"))
        written.append(plot_high_iou(meta, results, f"{base}_high_iou.png"))

    toy = None
    if not args.no_toy:
        print(f"Peng & Yu toy examples ({args.toy_iterations} iterations, step {args.toy_lr:g})")
        toy = run_peng(args.toy_iterations, args.toy_lr)
        written += write_peng_csv(toy, args.output)
        written.append(plot_fig4c(toy, os.path.join(args.output, "peng_fig4c.png")))
        written.append(plot_fig5(toy, "fig5a", FIG5A_TITLE, os.path.join(args.output, "peng_fig5a.png")))
        written.append(plot_fig5(toy, "fig5b", FIG5B_TITLE, os.path.join(args.output, "peng_fig5b.png")))

    if args.projects_dir:
        written += write_project_figures(zhang, toy, args.projects_dir, args.coord_scale)

    lines = summary_lines(zhang, toy)
    cli = " ".join(argv if argv is not None else sys.argv[1:])
    lines.append(f"command: python benchmarks/simulate_regression.py {cli}")
    lines.append(f"total time {time.time() - t_start:.0f} s")
    summary = os.path.join(args.output, "summary.txt")
    with open(summary, "w") as f:
        f.write("\n".join(lines) + "\n")
    written.append(summary)
    print("\n".join(lines))
    print("files written:")
    for w in written:
        print("  " + w)
    return zhang, toy, written


if __name__ == "__main__":
    main()
