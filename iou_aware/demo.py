"""Run a trained detector on image files and write annotated images plus a JSON of detections.

Every readable image is processed; the others are reported and skipped, and ``detections.json``
is always written. Each input gets its own ``<name>.png`` (``b.jpg`` and ``b.png`` give
``b_jpg.png`` and ``b_png.png``). Small images are drawn on an upscaled copy (``scale``) so that
labels and titles stay readable; the JSON keeps the input's pixel coordinates.
"""

import glob
import json
import logging
import math
import os
from typing import Dict, List, NamedTuple, Sequence, Union

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.structures import Boxes, Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

from .checkpoint import CheckpointError, SafeCheckpointer

logger = logging.getLogger("detectron2")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# scale "auto": images whose short side is below this are drawn upscaled by a whole factor
READABLE_SHORT_SIDE = 512


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
    seen, unique = set(), []  # a file given twice (as itself and in its folder) is processed once
    for p in paths:
        if os.path.realpath(p) not in seen:
            seen.add(os.path.realpath(p))
            unique.append(p)
    return unique


def output_names(paths: Sequence[str]) -> List[str]:
    """One distinct ``.png`` name per input: ``<stem>.png``; stems shared by several inputs get
    their extension (``b_jpg.png``, ``b_png.png``), and a number if that is still not unique."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names = [
        s if stems.count(s) == 1 else s + "_" + os.path.splitext(p)[1].lstrip(".").lower()
        for s, p in zip(stems, paths)
    ]
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}_{seen[n]}")
    return [f"{n}.png" for n in out]


def check_demo_args(output_dir: str, confidence_threshold: float, max_images: int, scale):
    """ValueError naming the option (``--confidence-threshold`` ...) of an invalid argument."""
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(
            f"--confidence-threshold must be in [0, 1] (a detection score), got {confidence_threshold}")
    if max_images < 0:
        raise ValueError(f"--max-images must be >= 0 (0 = all images), got {max_images}")
    if scale != "auto" and not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(f"--scale must be 'auto' or a number > 0, got {scale!r}")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output {output_dir!r} is an existing file: give a folder (it is created if needed)")


def draw_scale(height: int, width: int, scale: Union[str, float] = "auto") -> float:
    """The factor images are drawn at: ``scale``, or for "auto" the smallest whole factor that
    brings the short side to ``READABLE_SHORT_SIDE`` pixels (1 for larger images)."""
    if scale == "auto":
        return float(max(1, math.ceil(READABLE_SHORT_SIDE / max(1, min(height, width)))))
    return float(scale)


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


def draw(image_bgr, instances, metadata, scale: float = 1.0):
    """Annotated RGB image, ``scale`` times the input's size: Detectron2's Visualizer, labels with
    score (and predicted IoU)."""
    if scale != 1.0:
        h, w = image_bgr.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if scale > 1 and float(scale).is_integer():
            interpolation = cv2.INTER_NEAREST  # whole factors: every pixel becomes a crisp block
        else:
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image_bgr = cv2.resize(image_bgr, size, interpolation=interpolation)
        instances = Instances((size[1], size[0]), **instances.get_fields())
        instances.pred_boxes = Boxes(instances.pred_boxes.tensor * scale)
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
    """``DefaultPredictor`` whose weights are loaded by ``SafeCheckpointer``: ValueError naming
    MODEL.WEIGHTS when the file cannot be read or leaves parameters without weights."""
    weights = resolve_weights(cfg)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    checkpointer = SafeCheckpointer(predictor.model)
    try:
        checkpointer.load(weights)
    except CheckpointError as e:
        raise CheckpointError(f"MODEL.WEIGHTS: {e}") from e
    checkpointer.check_complete(f"MODEL.WEIGHTS {weights!r}")
    return predictor


def _titled(image_rgb, title):
    """``title`` in a white bar above the image, as large as fits its width."""
    width = image_rgb.shape[1]
    font, size = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, width / 900)
    text_w = cv2.getTextSize(title, font, size, 1)[0][0]
    if text_w > width - 6:
        size *= (width - 6) / text_w
    (_, text_h), base = cv2.getTextSize(title, font, size, 1)
    bar = np.full((text_h + base + 8, width, 3), 255, dtype=np.uint8)
    cv2.putText(bar, title, (3, text_h + 4), font, size, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, image_rgb], axis=0)


class DemoOutput(NamedTuple):
    json_path: str
    written: List[str]  # annotated images
    skipped: List[str]  # "path: reason" of the inputs that could not be processed


def run_demo(
    cfg, inputs: Sequence[str], output_dir: str, confidence_threshold: float = 0.5, max_images: int = 0,
    compare_cfg=None, scale: Union[str, float] = "auto",
) -> DemoOutput:
    """Detect objects in ``inputs`` (the first ``max_images`` when > 0); write a PNG per image
    (names from :func:`output_names`) and ``detections.json`` (input path -> detections).

    With ``compare_cfg`` (e.g. a stock detector, or the same model with standard NMS), each PNG
    shows that model's detections on the left and ``cfg``'s on the right, and the JSON holds both
    (``{"left": [...], "right": [...]}`` per image). Images are drawn at :func:`draw_scale`
    (``scale``: "auto" or a factor). Images that cannot be read are logged and skipped; the JSON
    is written in any case. Raises ValueError (naming the option) for invalid arguments.
    """
    check_demo_args(output_dir, confidence_threshold, max_images, scale)
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

    results, written, skipped = {}, [], []
    for k, (path, name) in enumerate(zip(images, output_names(images))):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            skipped.append(f"{path}: not a readable image")
            logger.warning("[%d/%d] skipping %s: not a readable image", k + 1, len(images), path)
            continue
        factor = draw_scale(*image.shape[:2], scale)
        panels, records = [], {}
        for side, model_cfg, predictor in models:
            with torch.no_grad():
                instances = predictor(image)["instances"].to("cpu")
            instances = instances[instances.scores >= confidence_threshold]
            records[side] = instances_to_records(instances, class_names)
            panel = draw(image, instances, metadata, factor)
            if compare_cfg is not None:
                panel = _titled(panel, describe(model_cfg))
            panels.append(panel)
        out_path = os.path.join(output_dir, name)
        if not cv2.imwrite(out_path, np.concatenate(panels, axis=1)[:, :, ::-1]):
            raise OSError(f"could not write {out_path!r}")
        written.append(out_path)
        results[path] = records if compare_cfg is not None else records["right"]
        logger.info("[%d/%d] %s: %s -> %s", k + 1, len(images), path,
                    ", ".join(f"{len(v)} detections" for v in records.values()), out_path)

    json_path = os.path.join(output_dir, "detections.json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    logger.info("Wrote %d annotated images and %s%s", len(written), json_path,
                f"; skipped {len(skipped)} unreadable images" if skipped else "")
    return DemoOutput(json_path, written, skipped)


def describe(cfg) -> str:
    """A short label for a model: architecture, box loss and NMS."""
    c = cfg.MODEL.IOU_AWARE
    arch = "RetinaNet" if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE else "Faster R-CNN"
    parts = [arch, c.BOX_LOSS or "stock loss"]
    if c.IOU_HEAD.ENABLED:
        parts.append("IoU head")
    parts.append(f"{c.NMS.TYPE} NMS")
    return ", ".join(parts)
