"""Which periodic actions (log, evaluate, checkpoint, stop) follow a dispatch of k steps.

A dispatch is one call of the jitted step: 1 step on the host path, k = steps_per_dispatch
on the on-device path (kd_jax.data.on_device); dispatches never cross an epoch end. Actions
run between dispatches, so their points do not depend on k: logging at the first dispatch
boundary at or after each multiple of log_every_steps, and at epoch ends and stops;
evaluation and checkpoints at the ends of every eval_every_epochs / checkpoint_every_epochs
epochs, and at the end (a stop also checkpoints).
"""

from __future__ import annotations

import dataclasses


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
    checkpoint_every_epochs: int

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

    def due(self, step: int, steps_taken: int, stop_requested: bool) -> Due:
        """The actions after the dispatch of `steps_taken` steps that just ended at `step`."""
        end_of_epoch = step % self.steps_per_epoch == 0
        finished = step >= self.total_steps
        stop = finished or stop_requested
        epoch = self.epoch(step)
        return Due(
            log=self._crossed_log_point(step, steps_taken) or end_of_epoch or stop,
            eval=(end_of_epoch and epoch % self.eval_every_epochs == 0) or finished,
            checkpoint=(end_of_epoch and epoch % self.checkpoint_every_epochs == 0) or stop,
            stop=stop, log_through=end_of_epoch or stop)
