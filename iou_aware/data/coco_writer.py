"""Writing the synthetic dataset: COCO json + PNG images, one folder per split.

A split lives in ``{root}/{split}_n{num_images}_{H}x{W}_seed{seed}_{hash}`` (:func:`dataset_dir`)
with ``images/{split}_{index:06d}.png``, ``manifest.json`` (every generation parameter) and
``annotations.json`` (COCO). Boxes are COCO ``[x, y, w, h]`` in pixel units of the visible mask:
``x = x_min``, ``w = x_max - x_min + 1`` (pixel ``i`` covers ``[i, i + 1)``), so the box encloses
the visible pixels exactly, the same convention as ``pycocotools.mask.toBbox``. ``area`` is the
visible pixel count and ``segmentation`` the visible mask as compressed RLE.

Crash safety. A split is written into a temporary sibling folder that is renamed into place, and
each json file is written to a temporary file in its folder and moved over the target with
``os.replace`` (:func:`write_json_atomic`), so a reader never sees half a file. A split folder is
reused only if its ``annotations.json`` parses as COCO and lists every image, whose files exist;
otherwise (e.g. a crash or a full disk while it was written by other means) a ``RuntimeWarning``
names the file and the split is regenerated.

Zero-width or zero-height ground-truth boxes are never written. Every annotated object has a
non-empty visible mask (:class:`~iou_aware.data.shapes.SyntheticShapesParams` requires
``min_visible_pixels >= 1`` and ``min_visible_side >= 1``), and the tight box of a non-empty
mask is at least 1 px on each side. Writing one would not be harmless: Detectron2's training
mapper drops empty boxes (``filter_empty_instances``), but COCO evaluation keeps them as ground
truth that no detection can overlap, a false negative in every AP of the evaluator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from ..atomic import atomic_write
from .shapes import (
    CLASS_NAMES,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SEED,
    GENERATOR_VERSION,
    SyntheticShapesParams,
    render_sample,
    sample_rng,
)

__all__ = [
    "GENERATOR_NAME",
    "dataset_dir",
    "generate_synthetic_dataset",
    "resolve_params",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

#: The generator's name as recorded in ``manifest.json`` and the COCO ``info``; it enters the
#: folder hash of :func:`dataset_dir`, so it is fixed like the rest of the output format.
GENERATOR_NAME = "iou_aware.data.synthetic"


def resolve_params(image_size, params: Optional[SyntheticShapesParams]) -> SyntheticShapesParams:
    """Sampler params from ``image_size`` and/or ``params`` (``None`` image size: the params'
    own, or :data:`DEFAULT_IMAGE_SIZE`; an int ``n`` means ``(n, n)``)."""
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    if params is None:
        return SyntheticShapesParams(image_size=tuple(image_size or DEFAULT_IMAGE_SIZE))
    if image_size is not None and tuple(int(v) for v in image_size) != params.image_size:
        raise ValueError(
            f"image_size {tuple(image_size)} disagrees with params.image_size {params.image_size}"
        )
    return params


def _manifest(split: str, num_images: int, seed: int, p: SyntheticShapesParams) -> dict:
    return {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "num_images": int(num_images),
        "seed": int(seed),
        "params": asdict(p),
    }


def dataset_dir(
    root: str,
    split: str,
    num_images: int,
    image_size: Optional[Tuple[int, int]] = None,
    seed: int = DEFAULT_SEED,
    params: Optional[SyntheticShapesParams] = None,
) -> str:
    """The folder a split is written to; its name encodes every generation parameter.

    ``{root}/{split}_n{num_images}_{H}x{W}_seed{seed}_{hash}`` where ``hash`` covers the
    generator version and all :class:`SyntheticShapesParams`, so a change of any of them
    leads to a new folder (regeneration) rather than a stale dataset.
    """
    p = resolve_params(image_size, params)
    blob = json.dumps(_manifest(split, num_images, seed, p), sort_keys=True).encode("utf-8")
    digest = hashlib.sha1(blob).hexdigest()[:8]
    h, w = p.image_size
    return os.path.join(root, f"{split}_n{int(num_images)}_{h}x{w}_seed{int(seed)}_{digest}")


def write_json_atomic(path: str, obj, end: str = "", **dump_kwargs) -> None:
    """Write ``json.dump(obj, **dump_kwargs)`` followed by ``end`` to ``path`` atomically.

    The text goes to a temporary file in the same folder (so the final move stays on one file
    system), is flushed to disk, then replaces ``path`` with ``os.replace``: ``path`` holds either
    its previous content or the whole new one, never part of it. If writing fails, the temporary
    file is removed and the error raised.
    """
    def write(f):
        json.dump(obj, f, **dump_kwargs)
        f.write(end)

    atomic_write(path, write, mode="w")


def _encode_rle(mask: np.ndarray) -> dict:
    import pycocotools.mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_split(out_dir: str, split: str, num_images: int, seed: int, p: SyntheticShapesParams):
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    h, w = p.image_size
    images, annotations = [], []
    ann_id = 1
    for i in range(num_images):
        image, objects = render_sample(sample_rng(seed, split, i), p)
        file_name = f"{split}_{i:06d}.png"
        # Fast zlib level: the noisy images barely compress anyway, and encoding dominates.
        Image.fromarray(image, mode="RGB").save(
            os.path.join(image_dir, file_name), format="PNG", compress_level=1
        )
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for obj in objects:
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": obj.category_id,
                    "bbox": obj.bbox,
                    "area": obj.area,
                    "segmentation": _encode_rle(obj.visible_mask),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    coco = {
        "info": {
            "description": f"synthetic_shapes {split} ({GENERATOR_NAME})",
            "version": str(GENERATOR_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(CLASS_NAMES)
        ],
    }
    write_json_atomic(
        os.path.join(out_dir, "manifest.json"),
        _manifest(split, num_images, seed, p),
        end="\n",
        indent=1,
        sort_keys=True,
    )
    # The annotation file is written last: its presence marks a complete folder.
    write_json_atomic(os.path.join(out_dir, "annotations.json"), coco, separators=(",", ":"))


def split_problem(json_path: str, image_dir: str, num_images: int) -> Optional[str]:
    """``None`` if the split at ``json_path`` / ``image_dir`` is complete, else what is wrong:
    no annotation file, one that does not parse as COCO json, a different number of images than
    ``num_images``, or image files missing."""
    if not os.path.isfile(json_path):
        return "no annotation file"
    try:
        with open(json_path, encoding="utf-8") as f:
            coco = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: json.JSONDecodeError, UnicodeDecodeError
        return f"unreadable annotation file ({type(e).__name__}: {e})"
    keys = ("images", "annotations", "categories")
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in keys):
        return f"not a COCO annotation file (needs the lists {', '.join(keys)})"
    images = coco["images"]
    if len(images) != num_images:
        return f"{len(images)} images listed, {num_images} expected"
    for im in images:
        name = im.get("file_name") if isinstance(im, dict) else None
        if not isinstance(name, str) or not os.path.isfile(os.path.join(image_dir, name)):
            return f"image {name!r} listed but not in {image_dir}"
    return None


def generate_synthetic_dataset(
    root: str,
    split: str,
    num_images: int,
    image_size: Optional[Tuple[int, int]] = None,
    seed: int = DEFAULT_SEED,
    params: Optional[SyntheticShapesParams] = None,
    overwrite: bool = False,
) -> Tuple[str, str]:
    """Generate (or reuse) one split of the synthetic dataset.

    Args:
        root: base folder; the split goes to :func:`dataset_dir` under it.
        split: split name, e.g. ``"train"`` or ``"val"``; it selects the random stream, so
            different splits of the same seed hold different images.
        num_images: number of images (every image holds at least one object).
        image_size: ``(H, W)``; default ``params.image_size`` or (128, 128).
        seed: base seed.
        params: further sampler knobs (its ``image_size`` must agree with ``image_size``).
        overwrite: regenerate even if a complete folder exists.

    Returns:
        ``(json_path, image_dir)``. A complete existing folder with the same parameters is
        reused; an incomplete or corrupt one is regenerated, with a ``RuntimeWarning`` naming
        its annotation file when that file exists. Writing goes to a temporary sibling folder
        that is renamed into place, so concurrent callers (e.g. several training processes)
        never see a half-written split.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    p = resolve_params(image_size, params)
    out_dir = dataset_dir(root, split, num_images, seed=seed, params=p)
    json_path = os.path.join(out_dir, "annotations.json")
    image_dir = os.path.join(out_dir, "images")
    if not overwrite:
        problem = split_problem(json_path, image_dir, num_images)
        if problem is None:
            return json_path, image_dir
        if os.path.exists(json_path):
            warnings.warn(
                f"{json_path}: {problem}; regenerating the synthetic {split} split in {out_dir}",
                RuntimeWarning,
                stacklevel=2,
            )

    os.makedirs(root, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp_{os.path.basename(out_dir)}_", dir=root)
    try:
        _write_split(tmp_dir, split, num_images, seed, p)
        if os.path.isdir(out_dir):
            if overwrite:
                shutil.rmtree(out_dir)
            elif split_problem(json_path, image_dir, num_images) is None:
                return json_path, image_dir  # completed by another process meanwhile
            else:
                shutil.rmtree(out_dir, ignore_errors=True)  # incomplete or corrupt leftover
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            # not another process winning the race
            if split_problem(json_path, image_dir, num_images) is not None:
                raise
    finally:
        if os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("Generated %d synthetic %s images in %s", num_images, split, out_dir)
    return json_path, image_dir
