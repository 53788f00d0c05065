"""Per-epoch learning-rate schedules (epochs counted from 1, as in the reference).

The lr is a host-side Python float computed once per epoch and passed into the jitted step
as an argument (optax.inject_hyperparams), so changing it never recompiles.
"""

from __future__ import annotations

import math
from typing import Sequence


def multistep_lr(epoch: int, base_lr: float, milestones: Sequence[int],
                 decay_rate: float = 0.1) -> float:
    """mdistiller's adjust_learning_rate: base_lr * decay^(number of milestones m < epoch).

    `steps = np.sum(epoch > np.asarray(milestones))`, so with milestones (150, 180, 210)
    epoch 150 still uses base_lr and epoch 151 uses base_lr * 0.1.
    """
    steps = sum(1 for m in milestones if epoch > m)
    return base_lr * decay_rate ** steps


def cosine_lr(epoch: int, base_lr: float, num_epochs: int) -> float:
    """Cosine decay per epoch: base_lr * (1 + cos(pi * (epoch - 1) / num_epochs)) / 2."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * (epoch - 1) / num_epochs))


def learning_rate(optimizer_config, num_epochs: int, epoch: int) -> float:
    """The lr of `epoch` (from 1) for config.optimizer (schedule: multistep | cosine)."""
    o = optimizer_config
    if o.schedule == "multistep":
        return multistep_lr(epoch, o.lr, o.milestones, o.decay_rate)
    if o.schedule == "cosine":
        return cosine_lr(epoch, o.lr, num_epochs)
    raise ValueError(f"optimizer.schedule={o.schedule!r}; allowed: multistep, cosine")
