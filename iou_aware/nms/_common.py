"""Validation, computation dtype, output ordering and class grouping shared by the NMS functions.

Pure torch. The conventions they implement are listed in ``docs/nms.md`` ("Conventions").
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor


def check_inputs(boxes: Tensor, **per_box: Tensor) -> None:
    """Raise a clear ``ValueError`` unless ``boxes`` is ``(N, 4)`` and the others are ``(N,)``."""
    if not isinstance(boxes, Tensor):
        raise ValueError(
            f"boxes must be a torch.Tensor of shape (N, 4), got {type(boxes).__name__}"
        )
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    for name, t in per_box.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (N,), got {type(t).__name__}")
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(
                f"{name} must have shape (N,) with N = {n} (one per box), got {tuple(t.shape)}"
            )
        if t.device != boxes.device:
            raise ValueError(f"{name} is on {t.device} but boxes are on {boxes.device}")


def check_real(value: float, name: str) -> float:
    """``float(value)``, or a ``ValueError`` naming ``name`` unless it is a real number."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if math.isnan(value):
        raise ValueError(f"{name} must be a real number, got nan")
    return value


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16/integers are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def empty_result(boxes: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """``(keep, scores)`` of an NMS that keeps nothing."""
    return (
        torch.empty(0, dtype=torch.int64, device=boxes.device),
        torch.empty(0, dtype=dtype, device=boxes.device),
    )


def order_by_score(keep: Tensor, score: Tensor) -> Tuple[Tensor, Tensor]:
    """Sort ``keep`` by ``score`` (aligned with it) descending, ties by ascending index."""
    keep, by_index = keep.sort()
    score = score[by_index]
    order = torch.argsort(score, descending=True, stable=True)
    return keep[order], score[order]


def group_by_class(idxs: Tensor, order: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Regroup the permutation ``order`` class-major, keeping ``order``'s sequence within a class.

    Returns ``perm`` (positions -> input index), ``cls`` (dense class id 0..C-1 per position,
    non-decreasing), ``starts`` and ``counts`` (first position and size of each class).
    """
    n = order.shape[0]
    by_class = torch.argsort(idxs[order], stable=True)
    perm = order[by_class]
    sorted_idxs = idxs[perm]
    new = torch.ones(n, dtype=torch.bool, device=idxs.device)
    new[1:] = sorted_idxs[1:] != sorted_idxs[:-1]
    cls = torch.cumsum(new, 0) - 1
    starts = torch.nonzero(new).squeeze(1)
    counts = torch.diff(starts, append=starts.new_tensor([n]))
    return perm, cls, starts, counts
