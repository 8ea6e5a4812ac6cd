"""``DivergenceGuard``: a trainer hook that stops a diverging training of any Detectron2 detector.

Detectron2 itself stops only when the *sum* of the losses is not finite. A training can diverge
without that: parameters grow without bound (GroupNorm keeps the activations finite), a prediction
of an anchor that is no positive becomes infinite (no loss sees it, but inference does), or a box
loss that is weighted by the IoU reaches exactly 0 once no predicted box overlaps its ground
truth (Focal-EIoU's IoU^gamma weight, Zhang et al. eq. 11), so the box branch gets no gradient
while the classification loss keeps growing. The guard raises ``FloatingPointError`` in
Detectron2's style when

* a prediction head's output (RetinaNet head, RPN head, box predictor) or a loss is not finite
  (checked after each training forward pass, with one device synchronization);
* a parameter or floating-point buffer is not finite after an optimizer step;
* a box loss (``loss_box_reg``, ``loss_rpn_loc``) is exactly 0 for ``zero_box_loss_iters``
  consecutive iterations although positives exist (``num_pos_anchors``,
  ``roi_head/num_fg_samples``, ``rpn/num_pos_anchors`` of the same iteration).

Before raising it blocks the trainer's checkpointer (``SafeCheckpointer.block_saves``), so no
checkpoint of the diverged model is written; ``iou_aware.engine.Trainer`` puts it first among the
hooks so that it runs before the periodic checkpointer of the same iteration.
"""

import logging
import math
from typing import Dict, Iterable, List

import torch
from detectron2.engine import HookBase
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger("detectron2")

# box loss -> the event-storage scalars that count its positives (whichever the model writes)
BOX_LOSS_POSITIVES = {
    "loss_box_reg": ("num_pos_anchors", "roi_head/num_fg_samples"),
    "loss_rpn_loc": ("rpn/num_pos_anchors",),
}
PREDICTION_HEADS = (RetinaNetHead, StandardRPNHead, FastRCNNOutputLayers)
ADVICE = "Training has diverged: lower SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS."


