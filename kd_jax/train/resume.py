"""The loop state, which is what a checkpoint holds, and resuming from one.

A checkpoint holds the TrainState (step, every student's parameters, BatchNorm statistics
and optimizer state, RNG) and metadata: each student's evaluations so far, the time of the
segments before (each start of the run is a segment) and the images they trained on, and
the batch size, steps per epoch and student names the run was started with (a different
run in the same workdir is an error, checked before the state is read).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from kd_jax.train.checkpoint import Checkpointer
from kd_jax.train.config_validation import ConfigError


@dataclasses.dataclass
class LoopState:
    """What the training loop changes (and a checkpoint holds)."""

    step: int                 # steps taken: the TrainState's step, kept on the host
    state: Any                # the TrainState, replicated over the mesh
    history: dict             # student name -> [{"epoch", "step", "top1", "top5"}] evaluations
    segments: list = dataclasses.field(default_factory=list)   # earlier segments' times
    images_seen: int = 0      # training images of the earlier segments


def restore(ckpt: Checkpointer, state: Any, *, names: Sequence[str], batch_size: int,
            steps_per_epoch: int, workdir: str) -> LoopState:
    """The loop state of the latest checkpoint in `ckpt`; `state` (step 0) if there is none.
    A damaged newest checkpoint is set aside and the previous one restored (checkpoint.py).
    `names`: the students, in the plan's order (that of the history)."""

    def check_meta(meta: dict) -> None:
        # Checked before the state: a different run has another tree.
        if (meta.get("batch_size") != batch_size
                or meta.get("steps_per_epoch") != steps_per_epoch
                or sorted(meta.get("students", [])) != sorted(names)):
            raise ConfigError(
                f"{workdir} holds a run with batch_size={meta.get('batch_size')}, "
                f"{meta.get('steps_per_epoch')} steps per epoch and students "
                f"{meta.get('students')}; this config gives batch_size={batch_size}, "
                f"{steps_per_epoch} and {sorted(names)}: use another --workdir")

    restored = ckpt.restore_latest(state, check_meta)
    if restored is None:
        return LoopState(step=0, state=state, history={n: [] for n in names})
    state, meta = restored
    history = {n: [] for n in names}
    history.update({n: list(h) for n, h in meta["history"].items()})
    return LoopState(step=int(jax.device_get(state.step)), state=state, history=history,
                     segments=list(meta["segments"]), images_seen=int(meta["images_seen"]))


def save(ckpt: Checkpointer, loop: LoopState, *, epoch: int, segment: dict, images: int,
         batch_size: int, steps_per_epoch: int) -> None:
    """Checkpoints the loop state; `segment`, `images`: this segment's time and images so far."""
    ckpt.save(loop.step, loop.state, {
        "step": loop.step, "epoch": epoch, "students": sorted(loop.history),
        "history": loop.history, "segments": loop.segments + [segment],
        "images_seen": loop.images_seen + images,
        "batch_size": batch_size, "steps_per_epoch": steps_per_epoch})
