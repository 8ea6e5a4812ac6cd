"""Training glue: the project's ``DefaultTrainer`` subclass and the config set-up it needs.

Kept out of ``tools/train_net.py`` so that tests and other tools can import it; the script itself
stays Detectron2's own shape.
"""

import contextlib
import logging
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.engine.launch import launch as d2_launch
from detectron2.utils import comm

from . import modeling  # noqa: F401  (registers IoUAwareRetinaNet and IoUAwareROIHeads)
from .config import add_iou_aware_config
from .data import register_synthetic_datasets

logger = logging.getLogger("detectron2")


def ddp_device_ids(device: torch.device):
    """``device_ids`` for DistributedDataParallel of a module on ``device``: None on CPU (DDP
    rejects device ids for a CPU module), else the module's own GPU, which differs from the local
    rank when processes share GPUs (``launch`` with ``IOU_AWARE_SHARE_GPUS=1``)."""
    if device.type != "cuda":
        return None
    return [device.index if device.index is not None else torch.cuda.current_device()]


def create_ddp_model_cpu_safe(model, **kwargs):
    """Detectron2's ``create_ddp_model`` that also works for multi-process CPU (gloo) training and
    for processes sharing a GPU.

    Detectron2 always passes ``device_ids=[local_rank]``; DistributedDataParallel rejects
    ``device_ids`` for a CPU module, and with shared GPUs the local rank is not the model's GPU.
    We pass ``ddp_device_ids`` of the model's device instead.
    """
    if comm.get_world_size() > 1:
        kwargs.setdefault("device_ids", ddp_device_ids(next(model.parameters()).device))
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


SHARE_GPUS_ENV = "IOU_AWARE_SHARE_GPUS"


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=()):
    """Detectron2's ``launch``, and processes that share GPUs when ``IOU_AWARE_SHARE_GPUS=1``.

    Detectron2 runs one process per GPU over NCCL (which needs a GPU of its own per process) and
    stops at an assertion when more processes than visible GPUs are asked for. Here that case ends
    in a clear error, or, with the environment variable ``IOU_AWARE_SHARE_GPUS=1``, the processes
    run over gloo, process ``r`` on GPU ``r % device_count``: slower, meant to exercise the
    distributed path (DDP, gathered evaluation) on a machine with fewer GPUs, e.g. two processes
    on one GPU. Without CUDA, or with enough GPUs, this is Detectron2's ``launch`` unchanged.
    """
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus == 0 or num_gpus_per_machine <= n_gpus:
        return d2_launch(main_func, num_gpus_per_machine, num_machines=num_machines,
                         machine_rank=machine_rank, dist_url=dist_url, args=args)
    if os.environ.get(SHARE_GPUS_ENV) != "1":
        raise SystemExit(
            f"--num-gpus {num_gpus_per_machine}: only {n_gpus} CUDA device(s) visible, and NCCL needs "
            f"one GPU per process. Lower --num-gpus to {n_gpus}, or set {SHARE_GPUS_ENV}=1 to run the "
            "processes on the visible GPUs over gloo (slower; for testing the distributed path)."
        )
    if dist_url == "auto":
        if num_machines != 1:
            raise SystemExit("--dist-url auto works on one machine only: give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    world_size = num_machines * num_gpus_per_machine
    logger.warning("%d processes share %d GPU(s) over gloo (%s=1)", num_gpus_per_machine, n_gpus,
                   SHARE_GPUS_ENV)
    mp.start_processes(
        _shared_gpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args),
        daemon=False,
    )


def _shared_gpu_worker(local_rank, main_func, world_size, num_procs, machine_rank, dist_url, args):
    """Detectron2's ``_distributed_worker`` (detectron2/engine/launch.py) with gloo as the backend
    and GPU ``local_rank % device_count``."""
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                            rank=machine_rank * num_procs + local_rank, timeout=DEFAULT_TIMEOUT)
    comm.create_local_process_group(num_procs)
    torch.cuda.set_device(local_rank % torch.cuda.device_count())
    comm.synchronize()
    main_func(*args)


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
