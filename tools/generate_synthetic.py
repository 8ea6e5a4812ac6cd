#!/usr/bin/env python
"""Generate the synthetic detection dataset (``synthetic_shapes``) as COCO json + PNG images.

Example::

    python tools/generate_synthetic.py --num-train 1000 --num-val 100 --image-size 128 --seed 0

Training does not need this step (the registered datasets are generated on first use); it is
for inspecting the data or generating it ahead of time. Existing complete splits with the same
parameters are reused unless ``--overwrite`` is given.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The generator needs only numpy, Pillow and pycocotools.
from iou_aware.data.coco_writer import generate_synthetic_dataset  # noqa: E402
from iou_aware.data.register import (  # noqa: E402
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    default_root,
)
from iou_aware.data.shapes import DEFAULT_IMAGE_SIZE, DEFAULT_SEED  # noqa: E402


def _image_size(text):
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return tuple(values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=None,
        help="base folder (default: $IOU_AWARE_DATASETS/synthetic_shapes, "
        "IOU_AWARE_DATASETS defaulting to ./datasets)",
    )
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument(
        "--image-size",
        type=_image_size,
        default=DEFAULT_IMAGE_SIZE,
        help="N or HxW (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--overwrite", action="store_true", help="regenerate existing splits")
    args = parser.parse_args(argv)

    root = os.path.abspath(args.root) if args.root else default_root()
    for split, num in (("train", args.num_train), ("val", args.num_val)):
        if num <= 0:
            continue
        start = time.perf_counter()
        json_path, image_dir = generate_synthetic_dataset(
            root, split, num, image_size=args.image_size, seed=args.seed, overwrite=args.overwrite
        )
        print(
            f"{split}: {num} images {args.image_size[0]}x{args.image_size[1]} seed {args.seed} "
            f"({time.perf_counter() - start:.1f}s)\n  json:   {json_path}\n  images: {image_dir}"
        )


if __name__ == "__main__":
    main()
