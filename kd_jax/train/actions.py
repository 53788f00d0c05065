"""Which periodic actions (log, evaluate, checkpoint, stop) follow a dispatch of k steps.

A dispatch is one call of the jitted step: 1 step on the host path, k = steps_per_dispatch
on the on-device path (kd_jax.data.on_device); dispatches never cross an epoch end. Actions
run between dispatches, so their points do not depend on k: logging at the first dispatch
boundary at or after each multiple of log_every_steps, and at epoch ends and stops;
evaluation at the ends of every eval_every_epochs epochs and at the end; checkpoints at the
ends of every checkpoint_every_epochs epochs (0: none), at the first sync point (a logging
point or an epoch end) after checkpoint_every_minutes since the last save (0: none;
`CheckpointTimer`, agreed by every process: kd_jax.train.stops), at the end and at stops.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Due:
    log: bool
    eval: bool
    checkpoint: bool
    stop: bool
    # Log every step taken (epoch end, stop); else only up to the last multiple of
    # log_every_steps, keeping the rest for the next record, so that the records (their
    # steps and means) do not depend on steps_per_dispatch.
    log_through: bool = True


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The step counts of a run and the intervals of its actions."""

    steps_per_epoch: int
    total_steps: int
    log_every_steps: int
    eval_every_epochs: int
    checkpoint_every_epochs: int          # 0: none by epoch count
    checkpoint_every_minutes: float = 0.0  # 0: none by time (CheckpointTimer)

    def epoch(self, step: int) -> int:
        """The epoch (from 1) of the step after `step`, or of `step` itself at an epoch end."""
        return max(step - 1, 0) // self.steps_per_epoch + 1

    def _crossed_log_point(self, step: int, steps_taken: int) -> bool:
        every = self.log_every_steps
        return step // every > (step - steps_taken) // every

    def sync_point(self, step: int, steps_taken: int = 1) -> bool:
        """Whether the dispatch of `steps_taken` steps that just ended at `step` crossed a
        point at which every process takes part in agreeing on a stop (kd_jax.train.stops):
        a multiple of log_every_steps or an epoch end; the same dispatches, so the same
        points, in every process."""
        return (self._crossed_log_point(step, steps_taken)
                or step % self.steps_per_epoch == 0)

    def due(self, step: int, steps_taken: int, stop_requested: bool,
            checkpoint_time: bool = False) -> Due:
        """The actions after the dispatch of `steps_taken` steps that just ended at `step`.
        `checkpoint_time`: the (agreed) CheckpointTimer ran out, at a sync point."""
        end_of_epoch = step % self.steps_per_epoch == 0
        finished = step >= self.total_steps
        stop = finished or stop_requested
        epoch = self.epoch(step)
        every = self.checkpoint_every_epochs
        return Due(
            log=self._crossed_log_point(step, steps_taken) or end_of_epoch or stop,
            eval=(end_of_epoch and epoch % self.eval_every_epochs == 0) or finished,
            checkpoint=((end_of_epoch and every > 0 and epoch % every == 0) or stop
                        or checkpoint_time),
            stop=stop, log_through=end_of_epoch or stop)


class CheckpointTimer:
    """Whether `minutes` have passed since the last save (or the start); 0: never."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic):
        self._seconds, self._clock = 60.0 * minutes, clock
        self._since = clock()

    def due(self) -> bool:
        return self._seconds > 0 and self._clock() - self._since >= self._seconds

    def restart(self) -> None:
        """After a save."""
        self._since = self._clock()
