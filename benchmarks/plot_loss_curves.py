#!/usr/bin/env python
"""Plot every loss family of ``iou_aware.losses`` and its knobs: loss and |gradient| curves.

In the spirit of alpha-IoU Fig. 1 (He et al.: loss and |dL/dIoU| versus IoU), FocalL1 Fig. 4
(Zhang et al.: loss and gradient versus regression error) and IoU-balanced Fig. 1 (Wu & Li:
gradient norm versus the delta ``d^cx`` and ``d^w``, with ``w_loc`` from their Table 4).

Box losses are evaluated on real boxes: a predicted box is moved against a fixed unit target
``(0, 0, 1, 1)`` along three sweeps, one per row of each figure,

- *slide*: same size, shifted along x by ``t`` (IoU = (1 - t) / (1 + t));
- *shrink*: concentric, scaled by ``s`` (IoU = s^2);
- *stretch*: concentric, width multiplied by ``k >= 1`` (IoU = 1 / k; changes the aspect ratio);

and the columns show the loss versus IoU, ``|dL/dIoU|`` along the sweep (``|dL/dt| / |dIoU/dt|``,
exactly the alpha-IoU Fig. 1 quantity for losses that depend on the IoU only) and the norm of the
gradient with respect to the 4 predicted coordinates (what the optimizer sees). The IoU of each
point is computed with :func:`iou_aware.geometry.aligned_iou`. A separate figure shows the
plain IoU-family losses versus the centre offset, into the disjoint range where only the
penalised losses still have a gradient.

Example::

    python benchmarks/plot_loss_curves.py --output output/plots/losses
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from iou_aware.geometry import aligned_iou  # noqa: E402
from iou_aware.losses import (  # noqa: E402
    alpha_iou_loss,
    ciou_loss,
    diou_loss,
    efficient_iou_loss,
    focal_efficient_iou_loss,
    focal_l1_loss,
    giou_loss,
    harmonic_iou_loss,
    iou_balanced_smooth_l1_loss,
    iou_loss,
    smooth_extended_iou_loss,
    smooth_l1_loss,
)

DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# sweeps of a predicted box against the unit target
# --------------------------------------------------------------------------------------------


def _sweep(kind, n):
    """Return ``(t, pred)``: the sweep parameter (a leaf with grad) and the ``(n, 4)`` boxes."""
    if kind == "slide":
        t = torch.linspace(1e-3, 0.98, n, dtype=DTYPE)
    elif kind == "shrink":
        t = torch.linspace(0.1, 0.999, n, dtype=DTYPE)
    elif kind == "stretch":
        t = torch.linspace(1.001, 10.0, n, dtype=DTYPE)
    elif kind == "offset":  # slide into the disjoint range: centre offset in widths
        t = torch.linspace(1e-3, 3.0, n, dtype=DTYPE)
    else:
        raise ValueError(kind)
    t = t.requires_grad_(True)
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    if kind in ("slide", "offset"):
        pred = torch.stack([t, zero, one + t, one], dim=1)
    elif kind == "shrink":
        lo, hi = 0.5 - t / 2, 0.5 + t / 2
        pred = torch.stack([lo, lo, hi, hi], dim=1)
    else:
        pred = torch.stack([0.5 - t / 2, zero, 0.5 + t / 2, one], dim=1)
    return t, pred


SWEEPS = {
    "slide": "slide (x shift)",
    "shrink": "shrink (concentric scale)",
    "stretch": "stretch (width x k)",
}


def _box_curves(fn, kind, n):
    """Loss, IoU, |dL/dIoU| along the sweep, |grad wrt the 4 coordinates|, sweep parameter."""
    t, pred = _sweep(kind, n)
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=DTYPE).expand(n, 4)
    loss = fn(pred, target)
    iou = aligned_iou(pred, target)
    (dl_dt,) = torch.autograd.grad(loss.sum(), t, retain_graph=True)
    (diou_dt,) = torch.autograd.grad(iou.sum(), t)
    leaf = pred.detach().requires_grad_(True)
    (g_box,) = torch.autograd.grad(fn(leaf, target).sum(), leaf)
    d_iou = (dl_dt / diou_dt).abs()
    return (loss.detach(), iou.detach(), d_iou.detach(), g_box.norm(dim=1), t.detach())


def _family_figure(title, curves, path, n):
    """``curves``: list of (label, fn, style kwargs). One row per sweep, 3 columns."""
    fig, axes = plt.subplots(len(SWEEPS), 3, figsize=(15, 4 * len(SWEEPS)), squeeze=False)
    for row, (kind, kind_label) in enumerate(SWEEPS.items()):
        ax_l, ax_d, ax_g = axes[row]
        for label, fn, style in curves:
            loss, iou, d_iou, g_box, _ = _box_curves(fn, kind, n)
            ax_l.plot(iou, loss, label=label, **style)
            ax_d.plot(iou, d_iou, label=label, **style)
            ax_g.plot(iou, g_box, label=label, **style)
        ax_l.set_ylabel(f"{kind_label}\nloss")
        ax_d.set_ylabel("|dL/dIoU| along the sweep")
        ax_g.set_ylabel("|dL/d(x1,y1,x2,y2)|")
        for ax in (ax_l, ax_d, ax_g):
            ax.set_xlabel("IoU")
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def plot_iou_family(out, n):
    """Plain IoU-based losses versus the centre offset, including disjoint boxes.

    Two rows: the same-size box slides along x, then along the diagonal (x and y). Several
    losses coincide on these paths (e.g. GIoU's penalty is 0 while a box slides along x with the
    same height), hence the distinct line styles.
    """
    curves = [
        ("IoU: 1 - IoU", iou_loss, {"lw": 3.5, "alpha": 0.5}),
        ("GIoU", giou_loss, {"lw": 2.5, "ls": "--"}),
        ("DIoU", diou_loss, {"lw": 3.0, "alpha": 0.6}),
        ("CIoU", ciou_loss, {"ls": "-."}),
        ("EIoU (efficient, Zhang eq. 7)", efficient_iou_loss, {"ls": ":", "lw": 2.0}),
        ("1 - extended IoU (Peng eq. 23, power 1, no SOT)",
         lambda p, t: smooth_extended_iou_loss(p, t, power=1.0, sot=False), {"lw": 1.0}),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=DTYPE).expand(n, 4)
    for row, diagonal in enumerate((False, True)):
        for label, fn, style in curves:
            t, pred = _sweep("offset", n)
            if diagonal:
                pred = pred + torch.stack([0 * t, t, 0 * t, t], dim=1)
            leaf = pred.detach().requires_grad_(True)
            loss = fn(leaf, target)
            (g,) = torch.autograd.grad(loss.sum(), leaf)
            axes[row][0].plot(t.detach(), loss.detach(), label=label, **style)
            axes[row][1].plot(t.detach(), g.norm(dim=1), label=label, **style)
        path_label = "diagonal (x and y)" if diagonal else "along x"
        for ax, ylab in zip(axes[row], (f"slide {path_label}\nloss", "|dL/d(x1,y1,x2,y2)|")):
            ax.axvline(1.0, color="k", lw=0.8, ls=":")
            ax.set_xlabel("offset t / width (boxes disjoint right of the dotted line)")
            ax.set_ylabel(ylab)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("IoU-family losses, unit target, same-size box offset by t")
    fig.tight_layout()
    path = os.path.join(out, "iou_family_offset.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_alpha_iou(out, n):
    curves = [
        (f"alpha = {a:g}" + (" (IoU loss)" if a == 1 else ""),
         (lambda a: lambda p, t: alpha_iou_loss(p, t, alpha=a))(a), {})
        for a in (0.5, 1.0, 2.0, 3.0)
    ]
    curves.append(("alpha = 3, CIoU penalty", lambda p, t: alpha_iou_loss(p, t, alpha=3.0, penalty="ciou"),
                   {"ls": "--"}))
    return _family_figure("alpha-IoU: 1 - IoU^alpha (He et al. eq. 3; cf. their Fig. 1)", curves,
                          os.path.join(out, "alpha_iou.png"), n)


def plot_focal_efficient_iou(out, n):
    curves = [
        (f"gamma = {g:g}" + (" (EIoU)" if g == 0 else ""),
         (lambda g: lambda p, t: focal_efficient_iou_loss(p, t, gamma=g))(g), {})
        for g in (0.0, 0.25, 0.5, 1.0)
    ]
    return _family_figure("Focal-EIoU: IoU^gamma (detached) x EIoU (Zhang et al. eq. 10)", curves,
                          os.path.join(out, "focal_efficient_iou.png"), n)


def plot_harmonic_iou(out, n):
    curves = [
        (f"gamma = {g:g}" + (" (IoU loss)" if g == 0 else ""),
         (lambda g: lambda p, t: harmonic_iou_loss(p, t, gamma=g))(g), {})
        for g in (0.0, 0.5, 0.8, 1.0)
    ]
    return _family_figure("Harmonic IoU: (1 + IoU)^gamma (1 - IoU) (Wang & Zhang eq. 10; gamma <= 1)",
                          curves, os.path.join(out, "harmonic_iou.png"), n)


def plot_smooth_extended_iou(out, n):
    curves = [
        (f"power = {p:g}, no SOT", (lambda pw: lambda p, t: smooth_extended_iou_loss(p, t, power=pw, sot=False))(p), {})
        for p in (1.0, 1.5, 2.0, 3.0)
    ]
    curves.append(("power = 2, SOT (gradient x U_e)",
                   lambda p, t: smooth_extended_iou_loss(p, t, power=2.0, sot=True), {"ls": "--"}))
    return _family_figure("Smooth-EIoU: (1 - I_e/U_e)^power (Peng & Yu eq. 23, SOT eq. 28)", curves,
                          os.path.join(out, "smooth_extended_iou.png"), n)


def plot_focal_l1(out, n):
    """Loss and |gradient| versus the regression error x (Zhang et al. Fig. 4)."""
    x = torch.linspace(0.0, 3.0, n, dtype=DTYPE).requires_grad_(True)
    zero = torch.zeros_like(x)
    curves = [(f"FocalL1 beta = {b:.3g}" + (" (1/e)" if abs(b - 1 / math.e) < 1e-12 else ""),
               (lambda b: lambda a: focal_l1_loss(a, zero, beta=b))(b), {})
              for b in (1 / math.e, 0.5, 0.8, 1.0)]
    curves += [
        ("smooth-L1 beta = 0.11", lambda a: smooth_l1_loss(a, zero, beta=0.11), {"ls": "--", "color": "gray"}),
        ("L1", lambda a: smooth_l1_loss(a, zero, beta=0.0), {"ls": ":", "color": "k"}),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, fn, style in curves:
        loss = fn(x)
        (g,) = torch.autograd.grad(loss.sum(), x)
        axes[0].plot(x.detach(), loss.detach(), label=label, **style)
        axes[1].plot(x.detach(), g.abs(), label=label, **style)
    for b in (1 / math.e, 0.5, 0.8, 1.0):
        axes[1].plot([1 / (math.e * b)], [1.0], "k.", ms=5)
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("|dL/dx| (max 1 at x = 1/(e beta), dots)")
    for ax in axes:
        ax.set_xlabel("regression error x = |input - target|")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("FocalL1 (Zhang et al. eq. 8-9, alpha = e beta; cf. their Fig. 4)")
    fig.tight_layout()
    path = os.path.join(out, "focal_l1.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Wu & Li Table 4: lambda -> w_loc keeping the localization loss sum at the first iteration
IOU_BALANCED_SETTINGS = ((0.0, 1.0), (0.5, 1.575), (1.0, 2.226), (1.5, 3.049), (1.8, 3.649))


def plot_iou_balanced(out, n):
    """Gradient norm versus d^cx and d^w (Wu & Li Fig. 1), IoU from the decoded box.

    The anchor equals the unit target (``w_s = w_t``); a delta ``d^cx`` shifts the box by
    ``d^cx * w`` (IoU = (1 - |d|) / (1 + |d|), eq. 9), a delta ``d^w`` scales its width by
    ``exp(d^w)`` (IoU = exp(-|d|), eq. 10). The IoU is computed from the boxes, not the formulas.
    """
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=DTYPE).expand(n, 4)
    for row, coord in enumerate(("cx", "w")):
        d = torch.linspace(0.0, 0.99 if coord == "cx" else 2.0, n, dtype=DTYPE)
        zero = torch.zeros_like(d)
        if coord == "cx":
            pred = torch.stack([d, zero, 1 + d, zero + 1], dim=1)
            deltas = torch.stack([d, zero, zero, zero], dim=1)
        else:
            half = torch.exp(d) / 2
            pred = torch.stack([0.5 - half, zero, 0.5 + half, zero + 1], dim=1)
            deltas = torch.stack([zero, zero, d, zero], dim=1)
        ious = aligned_iou(pred, target)
        for lam, w_loc in IOU_BALANCED_SETTINGS:
            leaf = deltas.clone().requires_grad_(True)
            loss = iou_balanced_smooth_l1_loss(leaf, torch.zeros_like(leaf), ious, lam=lam, beta=0.111,
                                               loc_weight=w_loc)
            (g,) = torch.autograd.grad(loss.sum(), leaf)
            label = f"lambda = {lam:g}, w_loc = {w_loc:g}" + (" (smooth-L1)" if lam == 0 else "")
            axes[row][0].plot(d, loss.detach(), label=label)
            axes[row][1].plot(d, g.norm(dim=1), label=label)
        axes[row][0].set_ylabel(f"w(IoU) x smooth-L1 (d^{coord} only)")
        axes[row][1].set_ylabel("|dL/dd| (IoU weight detached, eq. 6)")
        for ax in axes[row]:
            ax.set_xlabel(f"d^{coord}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("IoU-balanced smooth-L1 (Wu & Li eq. 3-4, beta = 0.111; cf. their Fig. 1)")
    fig.tight_layout()
    path = os.path.join(out, "iou_balanced_smooth_l1.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PLOTS = (
    plot_iou_family,
    plot_alpha_iou,
    plot_focal_efficient_iou,
    plot_harmonic_iou,
    plot_smooth_extended_iou,
    plot_focal_l1,
    plot_iou_balanced,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="output/plots/losses", help="folder for the PNGs")
    parser.add_argument("--points", type=int, default=300, help="points per curve")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    written = [plot(args.output, args.points) for plot in PLOTS]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
