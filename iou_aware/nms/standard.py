"""Standard class-aware NMS: torchvision's ``batched_nms`` with this package's conventions."""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import batched_nms as _tv_batched_nms

from ._common import check_inputs, check_real, compute_dtype, empty_result, order_by_score


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: torchvision's ``batched_nms`` (the stock Detectron2 behaviour).

    Greedily keeps the highest-scoring box and removes every remaining box of its class whose IoU
    with it is ``> iou_threshold``. Returns int64 indices of the kept boxes, sorted by score
    (highest first, ties by ascending index). fp16/bf16 input is computed in float32.
    """
    check_inputs(boxes, scores=scores, idxs=idxs)
    iou_threshold = check_real(iou_threshold, "iou_threshold")
    dtype = compute_dtype(boxes, scores)
    if boxes.shape[0] == 0:
        return empty_result(boxes, dtype)[0]
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    keep = _tv_batched_nms(boxes, scores, idxs, iou_threshold)
    return order_by_score(keep, scores[keep])[0]
