#!/usr/bin/env python
"""Evaluate the same trained weights with several NMS types and print one table.

    python tools/compare_nms.py --config-file configs/synthetic/retinanet_R18_FPN_iou_aware.yaml \
        [--types standard iou_guided score_fused] [--output DIR] [KEY VALUE ...]

Weights: MODEL.WEIGHTS, or the config's OUTPUT_DIR/model_final.pth when unset. The table (AP,
AP50, AP75, AP90, mAP75:95 in percent; score/IoU Pearson and AIC as fractions; inference ms per
image) is printed and written to OUTPUT_DIR/nms_comparison.md and .csv (or to --output). Types that
need the IoU head are reported as skipped on a model without one.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from iou_aware.demo import resolve_weights
from iou_aware.engine import setup_cfg
from iou_aware.evaluation.nms_comparison import (
    DEFAULT_TYPES,
    compare_nms_types,
    format_nms_table,
    write_nms_comparison,
)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES), metavar="TYPE",
                   help="values of MODEL.IOU_AWARE.NMS.TYPE to compare (default: %(default)s)")
    p.add_argument("--output", metavar="DIR", help="folder for nms_comparison.md/.csv (default: OUTPUT_DIR)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="detectron2")
    setup_logger(name="iou_aware")
    try:
        cfg = setup_cfg(args.config_file, args.opts)
        weights = resolve_weights(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = compare_nms_types(cfg, weights, args.types)
    paths = write_nms_comparison(rows, args.output or cfg.OUTPUT_DIR)
    print(f"\nNMS types on the same weights ({weights}, dataset {cfg.DATASETS.TEST[0]}):\n")
    print(format_nms_table(rows))
    print(f"\nwritten to {paths['md']} and {paths['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
