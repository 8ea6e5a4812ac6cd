"""Non-maximum suppression variants (pure torch + torchvision, no Detectron2)."""

from .suppressor import batched_nms, fuse_scores, iou_guided_nms, score_fused_nms, soft_nms

__all__ = ["batched_nms", "iou_guided_nms", "score_fused_nms", "soft_nms", "fuse_scores"]