def _tensors(obj) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _norm(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    low_precision = t.dtype in (torch.float16, torch.bfloat16)
    return torch.linalg.vector_norm(t, dtype=torch.float32 if low_precision else None).float()


def _all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor on the tensors' device, False when a norm is not finite: an infinite or
    NaN value, or values beyond ~1e19 (their squares overflow float32). No synchronization; one
    norm per tensor is ~100x cheaper on CPU than ``isfinite(t).all()``."""
    norms = [_norm(t) for t in tensors]
    return torch.isfinite(torch.stack(norms)).all() if norms else torch.tensor(True)


def _what(tensors: Iterable[torch.Tensor]) -> str:
    """How the tensors (whose norms are not all finite) went wrong."""
    if any(not bool(torch.isfinite(t.detach()).all()) for t in tensors):
        return "became infinite or NaN"
    return "grew beyond 1e19 (their norm overflows)"


def unchecked_box_losses(cfg) -> List[str]:
    """Box losses whose weight is 0 in ``cfg``: exactly 0 by construction, not checked."""
    out = []
    c = cfg.MODEL
    if c.IOU_AWARE.BOX_LOSS_WEIGHT == 0 or c.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT == 0:
        out.append("loss_box_reg")
    if c.RPN.BBOX_REG_LOSS_WEIGHT == 0 or c.RPN.LOSS_WEIGHT == 0:
        out.append("loss_rpn_loc")
    return out


class DivergenceGuard(HookBase):
    """See the module docstring. ``zero_box_loss_iters`` 0 disables the zero-box-loss check."""

    def __init__(self, zero_box_loss_iters: int = 5, unchecked_losses: Iterable[str] = ()):
        if zero_box_loss_iters < 0:
            raise ValueError("SOLVER.DIVERGENCE_GUARD.ZERO_BOX_LOSS_ITERS: must be >= 0 "
                             f"(0 = never stop for a zero box loss), got {zero_box_loss_iters}")
        self.zero_box_loss_iters = zero_box_loss_iters
        self.unchecked = set(unchecked_losses)
        self._handles = []
        self._pending = []  # (head name, finite flag, output) of the current forward pass
        self._losses: Dict[str, float] = {}
        self._streak: Dict[str, int] = {}

    @classmethod
    def from_config(cls, cfg):
        g = cfg.SOLVER.DIVERGENCE_GUARD
        return cls(g.ZERO_BOX_LOSS_ITERS, unchecked_box_losses(cfg))

    # ---------------------------------------------------------------------------- set-up
    def _model(self):
        model = self.trainer.model
        return model.module if isinstance(model, DistributedDataParallel) else model

    def before_train(self):
        model = self._model()
        for name, module in model.named_modules():
            if isinstance(module, PREDICTION_HEADS):
                self._handles.append(module.register_forward_hook(self._record(name)))
        self._handles.append(model.register_forward_hook(self._check_forward))

    def after_train(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def _fire(self, message: str):
        checkpointer = getattr(self.trainer, "checkpointer", None)
        if hasattr(checkpointer, "block_saves"):
            checkpointer.block_saves(f"the divergence guard stopped training at iteration {self.trainer.iter}")
        raise FloatingPointError(message)

    # ----------------------------------------------------------------- forward-pass checks
    def _record(self, name):
        def hook(module, inputs, output):
            if module.training:
                self._pending.append((name or "model", _all_finite(_tensors(output)), output))
        return hook

    def _check_forward(self, module, inputs, output):
        pending, self._pending = self._pending, []
        if not module.training:
            return
        losses = output if isinstance(output, dict) else {}
        loss_names = [k for k, v in losses.items() if isinstance(v, torch.Tensor)]
        values = [f.float() for _, f, _ in pending] + [losses[k].detach().float().reshape(()) for k in loss_names]
        if not values:
            return
        values = torch.stack([v.to(values[0].device) for v in values]).tolist()  # one synchronization
        flags, loss_values = values[: len(pending)], dict(zip(loss_names, values[len(pending):]))
        self._losses = loss_values
        it = self.trainer.iter
        bad_heads = [(name, out) for (name, _, out), ok in zip(pending, flags) if not ok]
        if bad_heads:
            what = _what(t for _, out in bad_heads for t in _tensors(out))
            self._fire(f"Predictions of {', '.join(n for n, _ in bad_heads)} {what} at iteration={it}!\n"
                       f"loss_dict = {loss_values}\n{ADVICE}")
        if not all(math.isfinite(v) for v in loss_values.values()):
            self._fire(f"Loss became infinite or NaN at iteration={it}!\nloss_dict = {loss_values}\n{ADVICE}")

    # ---------------------------------------------------------------------- after the step
    def after_step(self):
        self._check_parameters()
        if self.zero_box_loss_iters > 0:
            self._check_zero_box_loss()

    def _check_parameters(self):
        model = self._model()
        named = list(model.named_parameters()) + [
            (n, b) for n, b in model.named_buffers() if b.is_floating_point()
        ]
        if bool(_all_finite(t for _, t in named)):
            return
        bad = [(n, t) for n, t in named if not bool(torch.isfinite(_norm(t)))]
        shown = ", ".join(n for n, _ in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        what = _what(t for _, t in bad)
        self._fire(f"Parameters {what} at iteration={self.trainer.iter}: {shown}\n{ADVICE}")

    def _zero_status(self):
        """{box loss: (exactly 0, positives)} of this iteration on this process."""
        it = self.trainer.iter
        latest = self.trainer.storage.latest()
        status = {}
        for key, count_keys in BOX_LOSS_POSITIVES.items():
            if key in self.unchecked or key not in self._losses:
                continue
            counts = [latest[k][0] for k in count_keys if k in latest and latest[k][1] == it]
            if counts:
                status[key] = (self._losses[key] == 0.0, float(sum(counts)))
        return status

    def _check_zero_box_loss(self):
        per_process = [self._zero_status()]
        if comm.get_world_size() > 1:  # every process must take the same decision
            per_process = comm.all_gather(per_process[0])
        it = self.trainer.iter
        present = set().union(*per_process)
        for key in set(self._streak) - present:  # not measured this iteration: the streak ends
            self._streak[key] = 0
        for key in present:
            entries = [s[key] for s in per_process if key in s]
            positives = sum(p for _, p in entries)
            stuck = positives > 0 and all(zero for zero, p in entries if p > 0)
            streak = self._streak.get(key, 0) + 1 if stuck else 0
            self._streak[key] = streak
            if streak == 1:
                logger.warning("%s is exactly 0 at iteration %d although there are positives (%g per "
                               "image): no box gets a gradient", key, it, positives / len(entries))
            if streak >= self.zero_box_loss_iters:
                self._fire(
                    f"{key} has been exactly 0 for {streak} iterations (up to iteration={it}) although "
                    f"there were positives ({positives / len(entries):g} per image): the box branch gets "
                    "no gradient (with an IoU-weighted loss such as Focal-EIoU: no predicted box "
                    f"overlaps its ground truth). {ADVICE} "
                    "(SOLVER.DIVERGENCE_GUARD.ZERO_BOX_LOSS_ITERS sets how many iterations are "
                    "tolerated; 0 = never stop for this.)"
                )
