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

import contextlib
import copy
import io
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.logger import create_small_table

from .consistency import consistency_metrics, iou_binned_means

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
#: IoU threshold at which detections are matched for the consistency metrics.
CONSISTENCY_IOU_THRESHOLD = 0.5
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
# Matching (COCO's greedy matching, read back from a COCOeval run)
# ---------------------------------------------------------------------------------------------


@dataclass
class MatchedDetections:
    """Detections matched to a non-ignored ground truth by COCO's greedy matching, one entry each.

    All fields are 1-D numpy arrays of the same length. ``pred_ious`` is ``None`` when the
    detections carry no ``"pred_iou"``; otherwise it holds ``nan`` for any detection without one.
    ``num_detections`` is the number of detections that took part in the matching (after the
    per-image maxDets cut), matched or not.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    dt_ids: np.ndarray
    gt_ids: np.ndarray
    scores: np.ndarray
    ious: np.ndarray
    pred_ious: Optional[np.ndarray]
    num_detections: int

    def __len__(self):
        return int(self.scores.shape[0])


def _gts_of(coco_eval: COCOeval, img_id, cat_id) -> list:
    """The ground-truth list of one (image, category) in the order ``computeIoU`` used."""
    p = coco_eval.params
    if p.useCats:
        return coco_eval._gts[img_id, cat_id]
    return [g for c in p.catIds for g in coco_eval._gts[img_id, c]]


def match_detections(
    coco_eval: COCOeval,
    iou_threshold: float = CONSISTENCY_IOU_THRESHOLD,
    area: str = "all",
) -> MatchedDetections:
    """Detections paired with a ground truth at ``iou_threshold`` by COCO's own matching.

    ``coco_eval`` must have run ``evaluate()``. COCO matches per image and category, detections by
    descending score (truncated to the last maxDets), each to the unmatched non-crowd ground truth of
    highest IoU >= threshold, falling back to crowd/ignored ground truth. We keep the matches whose
    ``dtIgnore`` flag is off, i.e. drop unmatched detections and detections matched to crowd or
    ignored ground truth. The pair's IoU comes from ``coco_eval.ious[img, cat]``: its rows are the
    detections in ``evalImg["dtIds"]`` order (both sort by score with the same stable sort and cut
    at ``maxDets[-1]``); its columns are the ground truths in their original order, whereas
    ``evaluateImg`` reorders them (ignored last), so the matched gt id is looked up by id.

    With the official ``COCOeval`` the per-image results in ``coco_eval.evalImgs`` are reused. With
    an implementation that does not keep them (Detectron2's C++ ``COCOeval_opt``), COCO's Python
    ``evaluateImg`` is re-run on the stored IoUs for the one area range and threshold needed.
    """
    p = coco_eval._paramsEval if getattr(coco_eval, "_paramsEval", None) else coco_eval.params
    cat_ids = list(p.catIds) if p.useCats else [-1]
    img_ids = list(p.imgIds)
    area_labels = list(p.areaRngLbl)
    if area not in area_labels:
        raise ValueError(f"area range {area!r} is not one of the run's {area_labels}")
    a_idx = area_labels.index(area)
    thresholds = np.asarray(p.iouThrs, dtype=np.float64)
    num_a, num_i = len(p.areaRng), len(img_ids)

    eval_imgs = coco_eval.evalImgs
    have_eval_imgs = isinstance(eval_imgs, list) and len(eval_imgs) == len(cat_ids) * num_a * num_i
    t_hits = np.flatnonzero(np.abs(thresholds - iou_threshold) < 1e-9)
    if have_eval_imgs and t_hits.size:
        t_idx = int(t_hits[0])

        def get_eval(k, i, img_id, cat_id):
            # same layout as COCOeval.evaluate/accumulate: [category][area range][image]
            return eval_imgs[k * num_a * num_i + a_idx * num_i + i]

        restore = None
    else:
        # re-run COCO's per-image matching for one threshold and one area range only
        t_idx = 0
        restore = coco_eval.params
        coco_eval.params = copy.copy(restore)
        coco_eval.params.iouThrs = np.array([iou_threshold], dtype=np.float64)
        area_rng, max_det = p.areaRng[a_idx], p.maxDets[-1]

        def get_eval(k, i, img_id, cat_id):
            return coco_eval.evaluateImg(img_id, cat_id, area_rng, max_det)

    cols = {
        name: [] for name in ("image_ids", "category_ids", "dt_ids", "gt_ids", "scores", "ious")
    }
    num_detections = 0
    try:
        for k, cat_id in enumerate(cat_ids):
            for i, img_id in enumerate(img_ids):
                e = get_eval(k, i, img_id, cat_id)
                if e is None:
                    continue
                num_detections += len(e["dtIds"])
                dt_matches = np.asarray(e["dtMatches"])[t_idx]
                dt_ignore = np.asarray(e["dtIgnore"])[t_idx]
                keep = np.flatnonzero((dt_matches > 0) & ~dt_ignore.astype(bool))
                if keep.size == 0:
                    continue
                ious = np.asarray(coco_eval.ious[img_id, cat_id])
                gt_col = {g["id"]: j for j, g in enumerate(_gts_of(coco_eval, img_id, cat_id))}
                for d in keep:
                    gt_id = int(dt_matches[d])
                    iou = float(ious[d, gt_col[gt_id]])
                    if iou < iou_threshold - 1e-9:  # rows/columns out of step: never expected
                        raise AssertionError(
                            f"matched pair (dt {e['dtIds'][d]}, gt {gt_id}) has IoU {iou} "
                            f"below the matching threshold {iou_threshold}"
                        )
                    cols["image_ids"].append(img_id)
                    cols["category_ids"].append(cat_id)
                    cols["dt_ids"].append(e["dtIds"][d])
                    cols["gt_ids"].append(gt_id)
                    cols["scores"].append(e["dtScores"][d])
                    cols["ious"].append(iou)
    finally:
        if restore is not None:
            coco_eval.params = restore

    dt_anns = coco_eval.cocoDt.anns
    has_pred_iou = any("pred_iou" in a for a in dt_anns.values())
    pred_ious = None
    if has_pred_iou:
        pred_ious = np.array(
            [float(dt_anns[d].get("pred_iou", float("nan"))) for d in cols["dt_ids"]],
            dtype=np.float64,
        )
    return MatchedDetections(
        image_ids=np.asarray(cols["image_ids"], dtype=np.int64),
        category_ids=np.asarray(cols["category_ids"], dtype=np.int64),
        dt_ids=np.asarray(cols["dt_ids"], dtype=np.int64),
        gt_ids=np.asarray(cols["gt_ids"], dtype=np.int64),
        scores=np.asarray(cols["scores"], dtype=np.float64),
        ious=np.asarray(cols["ious"], dtype=np.float64),
        pred_ious=pred_ious,
        num_detections=num_detections,
    )


def match_results_to_gt(
    coco_gt,
    coco_results: List[dict],
    iou_type: str = "bbox",
    max_dets_per_image: int = 100,
    iou_threshold: float = CONSISTENCY_IOU_THRESHOLD,
) -> MatchedDetections:
    """Match COCO-format results (``coco_instances_results.json`` content) to a COCO ground truth.

    Runs COCOeval's per-image evaluation (no accumulation) at the single threshold needed and
    returns :func:`match_detections` of it; used by ``benchmarks/plot_consistency.py``.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"consistency needs an IoU, not available for iou_type={iou_type!r}")
    if len(coco_results) == 0:
        raise ValueError("no detections to match")
    coco_results = copy.deepcopy(coco_results)
    if iou_type == "segm":  # as Detectron2 does: let the mask define the area
        for r in coco_results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(coco_results)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.params.iouThrs = np.array([iou_threshold], dtype=np.float64)
        coco_eval.params.maxDets = [1, 10, int(max_dets_per_image)]
        coco_eval.evaluate()
    return match_detections(coco_eval, iou_threshold=iou_threshold)


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
