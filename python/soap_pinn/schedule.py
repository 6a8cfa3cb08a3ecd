"""The paper's learning-rate schedule: linear warm-up from 0, then exponential decay (jaxpi / optax).

    lr(s) = lr0 * s / W                                  for s < W   (W = warmup_steps > 0)
    lr(s) = lr0 * decay_rate ** ((s - W) / decay_steps)  otherwise  (smooth, not staircase)
"""

from __future__ import annotations

import torch

__all__ = ["lr_factor", "build_scheduler"]


def lr_factor(step: int, warmup_steps: int, decay_steps: int, decay_rate: float) -> float:
    """lr(step) / lr0 (see module docstring)."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    return decay_rate ** ((step - warmup_steps) / decay_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, decay_steps: int, decay_rate: float):
    """A LambdaLR with lr_factor; its state_dict holds the step, so a resumed run continues the curve."""
    if decay_steps <= 0:
        raise ValueError(f"decay_steps must be positive, got {decay_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, decay_steps, decay_rate)
    )
