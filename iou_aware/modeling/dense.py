"""What the dense detectors (IoUAwareRetinaNet, IoUAwareFCOS) share outside their heads: the box
loss of the positives, the per-level candidates at inference and the configured NMS on them."""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.layers import cat
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from .common import IoUAwareMixin
from .postprocess import run_nms


class DenseIoUAwareMixin(IoUAwareMixin):
    """The training entry point both dense detectors share: the stock losses when nothing of the
    loss is changed, else the detector's ``iou_aware_losses`` on its labelled anchors (points)
    and its transposed predictions (``_dims()``: the channels of each prediction)."""

    def forward_training(self, images, features, predictions, gt_instances):
        if self.stock_losses:
            return super().forward_training(images, features, predictions, gt_instances)
        preds = self._transpose_dense_predictions(predictions, self._dims())
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.iou_aware_losses(anchors, gt_labels, gt_boxes, *preds)

    def labelled_positives(self, gt_labels: List[torch.Tensor], initial_normalizer: float):
        """The anchor labels stacked ``(N, R)``, the mask of the positives and the loss normalizer:
        the positive count (logged per image as ``num_pos_anchors``) through the detector's moving
        average, started at ``initial_normalizer`` (Detectron2's RetinaNet: 100, FCOS: 300)."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos / num_images)
        return gt_labels, pos_mask, self._ema_update("loss_normalizer", max(num_pos, 1), initial_normalizer)


def positive_box_losses(box_loss, anchors: List[Boxes], pred_deltas: List[torch.Tensor],
                        gt_boxes: List[torch.Tensor], pos_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``box_loss`` (``BoxRegressionLoss``) on the positives of ``pos_mask`` ``(N, R)``: the box
    loss of each positive and the detached IoU of its decoded box with its ground truth."""
    all_anchors = Boxes.cat(anchors).tensor
    src = all_anchors.unsqueeze(0).expand(len(gt_boxes), -1, -1)[pos_mask]
    return box_loss(src, cat(pred_deltas, dim=1)[pos_mask], torch.stack(gt_boxes)[pos_mask])


def decode_candidates(
    box2box_transform, anchors: List[Boxes], scores: List[torch.Tensor], deltas: List[torch.Tensor],
    score_thresh: float, topk: int, image_size: Tuple[int, int],
    extras: Optional[Dict[str, List[torch.Tensor]]] = None,
) -> Instances:
    """Candidates of one image, chosen per level as Detectron2's dense detectors choose them
    (``DenseDetector._decode_per_level_predictions``): scores ``(R_l, K)`` above ``score_thresh``,
    at most ``topk`` of them, boxes decoded from their anchors.

    ``extras`` maps a field name to per-level tensors carried along with each candidate:
    ``(R_l,)`` per anchor (e.g. ``pred_ious``) or ``(R_l, K)`` per anchor and class.
    """
    per_level = []
    for lvl, (anchors_l, scores_l, deltas_l) in enumerate(zip(anchors, scores, deltas)):
        keep = scores_l > score_thresh
        cand_scores = scores_l[keep]
        idx = torch.nonzero(keep)
        cand_scores, order = cand_scores.topk(min(len(cand_scores), topk))
        anchor_idx, cls_idx = idx[order].unbind(dim=1)
        boxes = box2box_transform.apply_deltas(deltas_l[anchor_idx], anchors_l.tensor[anchor_idx])
        inst = Instances(image_size, pred_boxes=Boxes(boxes), scores=cand_scores, pred_classes=cls_idx)
        for name, values in (extras or {}).items():
            v = values[lvl]
            inst.set(name, v[anchor_idx] if v.dim() == 1 else v[anchor_idx, cls_idx])
        per_level.append(inst)
    return Instances.cat(per_level)


def nms_detections(nms_cfg, candidates: Instances, max_detections: int,
                   nms_scores: Optional[torch.Tensor] = None) -> Instances:
    """The configured NMS (``run_nms``) on ``candidates``, at most ``max_detections`` kept, best
    first, each with the score the NMS returns. The NMS ranks by ``nms_scores`` when given (else
    the candidates' scores) and uses their ``pred_ious`` when they have them."""
    keep, out_scores, out_boxes = run_nms(
        nms_cfg, candidates.pred_boxes.tensor,
        candidates.scores if nms_scores is None else nms_scores, candidates.pred_classes,
        candidates.pred_ious if candidates.has("pred_ious") else None,
    )
    result = candidates[keep[:max_detections]]
    result.scores = out_scores[:max_detections]
    result.pred_boxes = Boxes(out_boxes[:max_detections])
    return result
