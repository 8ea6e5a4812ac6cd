"""``IoUAwareRetinaNet``: Detectron2's RetinaNet with the box loss, classification loss, box
parameterization, IoU head and NMS chosen by ``MODEL.IOU_AWARE``.

With every key at its default it *is* stock RetinaNet: ``losses`` and inference delegate to the
parent class unchanged.
"""

from typing import List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

from ..losses import iou_kl_loss
from .cls_losses import dense_cls_and_box_losses
from .common import iou_aware_from_config
from .dense import DenseIoUAwareMixin, decode_candidates, nms_detections, positive_box_losses


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
class IoUAwareRetinaNet(DenseIoUAwareMixin, RetinaNet):
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

    def iou_aware_losses(self, anchors, gt_labels, gt_boxes, pred_logits, pred_deltas, pred_iou_logits=None):
        """RetinaNet's losses with the configured box loss, classification loss and IoU head.

        Same sampling (anchor labels), focal loss and normalizer (EMA of the positive count) as
        ``RetinaNet.losses``; CLS_LOSS "quality_focal" / "varifocal" replace the focal loss over
        the same (not ignored) anchors.
        """
        gt_labels, pos_mask, normalizer = self.labelled_positives(gt_labels, 100)  # (N, R)
        valid_mask = gt_labels >= 0

        logits = cat(pred_logits, dim=1)  # (N, R, K)
        loc, ious = positive_box_losses(self.box_loss, anchors, pred_deltas, gt_boxes, pos_mask)
        losses = dense_cls_and_box_losses(
            self.iou_aware_cfg, logits[valid_mask], gt_labels[valid_mask], loc, ious,
            self.focal_loss_alpha, self.focal_loss_gamma, self.harmonic_detach_factors,
        )
        if pred_iou_logits is not None:
            iou_logits = cat(pred_iou_logits, dim=1)[pos_mask].squeeze(1)
            losses["loss_iou"] = self.iou_head_weight * iou_kl_loss(iou_logits, ious, reduction="sum")
        return {k: v / normalizer for k, v in losses.items()}

    # ------------------------------------------------------------------------------ inference
    def forward_inference(self, images, features, predictions):
        if not self.iou_head and self.nms_cfg.is_stock:
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
        pred = decode_candidates(
            self.box2box_transform, anchors, scores, deltas, self.test_score_thresh,
            self.test_topk_candidates, image_size, None if ious is None else {"pred_ious": ious},
        )
        return nms_detections(self.nms_cfg, pred, self.max_detections_per_image)
