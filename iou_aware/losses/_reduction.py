"""Helpers shared by every loss: dtype policy and reduction (no loss formula lives here)."""

import torch

from ..geometry import as_compute_dtype  # noqa: F401  (re-exported for the losses)

REDUCTIONS = ("none", "sum", "mean")


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
