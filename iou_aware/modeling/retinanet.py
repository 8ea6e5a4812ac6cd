"""``IoUAwareRetinaNet``: Detectron2's RetinaNet with the box loss, classification loss, box
parameterization, IoU head and NMS chosen by ``MODEL.IOU_AWARE``.

With every key at its default it *is* stock RetinaNet: ``losses`` and inference delegate to the
parent class unchanged.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import sigmoid_focal_loss
from torch import nn

from ..losses import iou_kl_loss
from .cls_losses import combine_cls_and_box_losses
from .common import IoUAwareMixin, iou_aware_from_config
from .postprocess import run_nms


class IoUAwareRetinaNetHead(RetinaNetHead):
    """RetinaNet head plus the IoU head of Peng & Yu (sec. III-E): one 3x3 conv on the box tower's
    features giving one IoU logit per anchor (sigmoid at inference)."""

    def __init__(self, cfg, input_shape):
        super().__init__(cfg, input_shape)
        in_channels = self.bbox_pred.in_channels
        num_anchors = self.bbox_pred.out_channels // 4
        self.iou_pred = nn.Conv2d(in_channels, num_anchors, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.iou_pred.weight, std=0.01)
        nn.init.constant_(self.iou_pred.bias, 0)

    def forward(self, features: List[torch.Tensor]):
        logits, bbox_reg, iou_logits = [], [], []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_features = self.bbox_subnet(feature)
            bbox_reg.append(self.bbox_pred(box_features))
            iou_logits.append(self.iou_pred(box_features))
        return logits, bbox_reg, iou_logits


@META_ARCH_REGISTRY.register()
class IoUAwareRetinaNet(IoUAwareMixin, RetinaNet):
    @configurable
    def __init__(self, *, box_loss=None, iou_aware_cfg=None, nms_cfg=None, iou_head=False,
                 iou_head_weight=1.0, harmonic_detach_factors=False, **kwargs):
        super().__init__(**kwargs)
        self._init_iou_aware(box_loss, iou_aware_cfg, nms_cfg, iou_head, iou_head_weight,
                             harmonic_detach_factors)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.IOU_AWARE
        if c.IOU_HEAD.ENABLED and not c.IOU_HEAD.CLASS_AGNOSTIC:
            raise ValueError("MODEL.IOU_AWARE.IOU_HEAD.CLASS_AGNOSTIC: RetinaNet's IoU head predicts "
                             "one IoU per anchor; per-class IoU is for the ROI heads only")
        r = cfg.MODEL.RETINANET
        iou_aware = iou_aware_from_config(
            cfg, "retinanet", r.BBOX_REG_WEIGHTS, r.BBOX_REG_LOSS_TYPE, r.SMOOTH_L1_LOSS_BETA, r.NMS_THRESH_TEST
        )
        ret = super().from_config(cfg)
        if c.IOU_HEAD.ENABLED:
            shapes = ret["backbone"].output_shape()
            ret["head"] = IoUAwareRetinaNetHead(cfg, [shapes[f] for f in r.IN_FEATURES])
        ret.update(iou_aware)
        return ret

    # ------------------------------------------------------------------------------- training
    def _dims(self):
        return [self.num_classes, 4, 1] if self.iou_head else [self.num_classes, 4]

    def forward_training(self, images, features, predictions, gt_instances):
        if self.stock_losses:
            return super().forward_training(images, features, predictions, gt_instances)
        preds = self._transpose_dense_predictions(predictions, self._dims())
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.iou_aware_losses(anchors, gt_labels, gt_boxes, *preds)

    def iou_aware_losses(self, anchors, gt_labels, gt_boxes, pred_logits, pred_deltas, pred_iou_logits=None):
        """RetinaNet's losses with the configured box loss, classification loss and IoU head.

        Same sampling (anchor labels), focal loss and normalizer (EMA of the positive count) as
        ``RetinaNet.losses``.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        valid_mask = gt_labels >= 0
        pos_mask = valid_mask & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos, 1), 100)

        logits = cat(pred_logits, dim=1)  # (N, R, K)
        targets = F.one_hot(gt_labels[valid_mask], num_classes=self.num_classes + 1)[:, :-1]
        cls_elem = sigmoid_focal_loss(
            logits[valid_mask], targets.to(logits.dtype),
            alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="none",
        )
        cls_per_anchor = cls_elem.sum(dim=1)
        pos_in_valid = pos_mask[valid_mask]
        cls_pos = cls_per_anchor[pos_in_valid]

        all_anchors = Boxes.cat(anchors).tensor
        src = all_anchors.unsqueeze(0).expand(num_images, -1, -1)[pos_mask]
        loc, ious = self.box_loss(src, cat(pred_deltas, dim=1)[pos_mask], torch.stack(gt_boxes)[pos_mask])

        pos_probs = logits[pos_mask].sigmoid()
        pos_labels = gt_labels[pos_mask]
        p_gt = pos_probs.gather(1, pos_labels[:, None]).squeeze(1)
        losses = combine_cls_and_box_losses(
            self.iou_aware_cfg, cls_pos, cls_per_anchor[~pos_in_valid].sum(), loc, ious, p_gt,
            pos_probs, self.harmonic_detach_factors,
        )
        if pred_iou_logits is not None:
            iou_logits = cat(pred_iou_logits, dim=1)[pos_mask].squeeze(1)
            losses["loss_iou"] = self.iou_head_weight * iou_kl_loss(iou_logits, ious, reduction="sum")
        return {k: v / normalizer for k, v in losses.items()}

    # ------------------------------------------------------------------------------ inference
    def forward_inference(self, images, features, predictions):
        if not self.iou_head and self.nms_cfg.type == "standard":
            return super().forward_inference(images, features, predictions)
        preds = self._transpose_dense_predictions(predictions, self._dims())
        pred_logits, pred_deltas = preds[0], preds[1]
        pred_iou_logits = preds[2] if self.iou_head else None
        anchors = self.anchor_generator(features)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [x[i].sigmoid() for x in pred_logits]
            deltas = [x[i] for x in pred_deltas]
            ious = [x[i].sigmoid().squeeze(1) for x in pred_iou_logits] if self.iou_head else None
            results.append(self.iou_aware_inference_single_image(anchors, scores, deltas, ious, image_size))
        return results

    def iou_aware_inference_single_image(self, anchors, scores, deltas, ious, image_size: Tuple[int, int]):
        """``inference_single_image`` carrying the predicted IoU of each candidate (``pred_ious``)
        and running the configured NMS. Candidates: per level, scores above SCORE_THRESH_TEST, at
        most TOPK_CANDIDATES_TEST, as in stock RetinaNet."""
        per_level = []
        for lvl, (anchors_l, scores_l, deltas_l) in enumerate(zip(anchors, scores, deltas)):
            keep = scores_l > self.test_score_thresh
            cand_scores = scores_l[keep]
            idx = torch.nonzero(keep)
            cand_scores, order = cand_scores.topk(min(len(cand_scores), self.test_topk_candidates))
            anchor_idx, cls_idx = idx[order].unbind(dim=1)
            boxes = self.box2box_transform.apply_deltas(deltas_l[anchor_idx], anchors_l.tensor[anchor_idx])
            inst = Instances(image_size, pred_boxes=Boxes(boxes), scores=cand_scores, pred_classes=cls_idx)
            if ious is not None:
                inst.pred_ious = ious[lvl][anchor_idx]
            per_level.append(inst)
        pred = Instances.cat(per_level)
        keep, out_scores, out_boxes = run_nms(
            self.nms_cfg, pred.pred_boxes.tensor, pred.scores, pred.pred_classes,
            pred.pred_ious if ious is not None else None,
        )
        n = self.max_detections_per_image
        result = pred[keep[:n]]
        result.scores = out_scores[:n]
        result.pred_boxes = Boxes(out_boxes[:n])
        return result
