#!/usr/bin/env python
"""Run a trained (IoU-aware) detector on images; write annotated images and detections.json.

    python tools/demo.py --config-file configs/synthetic/retinanet_R18_FPN.yaml \
        --input datasets/synthetic_shapes/.../val/images --output output/demo \
        [--confidence-threshold 0.5] [--opts MODEL.WEIGHTS output/.../model_final.pth]

Without MODEL.WEIGHTS the config's OUTPUT_DIR/model_final.pth is used.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from iou_aware.demo import run_demo
from iou_aware.engine import setup_cfg


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    p.add_argument("--output", required=True, help="folder for annotated images and detections.json")
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    p.add_argument("--max-images", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="detectron2")
    setup_logger(name="iou_aware")
    cfg = setup_cfg(args.config_file, args.opts)
    try:
        run_demo(cfg, args.input, args.output, args.confidence_threshold, args.max_images)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Annotated images and detections.json written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
