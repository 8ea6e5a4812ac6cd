"""Datasets: the embedded synthetic detection dataset (``synthetic_shapes``).

Importing this package registers ``synthetic_shapes_train`` and ``synthetic_shapes_val`` with
Detectron2's catalogs (:mod:`.register`) using the defaults (like Detectron2's builtin datasets,
registration is cheap: the data is generated on first use under
``$IOU_AWARE_DATASETS/synthetic_shapes``, ``IOU_AWARE_DATASETS`` defaulting to ``datasets``). Call :func:`register_synthetic_datasets`
again to change sizes, image size, seed or root. The generator (:mod:`.shapes` draws the
images, :mod:`.coco_writer` writes the COCO json and PNGs) needs only numpy, Pillow and
pycocotools, so it also works where Detectron2 is not installed.
"""

import importlib.util

from .coco_writer import dataset_dir, generate_synthetic_dataset, write_json_atomic
from .register import (
    SYNTHETIC_DATASET_NAMES,
    THING_COLORS,
    default_root,
    ensure_synthetic_dataset,
    register_synthetic_datasets,
)
from .shapes import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    SyntheticObject,
    SyntheticShapesParams,
    mask_to_bbox,
    render_sample,
    sample_rng,
)

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "SYNTHETIC_DATASET_NAMES",
    "THING_COLORS",
    "SyntheticObject",
    "SyntheticShapesParams",
    "dataset_dir",
    "default_root",
    "ensure_synthetic_dataset",
    "generate_synthetic_dataset",
    "mask_to_bbox",
    "register_synthetic_datasets",
    "render_sample",
    "sample_rng",
    "write_json_atomic",
]

if importlib.util.find_spec("detectron2") is not None:
    register_synthetic_datasets()
