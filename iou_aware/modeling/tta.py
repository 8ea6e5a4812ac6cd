"""Test-time augmentation (TTA) for every detector of this project, merged by any registered NMS type
or by Weighted Boxes Fusion.

``IoUAwareTTA(cfg, model)`` runs ``model`` on augmented copies of each image (Detectron2's
``DatasetMapperTTA``: each short side of ``TEST.AUG.MIN_SIZES`` capped at ``TEST.AUG.MAX_SIZE``,
and the horizontal flip of each with ``TEST.AUG.FLIP``), maps each copy's detections back to the
original image with the inverse transform and merges them with ``TEST.AUG.MERGE_TYPE``:

1. per augmentation, the model's ordinary inference with its own NMS (``MODEL.IOU_AWARE.NMS.TYPE``),
   boxes in the augmented image's pixels, before any clipping or rescaling of its postprocessing;
2. each box mapped to the original image (``transforms.inverse().apply_box``);
3. all augmentations' detections concatenated (``pred_ious`` when every augmentation has them) and
   merged: ``"standard"`` (the default, Detectron2's merge), a name of
   ``iou_aware.nms.NMS_REGISTRY``, ``""`` = the model's NMS type again, or ``"wbf"`` (Weighted Boxes Fusion, Solovyev et al., Image and Vision Computing 2021, over the
   per-augmentation lists); IoU threshold: the detector's ``NMS_THRESH_TEST``;
4. at most ``TEST.DETECTIONS_PER_IMAGE`` kept, clipped to the image, empty boxes dropped (as
   Detectron2's ``detector_postprocess``).

Supported: ``IoUAwareRetinaNet``, ``IoUAwareFCOS``, ``GeneralizedRCNN`` (with ``IoUAwareROIHeads``
or stock ROI heads) and Detectron2's ``RetinaNet``/``FCOS``. Boxes only: masks and keypoints are
refused. Detectron2's ``GeneralizedRCNNWithTTA`` is the model of the interface.
"""

import copy
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data.detection_utils import read_image
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA
from detectron2.structures import Boxes, Instances
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import TTA_WBF as WBF
from ..config import merge_type_needs_ious, validate_tta_config
from ..nms import weighted_boxes_fusion
from .postprocess import NMSConfig, run_nms


def detector_nms_threshold(cfg, model) -> float:
    """The IoU threshold of ``model``'s own NMS: ``NMS_THRESH_TEST`` of its detector's config node."""
    if isinstance(model, RetinaNet):
        return cfg.MODEL.RETINANET.NMS_THRESH_TEST
    if isinstance(model, FCOS):
        return cfg.MODEL.FCOS.NMS_THRESH_TEST
    return cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST


