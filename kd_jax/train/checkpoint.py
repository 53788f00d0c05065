"""Orbax checkpoints in <workdir>/checkpoints: the TrainState plus JSON metadata.

One checkpoint per save, named by the global step; the last `keep` are kept. Saves are
asynchronous (training continues while the files are written): `wait()` before exiting.
Restoring gives the abstract target the current shardings, so a run may resume on another
device count.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp

from kd_jax.train.state import abstract_like


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 3):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=True))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an async save of (state, meta) under `step` (replacing one of that step)."""
        if step in self._manager.all_steps():
            return  # already saved (e.g. the final step coincides with an epoch end)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def read_meta(self, step: Optional[int] = None) -> dict:
        """The JSON metadata of `step` (default: the latest), without reading the state."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def restore(self, like: Any, step: Optional[int] = None) -> tuple[Any, dict]:
        """(state, meta) of `step` (default: the latest), shaped and sharded like `like`."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(like)), meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
