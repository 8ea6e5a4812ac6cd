"""Training glue: the project's ``DefaultTrainer`` subclass and the config set-up it needs.

Kept out of ``tools/train_net.py`` so that tests and other tools can import it; the script itself
stays Detectron2's own shape. The trainer writes its checkpoints atomically and resumes from the
newest readable one (``iou_aware.checkpoint.SafeCheckpointer``) and stops a diverging training
(``iou_aware.divergence.DivergenceGuard``, keys ``SOLVER.DIVERGENCE_GUARD.*``), for every detector.
"""

import contextlib
import logging
import os
import re
from collections import OrderedDict

import torch
import yacs.config
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import hooks as d2_hooks
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.engine.launch import launch as d2_launch
from detectron2.utils import comm

from . import modeling  # noqa: F401  (registers IoUAwareRetinaNet, IoUAwareFCOS and IoUAwareROIHeads)
from .checkpoint import SafeCheckpointer
from .config import add_iou_aware_config, check_iou_aware_keys_used, validate_tta_config
from .data import register_synthetic_datasets
from .data.coco_files import register_coco_files
from .divergence import DivergenceGuard
from .modeling.tta import IoUAwareTTA

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
def _project_parts():
    # DefaultTrainer.__init__ calls the module-level create_ddp_model and DetectionCheckpointer of
    # detectron2.engine.defaults; swap in the CPU-safe DDP wrapper and the SafeCheckpointer only
    # while our trainer is being built.
    checkpointer = d2_defaults.DetectionCheckpointer
    d2_defaults.create_ddp_model = create_ddp_model_cpu_safe
    d2_defaults.DetectionCheckpointer = SafeCheckpointer
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL
        d2_defaults.DetectionCheckpointer = checkpointer


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the IoU-aware evaluator, CPU-safe multi-process training, atomic
    checkpoints (``SafeCheckpointer``) and the divergence guard."""

    def __init__(self, cfg):
        with _project_parts():
            super().__init__(cfg)

    def build_hooks(self):
        hooks = super().build_hooks()
        if self.cfg.SOLVER.DIVERGENCE_GUARD.ENABLED:
            # first: its after_step runs before the periodic checkpointer's of the same iteration
            hooks.insert(0, DivergenceGuard.from_config(self.cfg))
        if self.cfg.TEST.AUG.ENABLED:
            # after training, evaluate with test-time augmentation too; before the writers, so
            # that its results (bbox_TTA/...) reach metrics.json
            tta = d2_hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model))
            writer = next((i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.PeriodicWriter)), len(hooks))
            hooks.insert(writer, tta)
        return hooks

    def train(self):
        """Detectron2's training loop; on success ``OUTPUT_DIR/model_final.pth`` is complete.

        It is written by the periodic checkpointer after the last iteration. A run killed while
        writing it leaves the checkpoints written before it (writes are atomic); resuming from
        the last of them has no iteration left to run, so ``model_final.pth`` is written here."""
        results = super().train()
        last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else ""
        if os.path.basename(last) != "model_final.pth" or not os.path.isfile(last):
            done = self.max_iter - 1 if self.start_iter < self.max_iter else self.start_iter - 1
            self.checkpointer.save("model_final", iteration=done)
        return results

    def run_step(self):
        try:
            super().run_step()
        except Exception as e:  # e.g. Detectron2's FloatingPointError: keep the model off disk
            self.checkpointer.block_saves(f"training failed at iteration {self.iter} ({type(e).__name__})")
            raise

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from .evaluation import IoUAwareCOCOEvaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return IoUAwareCOCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate ``model`` with test-time augmentation (``IoUAwareTTA``: ``TEST.AUG.*``) on every
        ``DATASETS.TEST`` dataset, written under ``OUTPUT_DIR/inference_TTA/<dataset>``; the
        results of :meth:`test` with each key suffixed ``_TTA`` (e.g. ``bbox_TTA``)."""
        tta_model = IoUAwareTTA(cfg, model)  # unwraps DistributedDataParallel
        logger.info("Running inference with test-time augmentation (sizes %s, flip %s, merged by %r) ...",
                    tuple(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.FLIP, tta_model.merge_type)
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((f"{k}_TTA", v) for k, v in results.items())


def num_classes_key(cfg):
    """``(key, value)`` of the number of classes the config's model predicts."""
    from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
    from detectron2.modeling.meta_arch.fcos import FCOS

    arch = cfg.MODEL.META_ARCHITECTURE
    cls = META_ARCH_REGISTRY.get(arch) if arch in META_ARCH_REGISTRY else None
    if cls is not None and issubclass(cls, RetinaNet):
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    if cls is not None and issubclass(cls, FCOS):
        return "MODEL.FCOS.NUM_CLASSES", cfg.MODEL.FCOS.NUM_CLASSES
    return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES


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
    """Register the datasets of ``DATASETS.COCO_FILES`` (checked), and the built-in synthetic
    dataset (``synthetic_shapes_*``) when the config uses it."""
    names = tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST)
    if cfg.DATASETS.COCO_FILES:
        register_coco_files(cfg.DATASETS.COCO_FILES, used=names, num_classes=num_classes_key(cfg))
    if any(n.startswith("synthetic_shapes_") for n in names):
        s = cfg.DATASETS.SYNTHETIC
        register_synthetic_datasets(
            root=s.ROOT or None,
            num_train=s.NUM_TRAIN,
            num_val=s.NUM_VAL,
            image_size=s.IMAGE_SIZE,
            seed=s.SEED,
        )


