#!/usr/bin/env python
"""Train and evaluate an (IoU-aware) Detectron2 detector.

Detectron2's own ``tools/train_net.py`` with the project's config hook added:

    python tools/train_net.py --config-file configs/synthetic/retinanet_R18_FPN.yaml
    python tools/train_net.py --num-gpus 8 --config-file configs/COCO-Detection/<config>.yaml
    python tools/train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS <output>/model_final.pth
    python tools/train_net.py --config-file <cfg> --resume          # continue from last_checkpoint
    python tools/train_net.py --config-file <cfg> --dataset my_train=train.json:images \\
        DATASETS.TRAIN '("my_train",)' ...                         # a COCO-format dataset of your own

On a machine without a GPU ``--num-gpus N`` starts N CPU processes (gloo backend). With more
processes than GPUs, ``IOU_AWARE_SHARE_GPUS=1`` lets them share the GPUs over gloo (a test of the
distributed path; ``iou_aware.engine.launch``).
``--dataset NAME=JSON:IMAGE_ROOT`` (repeatable) registers a COCO-format json and its image folder
under NAME (the command-line form of DATASETS.COCO_FILES). With ``TEST.AUG.ENABLED True`` every
TEST dataset is also evaluated with test-time augmentation (``Trainer.test_with_TTA``, keys
``TEST.AUG.*``) after training and with ``--eval-only``. Configuration and checkpoint errors end
with ``error: ...`` and exit code 2.
"""

import contextlib
import sys

from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from iou_aware.engine import Trainer, launch, load_weights_for_evaluation, setup_cfg


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="NAME=JSON:IMAGE_ROOT",
        help="register a COCO-format json and its image folder as dataset NAME (repeatable); "
             "use NAME in DATASETS.TRAIN / DATASETS.TEST",
    )
    return parser


@contextlib.contextmanager
def clean_errors():
    """Config, dataset and checkpoint errors: ``error: <message>`` and exit code 2."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main(args):
    with clean_errors():
        cfg = setup_cfg(args.config_file, args.opts, args=args, coco_files=args.dataset)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        with clean_errors():
            load_weights_for_evaluation(model, cfg, resume=args.resume)
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    with clean_errors():
        trainer.resume_or_load(resume=args.resume)
    return trainer.train()  # with TEST.AUG.ENABLED, Trainer's hooks also evaluate with TTA


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
