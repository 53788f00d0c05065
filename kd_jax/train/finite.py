"""Finite checks of the training state: no checkpoint or export ever holds a NaN or inf.

A loss can stay finite while an update makes the weights non-finite (an lr of 1e6: the loss
climbs to 1e32, the weights overflow; an lr turning inf: step n's loss is finite, its update
is not). So besides the loss (checked at logging points), the whole state is checked before
every save and before the export: one fused reduction on the device
(kd_jax.train.state.non_finite_counts), fetched as a few integers. The check is a function
of the state alone, so it holds at any dispatch boundary, whatever the steps per dispatch.
"""

from __future__ import annotations

from typing import Any, Optional

import jax

from kd_jax.train.state import non_finite_counts


class NonFiniteError(FloatingPointError):
    """The loss or the weights became NaN or inf; the message names the last good checkpoint."""


def last_good(latest_step: Optional[int], directory: str) -> str:
    """'the last good checkpoint is step 3 in DIR; ...' (or that none was saved)."""
    if latest_step is None:
        return (f"no checkpoint was saved yet (in {directory}), so the same command starts "
                "from scratch")
    return (f"the last good checkpoint is step {latest_step} in {directory}; the same command "
            "(e.g. with a smaller --config.optimizer.lr) resumes from it")


def check_state(state: Any, *, step: int, epoch: int, lockstep: bool,
                latest_step: Optional[int], directory: str) -> None:
    """Raises NonFiniteError if any student's state (TrainState) holds a NaN or inf."""
    bad, total = jax.device_get(non_finite_counts(state.students))
    for name in sorted(bad):
        if int(bad[name]):
            who = f" of student {name!r}" if lockstep else ""
            raise NonFiniteError(
                f"non-finite weights{who} at step {step} (epoch {epoch}): {int(bad[name]):,} "
                f"of {total[name]:,} values of the state are NaN or inf, although the loss "
                f"was finite (an update too large: optimizer.lr?). Stopped without saving; "
                + last_good(latest_step, directory))