_YACS_COERCE = yacs.config._check_and_coerce_cfg_value_type


# A decimal number in any notation: PyYAML reads `1e-3` (no dot) as the string "1e-3".
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerce_int_to_float(replacement, original, key, full_key):
    if type(original) is float and type(replacement) is int:
        return float(replacement)
    if type(original) is float and isinstance(replacement, str) and _NUMBER.fullmatch(replacement.strip()):
        return float(replacement)
    return _YACS_COERCE(replacement, original, key, full_key)


@contextlib.contextmanager
def _whole_numbers_for_float_keys():
    # yacs rejects `GAMMA 5` for a float key ("Type mismatch (<class 'float'> vs. <class 'int'>)"),
    # and `BASE_LR: 1e-3` in a yaml file (PyYAML reads it as a string); accept both (command line
    # and yaml files) while our configs are merged.
    yacs.config._check_and_coerce_cfg_value_type = _coerce_int_to_float
    try:
        yield
    finally:
        yacs.config._check_and_coerce_cfg_value_type = _YACS_COERCE


def setup_cfg(config_file="", opts=(), args=None, coco_files=()):
    """Build a frozen config: Detectron2's defaults + ``add_iou_aware_config`` + file + opts.

    A whole number is accepted for a float key (``MODEL.IOU_AWARE.HIOU.GAMMA 1``), and so is a number
    that PyYAML reads as a string (``BASE_LR: 1e-3``). ``coco_files``
    (``--dataset NAME=JSON:IMAGE_ROOT``) are appended to ``DATASETS.COCO_FILES``. Raises
    ValueError when ``MODEL.IOU_AWARE`` keys are set for a model that does not use them, or when
    ``TEST.AUG.MERGE_TYPE`` is not valid (``validate_tta_config``).
    With ``args`` (from ``default_argument_parser``) it also runs Detectron2's ``default_setup``
    (logger, OUTPUT_DIR, config dump, seed). Datasets named by the config are registered.
    """
    cfg = get_cfg()
    add_iou_aware_config(cfg)
    with _whole_numbers_for_float_keys():
        if config_file:
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    # an entry given twice (the config dumped to OUTPUT_DIR, plus --dataset again) counts once
    cfg.DATASETS.COCO_FILES = list(dict.fromkeys([*cfg.DATASETS.COCO_FILES, *(coco_files or ())]))
    check_iou_aware_keys_used(cfg)
    validate_tta_config(cfg)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning("CUDA is not available: MODEL.DEVICE %s -> cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    if args is not None:
        default_setup(cfg, args)
    register_datasets_from_cfg(cfg)
    return cfg


def load_weights_for_evaluation(model, cfg, resume=False):
    """Load trained weights into ``model`` for ``--eval-only``: ``MODEL.WEIGHTS``, or with
    ``resume`` the newest readable checkpoint of ``OUTPUT_DIR``. Raises ValueError naming
    MODEL.WEIGHTS when there are none, or when they leave parameters of the model uninitialized
    (a randomly initialized model would be evaluated)."""
    checkpointer = SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    from_dir = resume and checkpointer.has_checkpoint()
    if not cfg.MODEL.WEIGHTS and not from_dir:
        raise ValueError(
            "--eval-only: MODEL.WEIGHTS is empty, so a randomly initialized model would be evaluated. "
            f"Pass MODEL.WEIGHTS <trained model>.pth (e.g. {os.path.join(cfg.OUTPUT_DIR, 'model_final.pth')}), "
            "or --resume to use the last checkpoint of OUTPUT_DIR"
        )
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    checkpointer.check_complete(f"--eval-only: the last checkpoint of {cfg.OUTPUT_DIR!r}" if from_dir
                                else f"--eval-only: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r}")
