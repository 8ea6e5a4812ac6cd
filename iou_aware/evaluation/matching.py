"""Which detections COCO's greedy matching pairs with a ground truth, read back from a COCOeval run.

:func:`match_detections` takes the matches of one IoU threshold from ``coco_eval.evalImgs`` (the
detections paired with a non-crowd, non-ignored ground truth) with their IoU from
``coco_eval.ious``; :func:`match_results_to_gt` runs that evaluation for COCO-format results. The
score/IoU consistency metrics of :class:`~iou_aware.evaluation.IoUAwareCOCOEvaluator` and
``benchmarks/plot_consistency.py`` are computed on them.
"""

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from pycocotools.cocoeval import COCOeval

__all__ = ["CONSISTENCY_IOU_THRESHOLD", "MatchedDetections", "match_detections", "match_results_to_gt"]

#: IoU threshold at which detections are matched for the consistency metrics.
CONSISTENCY_IOU_THRESHOLD = 0.5


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
