"""Evaluation: COCO AP at every IoU threshold and score/localization consistency.

:class:`IoUAwareCOCOEvaluator` is a drop-in replacement for Detectron2's ``COCOEvaluator`` (same
constructor and output files) that also reports ``AP50``, ``AP55``, ..., ``AP95``, ``mAP75:95``
(percent) and ``score_iou_pearson``, ``score_iou_spearman``, ``AIC`` (plus ``pred_iou_pearson``,
``pred_iou_spearman`` for models with an IoU head) from the same COCOeval run.
:mod:`.consistency` holds the metric functions (pure numpy).
"""

from .coco_iou_aware import (
    CONSISTENCY_KEYS,
    PRED_IOU_KEYS,
    IoUAwareCOCOEvaluator,
    MatchedDetections,
    ap_per_iou_threshold,
    format_iou_bin_table,
    instances_to_coco_json_with_pred_iou,
    match_detections,
    match_results_to_gt,
)
from .consistency import (
    DEFAULT_IOU_BIN_EDGES,
    average_inconsistency_coefficient,
    consistency_metrics,
    iou_binned_means,
    pearson,
    rankdata,
    spearman,
)

__all__ = [
    "CONSISTENCY_KEYS",
    "DEFAULT_IOU_BIN_EDGES",
    "PRED_IOU_KEYS",
    "IoUAwareCOCOEvaluator",
    "MatchedDetections",
    "ap_per_iou_threshold",
    "average_inconsistency_coefficient",
    "consistency_metrics",
    "format_iou_bin_table",
    "instances_to_coco_json_with_pred_iou",
    "iou_binned_means",
    "match_detections",
    "match_results_to_gt",
    "pearson",
    "rankdata",
    "spearman",
]