class IoUAwareTTA(nn.Module):
    """A detector with test-time augmentation; called like the detector in inference
    (``[{"image": CHW tensor, "height", "width"}, ...] -> [{"instances": Instances}, ...]``).

    Args:
        cfg: the config the model was built from, with ``TEST.AUG.*`` (``ENABLED`` is not read).
        model: an ``IoUAwareRetinaNet``, ``IoUAwareFCOS`` or ``GeneralizedRCNN`` (DDP is unwrapped),
            in eval mode.
        tta_mapper: dataset dict -> list of augmented dicts, each with its ``"transforms"``
            (default ``DatasetMapperTTA(cfg)``).
        batch_size: augmented images per forward pass.
    """

    def __init__(self, cfg, model, tta_mapper=None, batch_size: int = 3):
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not isinstance(model, (GeneralizedRCNN, DenseDetector)):
            raise TypeError(
                "IoUAwareTTA supports GeneralizedRCNN (Faster R-CNN, IoUAwareROIHeads) and the dense "
                f"detectors (IoUAwareRetinaNet, IoUAwareFCOS, RetinaNet, FCOS); got {type(model).__name__}"
            )
        for key in ("MASK_ON", "KEYPOINT_ON", "LOAD_PROPOSALS"):
            if cfg.MODEL[key]:
                raise ValueError(f"test-time augmentation (TEST.AUG) merges boxes only: MODEL.{key} True "
                                 f"is not supported; set MODEL.{key} False or TEST.AUG.ENABLED False")
        validate_tta_config(cfg)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size
        self.merge_type = cfg.TEST.AUG.MERGE_TYPE or cfg.MODEL.IOU_AWARE.NMS.TYPE
        self.iou_threshold = detector_nms_threshold(cfg, model)
        self.max_detections = cfg.TEST.DETECTIONS_PER_IMAGE
        self.nms_cfg = None
        if self.merge_type != WBF:
            self.nms_cfg = NMSConfig.from_config(cfg, self.iou_threshold, type_override=self.merge_type)

    # ----------------------------------------------------------------------------------- inference
    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        return [{"instances": self.inference_one_image(self._with_image(x))} for x in batched_inputs]

    def _with_image(self, dataset_dict: Dict) -> Dict:
        """The input with ``image`` (read from ``file_name`` when absent), ``height`` and ``width``."""
        d = copy.copy(dataset_dict)
        if "image" not in d:
            image = read_image(d["file_name"], getattr(self.model, "input_format", "BGR"))
            d["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        d.setdefault("height", d["image"].shape[1])
        d.setdefault("width", d["image"].shape[2])
        return d

    def inference_one_image(self, dataset_dict: Dict) -> Instances:
        """Detections of one image (a dict with ``image``, ``height``, ``width``), merged over its
        augmentations, in the original image's pixels (``height`` x ``width``)."""
        augmented = self.tta_mapper(dataset_dict)
        transforms = [a.pop("transforms") for a in augmented]
        outputs = self.raw_detections(augmented)
        per_aug = [self._to_original(out, tfm) for out, tfm in zip(outputs, transforms)]
        size = (dataset_dict["height"], dataset_dict["width"])
        return detector_postprocess(self.merge(per_aug, size), *size)

    def raw_detections(self, inputs: List[Dict]) -> List[Instances]:
        """The model's detections of each input in that input's pixels, ``batch_size`` at a time:
        its own candidate selection and NMS, without the postprocessing's rescaling and clipping."""
        results = []
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start : start + self.batch_size]
            if isinstance(self.model, GeneralizedRCNN):
                results += self.model.inference(batch, do_postprocess=False)
            else:  # what DenseDetector.forward runs in inference, before detector_postprocess
                m = self.model
                images = m.preprocess_image(batch)
                features = m.backbone(images.tensor)
                features = [features[f] for f in m.head_in_features]
                results += m.forward_inference(images, features, m.head(features))
        return results

    @staticmethod
    def _to_original(instances: Instances, transforms) -> Dict[str, torch.Tensor]:
        """Boxes (mapped back through the inverse of ``transforms``), scores, classes and, when
        present, ``pred_ious`` (key ``ious``) of ``instances``."""
        boxes = instances.pred_boxes.tensor
        mapped = transforms.inverse().apply_box(boxes.detach().cpu().numpy())
        out = {
            "boxes": torch.as_tensor(mapped, dtype=boxes.dtype, device=boxes.device).reshape(-1, 4),
            "scores": instances.scores,
            "classes": instances.pred_classes,
        }
        if instances.has("pred_ious"):
            out["ious"] = instances.pred_ious
        return out

    # --------------------------------------------------------------------------------------- merge
    def merge(self, per_aug: List[Dict[str, torch.Tensor]], image_size) -> Instances:
        """One ``Instances`` of ``image_size`` from the augmentations' detections (``boxes``,
        ``scores``, ``classes``, optional ``ious``, already in the original image's pixels), best
        first, at most ``TEST.DETECTIONS_PER_IMAGE``."""
        with_ious = all("ious" in x for x in per_aug)
        if merge_type_needs_ious(self.merge_type) and not with_ious:
            raise ValueError(
                f"TEST.AUG.MERGE_TYPE {self.merge_type!r} merges by the predicted IoUs, but the model's "
                "detections have none (pred_ious): enable MODEL.IOU_AWARE.IOU_HEAD.ENABLED (IoUAwareFCOS: "
                "MODEL.IOU_AWARE.QUALITY 'iou') or choose another TEST.AUG.MERGE_TYPE"
            )
        n = self.max_detections
        if self.merge_type == WBF:
            boxes, scores, classes = self._fuse(per_aug)
            return Instances(image_size, pred_boxes=Boxes(boxes[:n]), scores=scores[:n], pred_classes=classes[:n])
        boxes, scores, classes = (torch.cat([x[k] for x in per_aug]) for k in ("boxes", "scores", "classes"))
        ious: Optional[torch.Tensor] = torch.cat([x["ious"] for x in per_aug]) if with_ious else None
        keep, out_scores, out_boxes = run_nms(self.nms_cfg, boxes, scores, classes, ious)
        result = Instances(image_size, pred_boxes=Boxes(out_boxes[:n]), scores=out_scores[:n],
                           pred_classes=classes[keep[:n]])
        if ious is not None:
            result.pred_ious = ious[keep[:n]]
        return result

    def _fuse(self, per_aug: List[Dict[str, torch.Tensor]]):
        """Weighted Boxes Fusion of the augmentations (one "model" each, equal weights, its default
        ``conf_type="avg"``), class-aware, on the CPU (a sequential loop); boxes, scores, classes
        best first, on the detections' device and dtypes. Fused boxes carry no ``pred_ious``."""
        ref_boxes, ref_scores = per_aug[0]["boxes"], per_aug[0]["scores"]
        boxes, scores, labels = weighted_boxes_fusion(
            *([x[k].cpu() for x in per_aug] for k in ("boxes", "scores", "classes")),
            iou_threshold=self.iou_threshold,
        )
        return boxes.to(ref_boxes), scores.to(ref_scores), labels.to(ref_boxes.device)
