"""The same trained weights evaluated with several NMS types (``MODEL.IOU_AWARE.NMS.TYPE``).

``compare_nms_types(cfg, types)`` builds the configured detector once per type, loads the same
weights, runs it on the first test dataset with :class:`IoUAwareCOCOEvaluator` and returns one row
per type: AP, AP50, AP75, AP90, mAP75:95, the score/IoU consistency metrics and the inference time
per image. A type the model cannot run (e.g. one that ranks by the predicted IoU on a model without
the IoU head) is reported as skipped with the reason instead of failing the whole comparison.
"""

import csv
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from .coco_iou_aware import IoUAwareCOCOEvaluator

logger = logging.getLogger("iou_aware")

DEFAULT_TYPES = ("standard", "iou_guided", "score_fused")
COLUMNS = ("AP", "AP50", "AP75", "AP90", "mAP75:95", "score_iou_pearson", "AIC")


def _with_nms_type(cfg, nms_type: str):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.IOU_AWARE.NMS.TYPE = nms_type
    cfg.freeze()
    return cfg


def evaluate_nms_type(cfg, nms_type: str, weights: str, dataset: Optional[str] = None) -> Dict[str, object]:
    """One row of the comparison: the bbox metrics and ms per image of ``weights`` with ``nms_type``."""
    dataset = dataset or cfg.DATASETS.TEST[0]
    row: Dict[str, object] = {"nms": nms_type}
    try:
        model = build_model(_with_nms_type(cfg, nms_type))
    except ValueError as e:  # the config check names the key (e.g. the IoU head this type needs)
        row["skipped"] = str(e)
        return row
    DetectionCheckpointer(model).load(weights)
    model.eval()
    loader = build_detection_test_loader(cfg, dataset)
    evaluator = IoUAwareCOCOEvaluator(dataset, output_dir=None)
    start = time.perf_counter()
    results = inference_on_dataset(model, loader, evaluator)
    row["ms_per_image"] = 1000.0 * (time.perf_counter() - start) / max(len(loader), 1)
    bbox = results.get("bbox", {})
    row.update({k: bbox.get(k, float("nan")) for k in COLUMNS})
    return row


def compare_nms_types(cfg, weights: str, types: Sequence[str] = DEFAULT_TYPES,
                      dataset: Optional[str] = None) -> List[Dict[str, object]]:
    """``evaluate_nms_type`` for each of ``types`` on the same weights."""
    rows = []
    for t in types:
        logger.info("NMS comparison: evaluating %s with NMS type %r", weights, t)
        rows.append(evaluate_nms_type(cfg, t, weights, dataset))
    return rows


def _fmt(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_nms_table(rows: Sequence[Dict[str, object]]) -> str:
    """A markdown table: AP columns in percent (1 decimal), correlations and AIC as fractions."""
    header = ["NMS", *COLUMNS, "ms/img"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['nms']} | skipped: {r['skipped']} |")
            continue
        cells = [r["nms"]]
        cells += [_fmt(r[k], 3 if k in ("score_iou_pearson", "AIC") else 1) for k in COLUMNS]
        cells.append(_fmt(r["ms_per_image"], 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_nms_comparison(rows: Sequence[Dict[str, object]], output_dir: str) -> Dict[str, str]:
    """Write ``nms_comparison.md`` and ``nms_comparison.csv`` under ``output_dir``; return the paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"md": os.path.join(output_dir, "nms_comparison.md"),
             "csv": os.path.join(output_dir, "nms_comparison.csv")}
    with open(paths["md"], "w") as f:
        f.write(format_nms_table(rows) + "\n")
    fields = ["nms", *COLUMNS, "ms_per_image", "skipped"]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in fields})
    return paths
