"""``IoUAwareFCOS``: Detectron2's FCOS built from yaml keys (``MODEL.FCOS``), with the quality branch,
classification loss, box loss and NMS chosen by ``MODEL.IOU_AWARE``.

Detectron2 ships FCOS (Tian et al., *FCOS: Fully Convolutional One-Stage Object Detection*, ICCV
2019) for LazyConfig only; ``MODEL.FCOS`` holds what its constructor takes, with its defaults, and
``build_fcos_resnet_fpn_backbone`` the backbone of its model-zoo config. With every
``MODEL.IOU_AWARE`` key at its default the model *is* Detectron2's FCOS: training and inference
delegate to ``detectron2.modeling.meta_arch.fcos.FCOS`` unchanged.

Quality branch (``MODEL.IOU_AWARE.QUALITY``): the stock centerness; or the IoU of each positive's
decoded box with its ground truth (detached), as the IoU prediction of PAA (Kim & Lee, ECCV 2020)
and FCOS's ``BOX_QUALITY: iou`` option in its authors' code; or none, for the joint
classification-quality losses (``CLS_LOSS`` "quality_focal" / "varifocal"), whose classification
score is itself the ranking score.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.modeling.box_regression import Box2BoxTransformLinear
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

from ..losses import iou_kl_loss
from .cls_losses import dense_cls_and_box_losses
from .common import iou_aware_from_config
from .dense import DenseIoUAwareMixin, decode_candidates, nms_detections, positive_box_losses

# Detectron2's FCOS trains its box regression with GIoU and has no smooth-L1 beta; BOX_LOSS
# "smooth_l1" on its stride-normalized distances defaults to beta 0 (L1), as
# detectron2's _dense_box_regression_loss does.
_STOCK_BOX_LOSS = "giou"
_STOCK_SMOOTH_L1_BETA = 0.0


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet-FPN with P6 and P7 computed from P5 (not C5): the FCOS backbone of Tian et al.,
    *FCOS: A Simple and Strong Anchor-free Object Detector* (TPAMI 2020), sec. 2.2, as in
    Detectron2's model-zoo FCOS (``common/models/fcos.py``)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


class IoUAwareFCOSHead(FCOSHead):
    """Detectron2's ``FCOSHead`` whose quality branch (one 3x3 conv on the box tower) predicts the
    centerness (``ctrness``, the stock parameters), the IoU of the decoded box (``iou_pred``), or
    is absent (``quality="none"``; the head then returns only logits and box deltas)."""

    def __init__(self, *, input_shape: List[ShapeSpec], conv_dims: List[int], quality: str = "centerness", **kwargs):
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, **kwargs)
        self.quality = quality
        if quality == "iou":
            self.iou_pred = self.ctrness
        if quality != "centerness":
            del self.ctrness

    def quality_branch(self):
        return {"centerness": "ctrness", "iou": "iou_pred"}.get(self.quality)

    def forward(self, features: List[torch.Tensor]):
        branch = self.quality_branch()
        branch = getattr(self, branch) if branch else None
        logits, bbox_reg, quality = [], [], []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_features = self.bbox_subnet(feature)
            bbox_reg.append(self.bbox_pred(box_features))
            if branch is not None:
                quality.append(branch(box_features))
        return (logits, bbox_reg, quality) if branch is not None else (logits, bbox_reg)


def _check_fcos_keys(f):
    def fail(key, msg):
        raise ValueError(f"MODEL.FCOS.{key}: {msg}")

    for key in ("NUM_CLASSES", "NUM_CONVS", "TOPK_CANDIDATES_TEST"):
        if f[key] < 1:
            fail(key, f"must be >= 1, got {f[key]}")
    if f.CENTER_SAMPLING_RADIUS <= 0:
        fail("CENTER_SAMPLING_RADIUS", f"must be > 0 (in strides), got {f.CENTER_SAMPLING_RADIUS}")
    if not 0.0 <= f.NMS_THRESH_TEST <= 1.0:
        fail("NMS_THRESH_TEST", f"must be in [0, 1], got {f.NMS_THRESH_TEST}")
    if not 0.0 <= f.SCORE_THRESH_TEST < 1.0:
        fail("SCORE_THRESH_TEST", f"must be in [0, 1), got {f.SCORE_THRESH_TEST}")
    if f.FOCAL_LOSS_ALPHA > 1.0:
        fail("FOCAL_LOSS_ALPHA", f"must be in [0, 1] (or < 0 for no alpha weighting), got {f.FOCAL_LOSS_ALPHA}")
    if f.FOCAL_LOSS_GAMMA < 0:
        fail("FOCAL_LOSS_GAMMA", f"must be >= 0, got {f.FOCAL_LOSS_GAMMA}")


@META_ARCH_REGISTRY.register()
class IoUAwareFCOS(DenseIoUAwareMixin, FCOS):
    @configurable
    def __init__(self, *, box_loss=None, iou_aware_cfg=None, nms_cfg=None, iou_head=False,
                 iou_head_weight=1.0, harmonic_detach_factors=False, input_format="BGR", **kwargs):
        super().__init__(**kwargs)
        self._init_iou_aware(box_loss, iou_aware_cfg, nms_cfg, iou_head, iou_head_weight,
                             harmonic_detach_factors)
        self.input_format = input_format
        c = iou_aware_cfg
        self.quality = c.QUALITY if c is not None else "centerness"
        self.quality_loss = c.QUALITY_LOSS if c is not None else "bce"
        self.quality_loss_weight = c.QUALITY_LOSS_WEIGHT if c is not None else 1.0
        self.fusion_alpha = c.NMS.FUSION_ALPHA if c is not None else 0.5
        self.stock_losses = self.stock_losses and (
            self.quality == "centerness" and self.quality_loss == "bce" and self.quality_loss_weight == 1.0
        )
        self.stock_inference = self.quality == "centerness" and self.fusion_alpha == 0.5 and (
            nms_cfg is None or nms_cfg.is_stock
        )

    @classmethod
    def from_config(cls, cfg):
        f = cfg.MODEL.FCOS
        _check_fcos_keys(f)
        iou_aware = iou_aware_from_config(
            cfg, "fcos", None, _STOCK_BOX_LOSS, _STOCK_SMOOTH_L1_BETA, f.NMS_THRESH_TEST,
            box2box_transform=Box2BoxTransformLinear(normalize_by_size=True),
        )
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [k for k in f.IN_FEATURES if k not in shapes]
        if missing:
            raise ValueError(f"MODEL.FCOS.IN_FEATURES: {missing} are not outputs of the backbone "
                             f"{cfg.MODEL.BACKBONE.NAME!r}, which gives {sorted(shapes)}")
        input_shape = [shapes[k] for k in f.IN_FEATURES]
        head = IoUAwareFCOSHead(
            input_shape=input_shape,
            conv_dims=[input_shape[0].channels] * f.NUM_CONVS,
            num_classes=f.NUM_CLASSES,
            norm=f.NORM,
            prior_prob=f.PRIOR_PROB,
            quality=cfg.MODEL.IOU_AWARE.QUALITY,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(f.IN_FEATURES),
            "num_classes": f.NUM_CLASSES,
            "center_sampling_radius": f.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": f.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": f.FOCAL_LOSS_GAMMA,
            "test_score_thresh": f.SCORE_THRESH_TEST,
            "test_topk_candidates": f.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": f.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            **iou_aware,
        }

    def _dims(self):
        return [self.num_classes, 4] if self.quality == "none" else [self.num_classes, 4, 1]

    # ------------------------------------------------------------------------------- training
    def quality_targets(self, anchors, gt_boxes, pos_mask, ious):
        """Targets of the quality branch on the positives: FCOS's centerness (from the ground-truth
        distances, ``FCOS.compute_ctrness_targets``) or the detached IoU of each decoded box."""
        if self.quality == "iou":
            return ious
        return self.compute_ctrness_targets(anchors, gt_boxes)[pos_mask]

    def iou_aware_losses(self, anchors, gt_labels, gt_boxes, pred_logits, pred_deltas, pred_quality=None):
        """FCOS's losses with the configured classification loss, box loss and quality branch.

        Same sampling (FCOS's anchor-point labels, centre sampling), normalizer (EMA of the
        positive count, initial 300) and loss names as ``FCOS.losses``; the classification loss
        runs over every anchor point (FCOS ignores none). The quality loss (BCE or Peng & Yu's KL,
        eq. 31-32) is summed over the positives and normalized like the others, as stock FCOS does.
        """
        gt_labels, pos_mask, normalizer = self.labelled_positives(gt_labels, 300)  # (N, R)

        logits = cat(pred_logits, dim=1)  # (N, R, K)
        loc, ious = positive_box_losses(self.box_loss, anchors, pred_deltas, gt_boxes, pos_mask)
        parts = dense_cls_and_box_losses(
            self.iou_aware_cfg, logits.flatten(0, 1), gt_labels.flatten(), loc, ious,
            self.focal_loss_alpha, self.focal_loss_gamma, self.harmonic_detach_factors,
        )
        names = {"loss_cls": "loss_fcos_cls", "loss_box_reg": "loss_fcos_loc"}
        losses = {names.get(k, k): v for k, v in parts.items()}
        if pred_quality is not None:
            q_logits = cat(pred_quality, dim=1).squeeze(dim=2)[pos_mask]
            target = self.quality_targets(anchors, gt_boxes, pos_mask, ious).to(q_logits.dtype)
            name = "loss_fcos_ctr" if self.quality == "centerness" else "loss_fcos_iou"
            losses[name] = self.quality_loss_weight * self.quality_loss_sum(q_logits, target)
        return {k: v / normalizer for k, v in losses.items()}

    def quality_loss_sum(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """QUALITY_LOSS summed over the positives: "bce" (stock FCOS) or "kl", Peng & Yu eq. 31-32
        (the BCE minus the target's entropy: the same gradient, 0 at a perfect prediction)."""
        if self.quality_loss == "kl":
            return iou_kl_loss(logits, target, reduction="sum")
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")

    # ------------------------------------------------------------------------------ inference
    def ranking_scores(self, cls: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """``cls^(1-a) * quality^a`` with ``a`` = NMS.FUSION_ALPHA: FCOS's ranking of
        classification and centerness (a = 0.5, ``sqrt(cls * ctr)``; Tian et al. TPAMI 2020,
        eq. 4), with IoU quality that of PAA (Kim & Lee, ECCV 2020). ``a = 0.5`` is computed as
        ``sqrt(cls * quality)``, bit for bit what Detectron2's FCOS computes."""
        a = self.fusion_alpha
        if a == 0.5:
            return torch.sqrt(cls * quality)
        return cls.pow(1.0 - a) * quality.pow(a)

    def forward_inference(self, images, features, predictions):
        if self.stock_inference:
            return super().forward_inference(images, features, predictions)
        preds = self._transpose_dense_predictions(predictions, self._dims())
        pred_logits, pred_deltas = preds[0], preds[1]
        pred_quality = preds[2] if self.quality != "none" else None
        anchors = self.anchor_generator(features)
        return [
            self.iou_aware_inference_single_image(
                anchors,
                [x[i].sigmoid() for x in pred_logits],
                [x[i] for x in pred_deltas],
                None if pred_quality is None else [x[i].sigmoid() for x in pred_quality],
                image_size,
            )
            for i, image_size in enumerate(images.image_sizes)
        ]

    def iou_aware_inference_single_image(self, anchors, cls, deltas, quality, image_size: Tuple[int, int]):
        """Candidates ranked by :meth:`ranking_scores` (by the classification score without a
        quality branch), chosen as in stock FCOS (per level above SCORE_THRESH_TEST, at most
        TOPK_CANDIDATES_TEST), then the configured NMS. With QUALITY "iou" the candidates carry
        the predicted IoU (``pred_ious``) for IoU-guided NMS and the evaluator; score-fused NMS is
        given the classification scores and fuses them with the predicted IoU itself (the same
        ``a``), so it ranks as the fused score does."""
        scores = cls if quality is None else [self.ranking_scores(c, q) for c, q in zip(cls, quality)]
        extras = {}
        if self.quality == "iou":
            extras["pred_ious"] = [q.squeeze(1) for q in quality]
        if self.nms_cfg.type == "score_fused":
            extras["cls_scores"] = cls
        pred = decode_candidates(
            self.box2box_transform, anchors, scores, deltas, self.test_score_thresh,
            self.test_topk_candidates, image_size, extras,
        )
        nms_scores = None
        if pred.has("cls_scores"):
            nms_scores = pred.cls_scores
            pred.remove("cls_scores")
        return nms_detections(self.nms_cfg, pred, self.max_detections_per_image, nms_scores)
