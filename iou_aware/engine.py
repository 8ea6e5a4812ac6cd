"""Training glue: the project's ``DefaultTrainer`` subclass and the config set-up it needs.

Kept out of ``tools/train_net.py`` so that tests and other tools can import it; the script itself
stays Detectron2's own shape.
"""

import contextlib
import logging
import os

import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm

from . import modeling  # noqa: F401  (registers IoUAwareRetinaNet, IoUAwareFCOS and IoUAwareROIHeads)
from .config import add_iou_aware_config
from .data import register_synthetic_datasets

logger = logging.getLogger("detectron2")


def create_ddp_model_cpu_safe(model, **kwargs):
    """Detectron2's ``create_ddp_model`` that also works for multi-process CPU (gloo) training.

    Detectron2 always passes ``device_ids=[local_rank]``; DistributedDataParallel rejects
    ``device_ids`` for a CPU module. On CPU we pass ``device_ids=None`` instead.
    """
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _D2_CREATE_DDP_MODEL(model, **kwargs)


_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


@contextlib.contextmanager
def _cpu_safe_ddp():
    # DefaultTrainer.__init__ calls the module-level create_ddp_model of detectron2.engine.defaults;
    # swap it for the CPU-safe one only while our trainer is being built.
    d2_defaults.create_ddp_model = create_ddp_model_cpu_safe
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the IoU-aware evaluator and CPU-safe multi-process training."""

    def __init__(self, cfg):
        with _cpu_safe_ddp():
            super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from .evaluation import IoUAwareCOCOEvaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return IoUAwareCOCOEvaluator(dataset_name, output_dir=output_folder)


def register_datasets_from_cfg(cfg):
    """Register the built-in synthetic dataset (``synthetic_shapes_*``) when the config uses it."""
    names = tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST)
    if any(n.startswith("synthetic_shapes_") for n in names):
        s = cfg.DATASETS.SYNTHETIC
        register_synthetic_datasets(
            root=s.ROOT or None,
            num_train=s.NUM_TRAIN,
            num_val=s.NUM_VAL,
            image_size=s.IMAGE_SIZE,
            seed=s.SEED,
        )


def setup_cfg(config_file="", opts=(), args=None):
    """Build a frozen config: Detectron2's defaults + ``add_iou_aware_config`` + file + opts.

    With ``args`` (from ``default_argument_parser``) it also runs Detectron2's ``default_setup``
    (logger, OUTPUT_DIR, config dump, seed). Datasets named by the config are registered.
    """
    cfg = get_cfg()
    add_iou_aware_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning("CUDA is not available: MODEL.DEVICE %s -> cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    if args is not None:
        default_setup(cfg, args)
    register_datasets_from_cfg(cfg)
    return cfg
