"""COCO evaluation with AP at every IoU threshold and score/IoU consistency metrics.

:class:`IoUAwareCOCOEvaluator` is Detectron2's :class:`~detectron2.evaluation.COCOEvaluator` with
two additions, both computed from the *same* COCOeval run as the standard metrics:

1. AP at each IoU threshold of the run (0.50, 0.55, ..., 0.95) and mAP over 0.75:0.95, overall and
   per category, read from ``coco_eval.eval["precision"]`` exactly the way COCO computes AP;
2. consistency between a detection's confidence and its localization: the detections that COCO's
   greedy matching pairs with a (non-crowd, non-ignored) ground truth at IoU >= 0.5 are taken from
   ``coco_eval.evalImgs``, with their IoU from ``coco_eval.ious``, and scored with
   :mod:`iou_aware.evaluation.consistency` (Pearson, Spearman, AIC of Wang & Zhang eq. 14, mean score
   per IoU bin as in Wu & Li Fig. 2). When the model's instances carry ``pred_ious`` (an IoU head),
   the same correlations are reported for predicted versus actual IoU.
"""

import math
from typing import Dict, Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.logger import create_small_table

from .consistency import consistency_metrics, iou_binned_means
from .matching import (  # noqa: F401  (re-exported)
    CONSISTENCY_IOU_THRESHOLD,
    MatchedDetections,
    match_detections,
    match_results_to_gt,
)

__all__ = [
    "CONSISTENCY_KEYS",
    "PRED_IOU_KEYS",
    "IoUAwareCOCOEvaluator",
    "MatchedDetections",
    "ap_per_iou_threshold",
    "format_iou_bin_table",
    "instances_to_coco_json_with_pred_iou",
    "match_detections",
    "match_results_to_gt",
]


#: Flat result keys of the score/IoU consistency (plain fractions).
CONSISTENCY_KEYS = ("score_iou_pearson", "score_iou_spearman", "AIC")
PRED_IOU_KEYS = ("pred_iou_pearson", "pred_iou_spearman")
#: mAP75:95 averages the thresholds at or above this one.
HIGH_IOU_FROM = 0.75
HIGH_IOU_KEY = "mAP75:95"
_DEFAULT_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's default iouThrs


def _threshold_key(t: float) -> str:
    return "AP{:d}".format(int(round(float(t) * 100)))


# ---------------------------------------------------------------------------------------------
# AP per IoU threshold
# ---------------------------------------------------------------------------------------------


