#!/usr/bin/env python
"""Run a trained (IoU-aware) detector on images; write annotated images and detections.json.

    python tools/demo.py --config-file configs/synthetic/retinanet_R18_FPN.yaml \
        --input datasets/synthetic_shapes/.../val/images --output output/demo \
        [--confidence-threshold 0.5] [--scale auto] [--opts MODEL.WEIGHTS output/.../model_final.pth]

Without MODEL.WEIGHTS the config's OUTPUT_DIR/model_final.pth is used.
--scale draws on an enlarged copy: "auto" (default) enlarges images whose short side is below
512 px by the smallest whole factor that reaches it (128 px -> 4x), a number is the factor itself;
detections.json keeps the input's pixel coordinates.
Unreadable images are reported and skipped (exit code 1 when any was skipped); detections.json is
always written. --dataset NAME=JSON:IMAGE_ROOT registers a COCO-format dataset (for its class names
when DATASETS.TEST names it), as in tools/train_net.py.
--nms TYPE overrides MODEL.IOU_AWARE.NMS.TYPE (a registered NMS type: standard, score_fused,
iou_guided, soft, or one added with iou_aware.nms.register_nms).
--side-by-side writes, per image, a reference on the left and this model on the right: the
detector of --compare-config/--compare-weights (e.g. a stock RetinaNet), or by default the same
weights with standard NMS.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from iou_aware.demo import run_demo
from iou_aware.engine import setup_cfg
from iou_aware.nms import NMS_REGISTRY


def _scale(text):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto' or a number > 0, got {text!r}") from None


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    p.add_argument("--output", required=True, help="folder for annotated images and detections.json")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="in [0, 1]")
    p.add_argument("--scale", type=_scale, default="auto",
                   help="draw at this factor, or 'auto': small images enlarged to a 512 px short side")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=JSON:IMAGE_ROOT",
                   help="register a COCO-format dataset (repeatable), as tools/train_net.py --dataset")
    p.add_argument("--max-images", type=int, default=0, help="only the first N images (0: all)")
    # the registry itself: its names are read when the arguments are parsed
    p.add_argument("--nms", choices=NMS_REGISTRY, help="override MODEL.IOU_AWARE.NMS.TYPE")
    p.add_argument("--side-by-side", action="store_true", help="reference detections on the left")
    p.add_argument("--compare-config", metavar="FILE", help="config of the reference model")
    p.add_argument("--compare-weights", metavar="FILE", help="weights of the reference model")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="detectron2")
    setup_logger(name="iou_aware")
    opts = list(args.opts)
    if args.nms:
        opts += ["MODEL.IOU_AWARE.NMS.TYPE", args.nms]
    try:
        cfg = setup_cfg(args.config_file, opts, coco_files=args.dataset)
        compare_cfg = None
        if args.side_by_side or args.compare_config or args.compare_weights:
            if args.compare_config:
                compare_opts = ["MODEL.WEIGHTS", args.compare_weights or ""]
                compare_cfg = setup_cfg(args.compare_config, compare_opts, coco_files=args.dataset)
            else:  # the same model, stock NMS
                compare_opts = opts + ["MODEL.IOU_AWARE.NMS.TYPE", "standard"]
                if args.compare_weights:
                    compare_opts += ["MODEL.WEIGHTS", args.compare_weights]
                compare_cfg = setup_cfg(args.config_file, compare_opts, coco_files=args.dataset)
        out = run_demo(cfg, args.input, args.output, args.confidence_threshold, args.max_images, compare_cfg,
                       scale=args.scale)
    except (FileNotFoundError, ValueError) as e:  # missing weights/images, invalid arguments or config
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(out.written)} annotated images and detections.json written to {args.output}")
    if out.skipped:
        print(f"error: skipped {len(out.skipped)} unreadable images:\n  " + "\n  ".join(out.skipped),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
