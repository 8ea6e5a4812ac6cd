"""Non-maximum suppression and ranking variants (pure torch + torchvision ops, no Detectron2).

All functions follow torchvision's argument order (``boxes, scores, ..., idxs, iou_threshold``),
take ``(N, 4)`` absolute ``x1, y1, x2, y2`` boxes, are class-aware (``idxs`` is the class of each
box; boxes of different classes never suppress each other), run on CPU and CUDA tensors, and
return ``keep``: int64 indices into the input, sorted by the returned score, highest first, ties
by ascending index ("IoU > threshold" suppresses; fp16/bf16 is computed in float32).

- :func:`batched_nms`: the stock baseline (torchvision's ``batched_nms``).
- :func:`iou_guided_nms`: IoU-guided NMS (IoU-Net, Jiang et al. 2018, Algorithm 1; used by Peng &
  Yu with their IoU head): rank by predicted localization confidence, keep the box that localizes
  best and give it the best classification score of the cluster it suppresses.
- :func:`score_fused_nms`: NMS on ``score^(1 - alpha) * iou^alpha`` (IoU-aware RetinaNet, PAA).
- :func:`soft_nms`: Soft-NMS (Bodla et al. 2017), linear and gaussian decay.
- :func:`diou_nms`: DIoU-NMS (Zheng et al. AAAI 2020): the centre distance joins the test.
- :func:`cluster_nms`: Cluster-NMS (Zheng et al. TCYB 2021, Algorithm 1) with its DIoU, score
  penalty, distance penalty and weighted-coordinate variants; one image or a padded batch.
- :func:`matrix_nms`: Matrix NMS (SOLOv2), one-shot score decay; one image or a padded batch.
- :func:`weighted_nms`: weighted (merge) NMS (Zhou et al. 2017); one image or a padded batch.
- :func:`score_voting` / :func:`score_voting_nms`: PAA's score voting (Kim & Lee, ECCV 2020).
- :func:`weighted_boxes_fusion`: Weighted Boxes Fusion of several models (Solovyev et al. 2021).

:data:`NMS_REGISTRY` holds the types ``MODEL.IOU_AWARE.NMS.TYPE`` selects ("standard",
"score_fused", "iou_guided", "soft", "diou", "cluster", "matrix", "weighted", "score_voting");
:func:`register_nms` adds one (protocol in :mod:`iou_aware.nms.registry`). How the algorithms
are computed, and how their size limits were measured: ``docs/nms.md``.
"""

from .cluster import cluster_nms
from .diou import diou_nms
from .iou_guided import iou_guided_nms
from .matrix import matrix_nms
from .merge import score_voting, score_voting_nms, weighted_nms
from .registry import NMS_REGISTRY, nms_needs_ious, register_nms
from .score_fused import fuse_scores, score_fused_nms
from .soft import soft_nms
from .standard import batched_nms
from .wbf import weighted_boxes_fusion

__all__ = [
    "batched_nms",
    "iou_guided_nms",
    "score_fused_nms",
    "soft_nms",
    "fuse_scores",
    "diou_nms",
    "cluster_nms",
    "matrix_nms",
    "weighted_nms",
    "score_voting",
    "score_voting_nms",
    "weighted_boxes_fusion",
    "NMS_REGISTRY",
    "register_nms",
    "nms_needs_ious",
]
