"""Orbax checkpoints in <workdir>/checkpoints: the TrainState plus JSON metadata.

One checkpoint per save, named by the global step; the last `keep` are kept. Saves are
asynchronous (training continues while the files are written): `wait()` before exiting.
Restoring gives the abstract target the current shardings, so a run may resume on another
device count.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Callable, Optional

import orbax.checkpoint as ocp

from kd_jax.errors import StorageError, cause_in_text, storage_cause
from kd_jax.train.state import abstract_like


class _QuietStorageErrors(logging.Filter):
    """Drops orbax's own ERROR logs (with tracebacks, from its background threads) of a
    storage failure: the save that surfaces it raises StorageError, reported in one line.
    On absl's logger they come from orbax's modules; on asyncio's they are "Task exception
    was never retrieved" reports of orbax's write tasks (the task's repr names orbax)."""

    def filter(self, record: logging.LogRecord) -> bool:
        orbax = f"{os.sep}orbax{os.sep}"
        if record.levelno < logging.ERROR or (orbax not in record.pathname
                                              and orbax not in record.getMessage()):
            return True
        error = record.exc_info[1] if record.exc_info else None
        return not (storage_cause(error) or cause_in_text(record.getMessage()))


logging.getLogger("absl").addFilter(_QuietStorageErrors())
logging.getLogger("asyncio").addFilter(_QuietStorageErrors())


def raise_if_storage(error: BaseException, what: str, kept_step: Optional[int],
                     directory: str) -> None:
    """Raises StorageError (one line: what failed, the cause, what is kept, what to do) if
    `error` came from the storage; returns otherwise (the caller re-raises)."""
    cause = storage_cause(error)
    if cause is None:
        return
    kept = (f"checkpoint step {kept_step} in {directory} is kept" if kept_step is not None
            else "no checkpoint was saved yet")
    advice = cause.advice(os.path.dirname(directory))
    raise StorageError(f"{what}: {cause}; {kept}. {advice[0].upper()}{advice[1:]}, then run "
                       "the same command to go on from there") from error


DAMAGED_DIR = "damaged_checkpoints"


class DamagedCheckpointError(RuntimeError):
    """No checkpoint of the workdir can be restored."""


def _one_line(error: BaseException, limit: int = 200) -> str:
    """The exception's type and first line (orbax's last lines can be just '})>.')."""
    text = " ".join(str(error).split("\n")[0].split()) or "no message"
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{type(error).__name__}: {text}"


def _quiet_closed_loop_callbacks() -> None:
    """A failed orbax restore (or a save on a full disk) leaves tensorstore reads (writes) in
    flight whose callbacks reach orbax's asyncio loop after it closed; each prints an 'Event
    loop is closed' traceback through sys.unraisablehook. Those (and only those) are
    dropped: the failure itself is reported in one line."""
    previous = sys.unraisablehook
    if getattr(previous, "_kd_jax_quiet_loop", False):
        return

    def hook(info):
        if not (isinstance(info.exc_value, RuntimeError)
                and str(info.exc_value) == "Event loop is closed"):
            previous(info)

    hook._kd_jax_quiet_loop = True
    sys.unraisablehook = hook


# At import too, below every hook installed later: stops.stop_signals restores, as the run
# unwinds from a failed save, the hook it found, and the callbacks come after that.
_quiet_closed_loop_callbacks()


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 3):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=True))
        self._started: Optional[int] = None   # the step of the last save started
        # Before any save or restore: a failed one's stray callbacks can fire at any time.
        _quiet_closed_loop_callbacks()

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an async save of (state, meta) under `step` (replacing one of that step)."""
        if step in self._manager.all_steps():
            return  # already saved (e.g. the final step coincides with an epoch end)
        try:   # an earlier async save's failure surfaces here too
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as e:  # noqa: BLE001  storage causes become one line
            self._raise_save_error(e, step)
            raise
        self._started = step

    def _raise_save_error(self, error: BaseException, step: Optional[int]) -> None:
        # The failure may be the previous (asynchronous) save's, surfacing now.
        done = self._manager.all_steps()
        failed = self._started if self._started not in (None, *done) else step
        kept = [s for s in done if failed is None or s < failed]
        what = (f"could not save checkpoint step {failed}" if failed is not None
                else "could not save a checkpoint") + f" in {self.directory}"
        raise_if_storage(error, what, max(kept) if kept else None, self.directory)

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

    def restore_latest(self, like: Any, check_meta: Callable[[dict], None] = lambda m: None
                       ) -> Optional[tuple[Any, dict]]:
        """(state, meta) of the newest checkpoint that restores (None: no checkpoint).

        check_meta(meta) runs before each state is read (it raises when the checkpoint is of
        another run: not damage). A newest checkpoint that cannot be read (a deleted or
        truncated file, flipped bytes, garbage metadata, a missing state/) while an older one
        can is set aside, renamed into <workdir>/damaged_checkpoints/ (never deleted), with a
        one-line note; the run goes on from the older one. If none can be read, nothing is
        moved and DamagedCheckpointError names the newest and its cause.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001  unreadable metadata: damaged
                failures.append((step, e))
                continue
            check_meta(meta)
            try:
                restored = self.restore(like, step)
            except Exception as e:  # noqa: BLE001  unreadable state: damaged
                failures.append((step, e))
                continue
            for bad, error in failures:
                self._set_aside(bad, error, step)
            return restored
        if failures:
            step, error = failures[0]
            raise DamagedCheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be restored "
                f"({_one_line(error)}), and no older one can: it is damaged or from another "
                "config; move the checkpoints away to start again, or use another --workdir"
            ) from error
        return None

    def _set_aside(self, step: int, error: BaseException, resumed_from: int) -> None:
        import jax

        parent = os.path.dirname(self.directory)
        target = os.path.join(parent, DAMAGED_DIR, str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            n = 1
            while os.path.exists(target):
                target, n = os.path.join(parent, DAMAGED_DIR, f"{step}.{n}"), n + 1
            os.rename(os.path.join(self.directory, str(step)), target)
            print(f"kd_jax: note: checkpoint step {step} cannot be restored "
                  f"({_one_line(error)}); set aside as {target}, resuming from step "
                  f"{resumed_from}", file=sys.stderr, flush=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"kd_jax set aside checkpoint {step}")
        self._manager.reload()

    def wait(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001  the async save's failure, as one line
            self._raise_save_error(e, self._started)
            raise

    def close(self) -> None:
        try:
            self.wait()
        except BaseException:
            with contextlib.suppress(Exception):   # orbax re-raises the same failure
                self._manager.close()
            raise
        try:
            self._manager.close()
        except Exception as e:  # noqa: BLE001  the async save's failure, as one line
            self._raise_save_error(e, self._started)
            raise
