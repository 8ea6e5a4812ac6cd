"""Helpers shared by every loss: dtype policy and reduction (no loss formula lives here)."""

from typing import Tuple

import torch

REDUCTIONS = ("none", "sum", "mean")


def as_compute_dtype(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Upcast fp16/bf16 tensors to float32; float32 and float64 keep their dtype (DESIGN.md).

    All tensors are brought to the widest floating dtype among them, so float64 gradcheck inputs
    stay float64.
    """
    dtype = torch.float32
    for t in tensors:
        if t.dtype == torch.float64:
            dtype = torch.float64
    return tuple(t.to(dtype) if t.dtype != dtype else t for t in tensors)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` to per-element losses. An empty input gives 0 for "sum" and "mean"."""
    check_reduction(reduction)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if loss.numel() == 0:
        return loss.sum()  # 0 with a grad_fn, instead of the nan of mean() over nothing
    return loss.mean()
