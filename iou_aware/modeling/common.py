"""What both IoU-aware detectors take from ``MODEL.IOU_AWARE``, built and stored once."""

from ..config import validate_iou_aware_config
from .box_regression import BoxRegressionLoss, build_box_transform
from .cls_losses import harmonic_detach
from .postprocess import NMSConfig


def iou_aware_from_config(cfg, detector, reg_weights, stock_loss_type, stock_beta, nms_thresh,
                          box2box_transform=None):
    """Validated constructor arguments for ``IoUAwareMixin`` (+ the box transform).

    ``detector`` is "retinanet", "fcos" or "rcnn"; the other arguments are the detector's own keys
    (box-regression weights, stock loss type and smooth-L1 beta, NMS threshold). A detector with a
    box transform of its own (FCOS's stride-normalized distances) passes it as ``box2box_transform``.
    """
    validate_iou_aware_config(cfg)
    c = cfg.MODEL.IOU_AWARE
    transform = box2box_transform or build_box_transform(cfg, reg_weights)
    return {
        "box2box_transform": transform,
        "box_loss": BoxRegressionLoss.from_config(cfg, transform, stock_loss_type, stock_beta),
        "iou_aware_cfg": c.clone(),
        "nms_cfg": NMSConfig.from_config(cfg, nms_thresh),
        "iou_head": c.IOU_HEAD.ENABLED,
        "iou_head_weight": c.IOU_HEAD.LOSS_WEIGHT,
        "harmonic_detach_factors": harmonic_detach(cfg, detector),
    }


class IoUAwareMixin:
    """Stores the IoU-aware settings and decides whether the stock loss code can be used."""

    def _init_iou_aware(self, box_loss, iou_aware_cfg, nms_cfg, iou_head, iou_head_weight,
                        harmonic_detach_factors):
        self.box_loss = box_loss
        self.iou_aware_cfg = iou_aware_cfg
        self.nms_cfg = nms_cfg
        self.iou_head = iou_head
        self.iou_head_weight = iou_head_weight
        self.harmonic_detach_factors = harmonic_detach_factors
        c = iou_aware_cfg
        # the stock loss code is used unless something of the loss is changed
        self.stock_losses = c is None or (
            not c.BOX_LOSS and not c.CLS_LOSS and not iou_head and c.BOX_PARAMETERIZATION == "deltas"
        )
