"""Detectron2 integration: importing this package registers ``IoUAwareRetinaNet`` and
``IoUAwareFCOS`` (META_ARCH_REGISTRY), ``build_fcos_resnet_fpn_backbone`` (BACKBONE_REGISTRY) and
``IoUAwareROIHeads`` (ROI_HEADS_REGISTRY); ``IoUAwareTTA`` wraps any of them (and Detectron2's
RetinaNet, FCOS and GeneralizedRCNN) with test-time augmentation."""

from .box_regression import BoxRegressionLoss, CornerBoxTransform, build_box_transform
from .postprocess import NMSConfig, run_nms
from .retinanet import IoUAwareRetinaNet, IoUAwareRetinaNetHead
from .fcos import IoUAwareFCOS, IoUAwareFCOSHead, build_fcos_resnet_fpn_backbone
from .roi_heads import IoUAwareFastRCNNOutputLayers, IoUAwareROIHeads
from .tta import IoUAwareTTA

__all__ = [
    "BoxRegressionLoss",
    "CornerBoxTransform",
    "build_box_transform",
    "NMSConfig",
    "run_nms",
    "IoUAwareRetinaNet",
    "IoUAwareRetinaNetHead",
    "IoUAwareFCOS",
    "IoUAwareFCOSHead",
    "build_fcos_resnet_fpn_backbone",
    "IoUAwareFastRCNNOutputLayers",
    "IoUAwareROIHeads",
    "IoUAwareTTA",
]
