#!/usr/bin/env python
"""Train and evaluate an (IoU-aware) Detectron2 detector.

Detectron2's own ``tools/train_net.py`` with the project's config hook added:

    python tools/train_net.py --config-file configs/synthetic/retinanet_R18_FPN.yaml
    python tools/train_net.py --num-gpus 8 --config-file configs/COCO-Detection/<config>.yaml
    python tools/train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS <output>/model_final.pth
    python tools/train_net.py --config-file <cfg> --resume          # continue from last_checkpoint

On a machine without a GPU ``--num-gpus N`` starts N CPU processes (gloo backend). With more
processes than GPUs, ``IOU_AWARE_SHARE_GPUS=1`` lets them share the GPUs over gloo (a test of the
distributed path; ``iou_aware.engine.launch``).
"""

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from iou_aware.engine import Trainer, launch, setup_cfg


def main(args):
    cfg = setup_cfg(args.config_file, args.opts, args=args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
