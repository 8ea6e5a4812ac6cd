"""iou_aware: IoU-aware losses, heads, NMS and evaluation for Detectron2 detectors.

The pure-torch core (:mod:`iou_aware.geometry`, :mod:`iou_aware.losses`, :mod:`iou_aware.nms`)
never imports Detectron2; :mod:`iou_aware.modeling`, :mod:`iou_aware.evaluation`,
:mod:`iou_aware.data` and :mod:`iou_aware.config` do.
"""

__version__ = "0.1.0"
