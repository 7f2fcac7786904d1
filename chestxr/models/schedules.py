"""Learning-rate schedules completed with the run's step count in ``configure_optimizers``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.05,
    final_factor: float = 0.01,
) -> LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay.

    Args:
        optimizer: the optimizer whose groups' learning rates are scaled.
        total_steps: optimizer steps in the whole run.
        warmup_fraction: share of the steps spent warming up from 0.
        final_factor: learning rate at the end, as a fraction of the initial one.
    """
    warmup = max(int(total_steps * warmup_fraction), 0)
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def optimizer_config(
    optimizer: Optimizer, scheduler: Callable[..., LRScheduler] | None, total_steps: int
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: the optimizer and, when configured, its schedule
    (a partial from ``conf/model``, completed with the run's step count) stepped every step."""
    if scheduler is None:
        return {"optimizer": optimizer}
    return {
        "optimizer": optimizer,
        "lr_scheduler": {
            "scheduler": scheduler(optimizer=optimizer, total_steps=int(total_steps)),
            "interval": "step",
        },
    }
