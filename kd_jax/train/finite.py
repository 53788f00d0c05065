"""Finite checks of the losses and the training state: no checkpoint or export ever holds a
NaN or inf.

The step losses stay on the device until the next logging point, where they are fetched in
one transfer and checked (check_losses), so the loop never waits for the device between
steps; logging points come before every evaluation and save.

A loss can stay finite while an update makes the weights non-finite (an lr of 1e6: the loss
climbs to 1e32, the weights overflow; an lr turning inf: step n's loss is finite, its update
is not). So besides the loss (checked at logging points), the whole state is checked before
every save and before the export: one fused reduction on the device
(kd_jax.train.state.non_finite_counts), fetched as a few integers. The check is a function
of the state alone, so it holds at any dispatch boundary, whatever the steps per dispatch.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np

from kd_jax.train.state import non_finite_counts


class NonFiniteError(FloatingPointError):
    """The loss or the weights became NaN or inf; the message names the last good checkpoint."""


class NonFiniteLossError(NonFiniteError):
    """The loss became NaN or inf."""


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


def check_losses(steps: Sequence[dict], *, first_step: int, epoch: int, lockstep: bool,
                 latest_step: Optional[int], directory: str) -> None:
    """steps: fetched metrics {student: {term: value}} of the steps from `first_step` on;
    raises NonFiniteLossError naming the first step, student and terms with a NaN/inf loss."""
    for i, metrics in enumerate(steps):
        for name, m in metrics.items():
            if not np.isfinite(m["loss"]):
                terms = ", ".join(f"{k}={float(v):.6g}" for k, v in m.items())
                who = f" of student {name!r}" if lockstep else ""
                raise NonFiniteLossError(
                    f"non-finite loss{who} at step {first_step + i} (epoch {epoch}): "
                    f"{terms}. Stopped; " + last_good(latest_step, directory))