def _mean_valid(precision: np.ndarray) -> float:
    """COCO's AP: the mean of the precision entries that are not -1 (absent categories)."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def ap_per_iou_threshold(coco_eval: COCOeval):
    """AP (in percent) at each IoU threshold and over 0.75:0.95, overall and per category.

    Reads ``coco_eval.eval["precision"]`` (T x R x K x A x M) at area range "all" and the last
    (largest) maxDets, and averages over recall points and categories, leaving out -1 entries, as
    ``COCOeval.summarize`` does for AP; no second evaluation pass.

    Returns:
        (overall, per_category): ``overall`` maps ``"AP50"``, ..., ``"AP95"``, ``"mAP75:95"`` to a
        float (``nan`` where no category has ground truth); ``per_category`` is a list (one entry per
        category of the run, in ``params.catIds`` order) of dicts with the same keys.
    """
    p = coco_eval.params
    precision = coco_eval.eval["precision"]
    area_all = list(p.areaRngLbl).index("all")
    precision = precision[:, :, :, area_all, -1]  # T x R x K
    thresholds = np.asarray(p.iouThrs, dtype=np.float64)
    high = thresholds >= HIGH_IOU_FROM - 1e-9

    def summarize(prec):  # prec: T x R x K'
        out = {_threshold_key(t): _mean_valid(prec[i]) * 100 for i, t in enumerate(thresholds)}
        out[HIGH_IOU_KEY] = _mean_valid(prec[high]) * 100 if high.any() else float("nan")
        return out

    overall = summarize(precision)
    per_category = [summarize(precision[:, :, k : k + 1]) for k in range(precision.shape[2])]
    return overall, per_category


# ---------------------------------------------------------------------------------------------
# The evaluator
# ---------------------------------------------------------------------------------------------


def instances_to_coco_json_with_pred_iou(instances, img_id):
    """Detectron2's ``instances_to_coco_json`` plus a ``"pred_iou"`` entry per detection when the
    instances have a ``pred_ious`` field (COCO's ``loadRes`` keeps extra keys)."""
    results = instances_to_coco_json(instances, img_id)
    if results and instances.has("pred_ious"):
        pred_ious = instances.pred_ious.reshape(len(instances), -1)[:, 0].tolist()
        for r, v in zip(results, pred_ious):
            r["pred_iou"] = float(v)
    return results


class IoUAwareCOCOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` plus AP at every IoU threshold and score/IoU consistency.

    Same constructor arguments (and output files: ``instances_predictions.pth``,
    ``coco_instances_results.json``) as ``COCOEvaluator``, plus:

    Args:
        per_category_keys (bool): also return ``"AP50-<class>"``, ..., ``"mAP75:95-<class>"`` for
            every category (they are always logged as a table; off by default because they add
            11 x num_classes scalars to the event storage).

    Added to ``results["bbox"]`` (and ``results["segm"]`` for masks):

    - ``AP50``, ``AP55``, ..., ``AP95``: AP (percent) at each IoU threshold; ``mAP75:95`` (percent):
      COCO AP over the thresholds 0.75:0.95;
    - ``score_iou_pearson``, ``score_iou_spearman``: correlation between score and IoU over the
      detections matched at IoU >= 0.5 (fractions); ``AIC``: mean |score - IoU| over them
      (Wang & Zhang eq. 14);
    - ``pred_iou_pearson``, ``pred_iou_spearman`` when the instances carry ``pred_ious``.

    Undefined values are ``nan`` (with a warning), so ``EvalHook`` still accepts the dict.
    """

    def __init__(self, dataset_name, *args, per_category_keys: bool = False, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        self._dataset_name = dataset_name
        self._per_category_keys = per_category_keys
        if not self._do_evaluation:
            self._logger.warning(
                f"[IoUAwareCOCOEvaluator] '{dataset_name}' has no annotations: predictions will be "
                "saved but AP and consistency metrics cannot be computed."
            )

    def process(self, inputs, outputs):
        # COCOEvaluator.process, keeping the IoU head's predicted IoU of each detection
        for input, output in zip(inputs, outputs):
            prediction = {"image_id": input["image_id"]}
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                prediction["instances"] = instances_to_coco_json_with_pred_iou(
                    instances, input["image_id"]
                )
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def _eval_predictions(self, predictions, img_ids=None):
        if not self._do_evaluation:
            self._logger.warning(
                f"[IoUAwareCOCOEvaluator] '{self._dataset_name}' has no annotations: no AP at IoU "
                "thresholds and no score/IoU consistency are reported."
            )
        super()._eval_predictions(predictions, img_ids=img_ids)

    # -- metrics derived from the COCOeval run -------------------------------------------------

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        standard = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        thresholds = self._derive_threshold_results(coco_eval, iou_type, class_names)
        # AP, AP50, ..., AP95, mAP75:95 first (AP50/AP75 equal COCO's own, computed the same way),
        # then Detectron2's other keys, then the consistency metrics
        results = {k: standard[k] for k in ("AP",) if k in standard}
        results.update(thresholds)
        results.update({k: v for k, v in standard.items() if k not in results})
        if iou_type in ("bbox", "segm"):
            results.update(self._derive_consistency_results(coco_eval, iou_type))
        return results

    def _derive_threshold_results(self, coco_eval, iou_type, class_names) -> Dict[str, float]:
        if coco_eval is None:
            keys = [_threshold_key(t) for t in _DEFAULT_IOU_THRESHOLDS] + [HIGH_IOU_KEY]
            self._logger.warning(
                f"[IoUAwareCOCOEvaluator] no {iou_type} predictions: AP per IoU threshold is nan."
            )
            return {k: float("nan") for k in keys}

        overall, per_category = ap_per_iou_threshold(coco_eval)
        self._logger.info(
            f"{iou_type} AP at each IoU threshold (mAP75:95 = mean over 0.75:0.95): \n"
            + create_small_table(overall)
        )
        if not np.isfinite(list(overall.values())).all():
            self._logger.warning(
                f"[IoUAwareCOCOEvaluator] {iou_type} AP per IoU threshold is nan: "
                "the evaluated images have no (non-crowd) ground truth."
            )
        results = dict(overall)
        if class_names is not None and len(class_names) == len(per_category):
            keys = list(overall.keys())
            rows = [
                [name] + [per_category[k][key] for key in keys]
                for k, name in enumerate(class_names)
            ]
            table = tabulate(
                rows, headers=["category"] + keys, tablefmt="pipe", floatfmt=".3f", numalign="left"
            )
            self._logger.info(f"Per-category {iou_type} AP at each IoU threshold: \n" + table)
            if self._per_category_keys:
                for k, name in enumerate(class_names):
                    results.update({f"{key}-{name}": per_category[k][key] for key in keys})
        return results

    def _derive_consistency_results(self, coco_eval, iou_type) -> Dict[str, float]:
        nan = float("nan")
        if coco_eval is None:
            self._logger.warning(
                f"[IoUAwareCOCOEvaluator] no {iou_type} predictions: score/IoU consistency is nan."
            )
            return {k: nan for k in CONSISTENCY_KEYS}

        matched = match_detections(coco_eval, iou_threshold=CONSISTENCY_IOU_THRESHOLD)
        has_pred_iou = matched.pred_ious is not None
        metrics = consistency_metrics(matched.scores, matched.ious, matched.pred_ious)

        header = (
            f"{iou_type} score/IoU consistency over the {len(matched)} of {matched.num_detections} "
            f"detections matched to a ground truth at IoU >= {CONSISTENCY_IOU_THRESHOLD:g} "
            "(AIC = mean |score - IoU|, Wang & Zhang eq. 14): \n"
        )
        self._logger.info(header + create_small_table(metrics))
        if len(matched) > 0:
            bins = iou_binned_means(matched.ious, matched.scores, matched.pred_ious)
            self._logger.info(
                f"{iou_type} mean score per IoU bin of the matched detections (Wu & Li Fig. 2): \n"
                + format_iou_bin_table(bins)
            )

        missing_pred_iou = has_pred_iou and bool(np.isnan(matched.pred_ious).any())
        if missing_pred_iou:
            self._logger.warning(
                "[IoUAwareCOCOEvaluator] some matched detections have no pred_iou; "
                "pred_iou correlations are nan."
            )
        undefined = [
            k
            for k, v in metrics.items()
            if math.isnan(v) and not (missing_pred_iou and k in PRED_IOU_KEYS)
        ]
        if undefined:
            if len(matched) == 0:
                reason = "no detection is matched to a ground truth at IoU >= 0.5"
            elif len(matched) < 2:
                reason = "fewer than two detections are matched to a ground truth"
            else:
                reason = "the scores, predicted IoUs or IoUs of the matched detections are constant"
            self._logger.warning(
                f"[IoUAwareCOCOEvaluator] {iou_type} {', '.join(undefined)} undefined (nan): {reason}."
            )
        return metrics


def format_iou_bin_table(bins: Sequence[dict]) -> str:
    """The IoU-binned table (output of :func:`iou_binned_means`) as a pipe table."""
    has_pred = any("mean_pred_iou" in b for b in bins)
    headers = ["IoU", "count", "mean score"] + (["mean pred IoU"] if has_pred else [])
    rows = []
    for b in bins:
        closing = "]" if b is bins[-1] else ")"
        row = [f"[{b['iou_lo']:.2f}, {b['iou_hi']:.2f}{closing}", b["count"], b["mean_score"]]
        if has_pred:
            row.append(b.get("mean_pred_iou", float("nan")))
        rows.append(row)
    return tabulate(
        rows, headers=headers, tablefmt="pipe", floatfmt=".3f", stralign="center", numalign="center"
    )
