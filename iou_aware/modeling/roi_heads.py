"""IoU-aware second stage for Faster R-CNN: ``IoUAwareROIHeads`` (ROI_HEADS.NAME) with a box
predictor that adds the IoU head and uses the box loss, classification loss and NMS chosen by
``MODEL.IOU_AWARE``. The RPN stays stock. With every key at its default the predictor delegates to
Detectron2's ``FastRCNNOutputLayers`` unchanged.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat, nonzero_tuple
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Boxes, Instances
from torch import nn

from ..losses import iou_kl_loss
from .cls_losses import combine_cls_and_box_losses
from .common import IoUAwareMixin, iou_aware_from_config
from .postprocess import run_nms


class IoUAwareFastRCNNOutputLayers(IoUAwareMixin, FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` + IoU head (one linear layer on the box head's features, sigmoid,
    one IoU per box or per class) + configured losses and NMS."""

    @configurable
    def __init__(self, input_shape, *, box_loss=None, iou_aware_cfg=None, nms_cfg=None,
                 iou_head=False, iou_head_class_agnostic=True, iou_head_weight=1.0,
                 harmonic_detach_factors=True, **kwargs):
        super().__init__(input_shape, **kwargs)
        self._init_iou_aware(box_loss, iou_aware_cfg, nms_cfg, iou_head, iou_head_weight,
                             harmonic_detach_factors)
        if iou_head:
            n_out = 1 if iou_head_class_agnostic else self.num_classes
            self.iou_pred = nn.Linear(self.cls_score.in_features, n_out)
            nn.init.normal_(self.iou_pred.weight, std=0.01)
            nn.init.constant_(self.iou_pred.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        c = cfg.MODEL.IOU_AWARE
        if c.CLS_LOSS and cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE:
            raise ValueError(f"MODEL.IOU_AWARE.CLS_LOSS {c.CLS_LOSS!r} is implemented for the softmax "
                             "classifier; set MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE False")
        h = cfg.MODEL.ROI_BOX_HEAD
        iou_aware = iou_aware_from_config(
            cfg, "rcnn", h.BBOX_REG_WEIGHTS, h.BBOX_REG_LOSS_TYPE, h.SMOOTH_L1_BETA, cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST
        )
        ret = super().from_config(cfg, input_shape)
        ret.update(iou_aware)
        ret["iou_head_class_agnostic"] = c.IOU_HEAD.CLASS_AGNOSTIC
        return ret

    def forward(self, x):
        scores, proposal_deltas = super().forward(x)
        if not self.iou_head:
            return scores, proposal_deltas
        return scores, proposal_deltas, self.iou_pred(torch.flatten(x, start_dim=1))

    # ------------------------------------------------------------------------------- training
    def losses(self, predictions, proposals):
        if self.stock_losses:
            return super().losses(predictions[:2], proposals)
        scores, proposal_deltas = predictions[:2]
        gt_classes = cat([p.gt_classes for p in proposals], dim=0) if len(proposals) else torch.empty(0)
        _log_classification_stats(scores, gt_classes)
        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0
            )
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)

        fg = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        fg_classes = gt_classes[fg]
        if proposal_deltas.shape[1] == 4:  # class-agnostic regression
            fg_deltas = proposal_deltas[fg]
        else:
            fg_deltas = proposal_deltas.view(-1, self.num_classes, 4)[fg, fg_classes]
        loc, ious = self.box_loss(proposal_boxes[fg], fg_deltas, gt_boxes[fg])

        ce = F.cross_entropy(scores, gt_classes, reduction="none")
        is_fg = torch.zeros_like(ce, dtype=torch.bool)
        is_fg[fg] = True
        probs = F.softmax(scores[fg], dim=1)
        p_gt = probs.gather(1, fg_classes[:, None]).squeeze(1)
        losses = combine_cls_and_box_losses(
            self.iou_aware_cfg, ce[fg], ce[~is_fg].sum(), loc, ious, p_gt, probs,
            self.harmonic_detach_factors,
        )
        # Detectron2's normalization: the mean over all sampled proposals, for every term
        n = max(gt_classes.numel(), 1.0)
        losses = {k: v / n * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
        if self.iou_head:
            # the IoU head is trained on positives only (Peng & Yu sec. III-E): mean over them, as
            # RetinaNet's normalizer (the positive count) does; the mean over all sampled proposals
            # would shrink it by the foreground fraction (about 1/4)
            iou_logits = predictions[2][fg]
            iou_logits = iou_logits[:, 0] if iou_logits.shape[1] == 1 else iou_logits.gather(1, fg_classes[:, None])[:, 0]
            losses["loss_iou"] = self.iou_head_weight * iou_kl_loss(iou_logits, ious, reduction="sum") / max(len(fg), 1)
        return losses

    # ------------------------------------------------------------------------------ inference
    def inference(self, predictions, proposals: List[Instances]):
        if not self.iou_head and self.nms_cfg.is_stock:
            return super().inference(predictions[:2], proposals)
        boxes = self.predict_boxes(predictions[:2], proposals)
        scores = self.predict_probs(predictions[:2], proposals)
        num = [len(p) for p in proposals]
        ious = predictions[2].sigmoid().split(num) if self.iou_head else [None] * len(proposals)
        results = [
            self._inference_single_image(b, s, i, p.image_size)
            for b, s, i, p in zip(boxes, scores, ious, proposals)
        ]
        return [r[0] for r in results], [r[1] for r in results]

    def _inference_single_image(self, boxes, scores, ious, image_shape: Tuple[int, int]):
        """Detectron2's ``fast_rcnn_inference_single_image`` carrying ``pred_ious`` and running the
        configured NMS."""
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        if ious is not None:
            valid &= torch.isfinite(ious).all(dim=1)
        if not valid.all():
            boxes, scores = boxes[valid], scores[valid]
            ious = ious[valid] if ious is not None else None
        scores = scores[:, :-1]
        num_reg = boxes.shape[1] // 4
        boxes = Boxes(boxes.reshape(-1, 4))
        boxes.clip(image_shape)
        boxes = boxes.tensor.view(-1, num_reg, 4)
        mask = scores > self.test_score_thresh
        inds = mask.nonzero()
        boxes = boxes[inds[:, 0], 0] if num_reg == 1 else boxes[mask]
        scores = scores[mask]
        box_ious = None
        if ious is not None:
            box_ious = ious[inds[:, 0], 0] if ious.shape[1] == 1 else ious[mask]
        keep, out_scores, out_boxes = run_nms(self.nms_cfg, boxes, scores, inds[:, 1], box_ious)
        if self.test_topk_per_image >= 0:
            n = self.test_topk_per_image
            keep, out_scores, out_boxes = keep[:n], out_scores[:n], out_boxes[:n]
        result = Instances(image_shape)
        result.pred_boxes = Boxes(out_boxes)
        result.scores = out_scores
        result.pred_classes = inds[keep, 1]
        if box_ious is not None:
            result.pred_ious = box_ious[keep]
        return result, inds[keep, 0]


@ROI_HEADS_REGISTRY.register()
class IoUAwareROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose box predictor is ``IoUAwareFastRCNNOutputLayers``."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = IoUAwareFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret
