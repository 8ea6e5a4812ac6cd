#!/usr/bin/env python
"""Plot detection score versus IoU with the ground truth, one panel per saved evaluation.

For each ``coco_instances_results.json`` (written by ``IoUAwareCOCOEvaluator``/``COCOEvaluator`` in
``OUTPUT_DIR/inference/<dataset>/``) the detections are matched to the ground truth with COCO's
own greedy matching at IoU >= 0.5 (``iou_aware.evaluation.match_results_to_gt``, the code the
evaluator uses), then drawn as a scatter of IoU (x) against score (y) with the mean score per IoU
bin (Wu & Li Fig. 2) and the diagonal score = IoU. The panel title gives the number of matched
detections, Pearson and Spearman correlation and AIC (Wang & Zhang eq. 14). Runs are drawn side by
side, so a method that reconciles score and localization shows at a glance.

Examples::

    python benchmarks/plot_consistency.py baseline/inference/coco_2017_val/coco_instances_results.json \\
        harmonic/inference/coco_2017_val/coco_instances_results.json \\
        --labels baseline harmonic --dataset coco_2017_val --output consistency.png

    python benchmarks/plot_consistency.py run/coco_instances_results.json --gt-json val.json \\
        --pred-iou --output pred_iou.png     # predicted IoU (IoU head) instead of the score
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from iou_aware.evaluation import (  # noqa: E402
    DEFAULT_IOU_BIN_EDGES,
    consistency_metrics,
    iou_binned_means,
    match_results_to_gt,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="one or more coco_instances_results.json files")
    parser.add_argument(
        "--labels", nargs="+", help="one label per results file (default: its folder)"
    )
    gt = parser.add_mutually_exclusive_group(required=True)
    gt.add_argument("--gt-json", help="ground truth in COCO json format")
    gt.add_argument("--dataset", help="a registered Detectron2 dataset name (e.g. coco_2017_val)")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--iou-type", default="bbox", choices=["bbox", "segm"])
    parser.add_argument(
        "--max-dets", type=int, default=100, help="detections per image (COCO: 100)"
    )
    parser.add_argument(
        "--pred-iou",
        action="store_true",
        help="plot the predicted IoU (IoU head, 'pred_iou' in the results) instead of the score",
    )
    parser.add_argument(
        "--max-points", type=int, default=20000, help="subsample the scatter to this many"
    )
    parser.add_argument("--dpi", type=int, default=120)
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.results):
        parser.error(
            f"--labels got {len(args.labels)} labels for {len(args.results)} results files"
        )
    return args


def _ground_truth_json(args) -> str:
    if args.gt_json:
        return args.gt_json
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import iou_aware.data  # noqa: F401  (registers the project's synthetic datasets)

    meta = MetadataCatalog.get(args.dataset)
    if args.dataset.startswith("synthetic_shapes_"):
        iou_aware.data.ensure_synthetic_dataset(args.dataset)
    if hasattr(meta, "json_file"):
        return meta.json_file
    if args.dataset not in DatasetCatalog.list():
        raise SystemExit(f"dataset {args.dataset!r} is not registered; pass --gt-json instead")
    from detectron2.data.datasets.coco import convert_to_coco_json

    path = os.path.join(
        tempfile.mkdtemp(prefix="plot_consistency_"), f"{args.dataset}_coco_format.json"
    )
    convert_to_coco_json(args.dataset, path, allow_cached=False)
    return path


def load_coco(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def plot(runs, output, y_name="score", max_points=20000, dpi=120, seed=0):
    """Draw one panel per run. ``runs``: list of (label, MatchedDetections)."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(
        1, len(runs), figsize=(4.6 * len(runs), 4.4), sharey=True, squeeze=False
    )
    edges = np.asarray(DEFAULT_IOU_BIN_EDGES)
    for ax, (label, m) in zip(axes[0], runs):
        y = m.pred_ious if y_name == "pred_iou" else m.scores
        if y is None:
            ax.set_title(f"{label}\n(no pred_iou in the results)", fontsize=9)
            ax.set_xlim(0.5, 1.0)
            continue
        ok = np.isfinite(y)
        x, y = m.ious[ok], y[ok]
        pts = np.arange(x.size)
        if x.size > max_points:
            pts = rng.choice(x.size, size=max_points, replace=False)
        n = pts.size
        ax.scatter(
            x[pts],
            y[pts],
            s=14 if n < 500 else 4,
            alpha=float(np.clip(400.0 / max(n, 1), 0.08, 0.8)),
            color="tab:blue",
            edgecolors="none",
            label="detections",
        )
        bins = iou_binned_means(x, y, edges=edges)
        centers = [(b["iou_lo"] + b["iou_hi"]) / 2 for b in bins]
        means = [b["mean_score"] for b in bins]
        ax.plot(centers, means, "o-", color="tab:red", lw=2, label=f"mean {y_name} per IoU bin")
        ax.plot([0.5, 1.0], [0.5, 1.0], "--", color="gray", lw=1, label=f"{y_name} = IoU")
        met = consistency_metrics(y, x)
        gap = "AIC" if y_name == "score" else "mean|pred-IoU|"  # AIC: Wang & Zhang eq. 14
        ax.set_title(
            f"{label}\nN={x.size}  pearson={met['score_iou_pearson']:.3f}  "
            f"spearman={met['score_iou_spearman']:.3f}  {gap}={met['AIC']:.3f}",
            fontsize=9,
        )
        ax.set_xlim(0.5, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("IoU with matched ground truth")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted IoU" if y_name == "pred_iou" else "score")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(output, dpi=dpi)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    coco_gt = load_coco(_ground_truth_json(args))
    labels = args.labels or [
        os.path.basename(os.path.dirname(os.path.abspath(p))) or p for p in args.results
    ]
    runs = []
    for label, path in zip(labels, args.results):
        with open(path) as f:
            results = json.load(f)
        if not results:
            print(f"[plot_consistency] {path}: no detections", file=sys.stderr)
            matched = None
        else:
            matched = match_results_to_gt(coco_gt, results, args.iou_type, args.max_dets)
            if len(matched) == 0:
                print(
                    f"[plot_consistency] {path}: no detection matched at IoU >= 0.5",
                    file=sys.stderr,
                )
        if matched is None:
            from iou_aware.evaluation import MatchedDetections

            empty = np.zeros(0)
            matched = MatchedDetections(empty, empty, empty, empty, empty, empty, None, 0)
        runs.append((label, matched))
        print(
            f"[plot_consistency] {label}: {len(matched)} matched of {matched.num_detections} detections"
        )
    plot(runs, args.output, "pred_iou" if args.pred_iou else "score", args.max_points, args.dpi)
    print(f"[plot_consistency] wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
