"""Run a trained detector on image files and write annotated images plus a JSON of detections."""

import glob
import json
import logging
import os
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

logger = logging.getLogger("detectron2")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Expand files, folders and glob patterns into a sorted list of image paths.

    Raises FileNotFoundError naming each input that matches nothing.
    """
    paths, missing = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(glob.glob(os.path.expanduser(item)))
        if not found:
            missing.append(item)
        paths.extend(found)
    if missing:
        raise FileNotFoundError(f"No image found at: {', '.join(missing)}")
    return paths


def resolve_weights(cfg) -> str:
    """MODEL.WEIGHTS, or OUTPUT_DIR/model_final.pth when unset; a clear error if it does not exist."""
    weights = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"Model weights not found: {weights!r}. Train first (tools/train_net.py) or pass "
            "MODEL.WEIGHTS /path/to/model_final.pth"
        )
    return weights


def instances_to_records(instances, class_names: Sequence[str]) -> List[Dict]:
    """Detections of one image as JSON-ready dicts (boxes in absolute x1, y1, x2, y2)."""
    boxes = instances.pred_boxes.tensor.tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    pred_ious = instances.pred_ious.tolist() if instances.has("pred_ious") else None
    records = []
    for i, (box, score, cls) in enumerate(zip(boxes, scores, classes)):
        rec = {
            "bbox_xyxy": [round(v, 2) for v in box],
            "score": round(score, 4),
            "category_id": cls,
            "category": class_names[cls] if cls < len(class_names) else str(cls),
        }
        if pred_ious is not None:
            rec["pred_iou"] = round(pred_ious[i], 4)
        records.append(rec)
    return records


def draw(image_bgr, instances, metadata):
    """Annotated RGB image: Detectron2's Visualizer, labels with score (and predicted IoU)."""
    vis = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    names = metadata.get("thing_classes", None)
    labels = []
    for i in range(len(instances)):
        cls = int(instances.pred_classes[i])
        text = f"{names[cls] if names else cls} {instances.scores[i]:.2f}"
        if instances.has("pred_ious"):
            text += f" iou {instances.pred_ious[i]:.2f}"
        labels.append(text)
    out = vis.overlay_instances(boxes=instances.pred_boxes, labels=labels)
    return out.get_image()


def _predictor(cfg):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = resolve_weights(cfg)
    cfg.freeze()
    return DefaultPredictor(cfg)


def _titled(image_rgb, title):
    bar = np.full((18, image_rgb.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, title, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, image_rgb], axis=0)


def run_demo(
    cfg, inputs: Sequence[str], output_dir: str, confidence_threshold: float = 0.5, max_images: int = 0,
    compare_cfg=None,
):
    """Detect objects in ``inputs`` (the first ``max_images`` when > 0); write ``<name>.png`` per
    image and ``detections.json``.

    With ``compare_cfg`` (e.g. a stock detector, or the same model with standard NMS), each PNG
    shows that model's detections on the left and ``cfg``'s on the right, and the JSON holds both
    (``{"left": [...], "right": [...]}`` per image). Returns the path of the JSON file.
    """
    for c in (cfg, compare_cfg):  # fail on missing weights before any work
        if c is not None:
            resolve_weights(c)
    images = collect_images(inputs)
    if max_images > 0:
        images = images[:max_images]
    models = [("right", cfg, _predictor(cfg))]
    if compare_cfg is not None:
        models.insert(0, ("left", compare_cfg, _predictor(compare_cfg)))
    dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
    metadata = MetadataCatalog.get(dataset)
    class_names = metadata.get("thing_classes", [])
    os.makedirs(output_dir, exist_ok=True)

    results = {}
    for k, path in enumerate(images):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"Could not read image {path!r}")
        panels, records = [], {}
        for side, model_cfg, predictor in models:
            with torch.no_grad():
                instances = predictor(image)["instances"].to("cpu")
            instances = instances[instances.scores >= confidence_threshold]
            records[side] = instances_to_records(instances, class_names)
            panel = draw(image, instances, metadata)
            if compare_cfg is not None:
                panel = _titled(panel, describe(model_cfg))
            panels.append(panel)
        name = os.path.splitext(os.path.basename(path))[0]
        out_path = os.path.join(output_dir, f"{name}.png")
        cv2.imwrite(out_path, np.concatenate(panels, axis=1)[:, :, ::-1])
        results[path] = records if compare_cfg is not None else records["right"]
        logger.info("[%d/%d] %s: %s -> %s", k + 1, len(images), path,
                    ", ".join(f"{len(v)} detections" for v in records.values()), out_path)

    json_path = os.path.join(output_dir, "detections.json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    logger.info("Wrote %d annotated images and %s", len(images), json_path)
    return json_path


def describe(cfg) -> str:
    """A short label for a model: architecture, box loss and NMS."""
    c = cfg.MODEL.IOU_AWARE
    arch = "RetinaNet" if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE else "Faster R-CNN"
    parts = [arch, c.BOX_LOSS or "stock loss"]
    if c.IOU_HEAD.ENABLED:
        parts.append("IoU head")
    parts.append(f"{c.NMS.TYPE} NMS")
    return ", ".join(parts)
