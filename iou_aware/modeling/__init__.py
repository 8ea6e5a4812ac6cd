"""Detectron2 integration: importing this package registers ``IoUAwareRetinaNet``
(META_ARCH_REGISTRY) and ``IoUAwareROIHeads`` (ROI_HEADS_REGISTRY)."""

from .box_regression import BoxRegressionLoss, CornerBoxTransform, build_box_transform
from .postprocess import NMSConfig, run_nms
from .retinanet import IoUAwareRetinaNet, IoUAwareRetinaNetHead
from .roi_heads import IoUAwareFastRCNNOutputLayers, IoUAwareROIHeads

__all__ = [
    "BoxRegressionLoss",
    "CornerBoxTransform",
    "build_box_transform",
    "NMSConfig",
    "run_nms",
    "IoUAwareRetinaNet",
    "IoUAwareRetinaNetHead",
    "IoUAwareFastRCNNOutputLayers",
    "IoUAwareROIHeads",
]
