"""Stops: SIGTERM and Ctrl-C (SIGINT) end a run at a step that every process agrees on.

    with stop_signals() as stop:            # handlers installed once (nested: reused)
        ...
        stop_now, save_now = requested(stop, sync_point, timer.due())   # at an action point
        if stop_now: save and stop
    signum = agreed(stop)                   # between seeds / pipeline stages

One process acts on its own flag. With several processes (a TPU pod slice, a SLURM job),
the preemption SIGTERM reaches them at slightly different times; a process that acted on
its flag alone would enter the checkpoint save (a collective) while another starts the next
train step (also a collective): a hang. So with jax.process_count() > 1 the flag is
all-gathered at sync points, steps that are the same in every process (the logging points
and epoch ends: where the host already waits for the step metrics, so the small all-gather
adds no pipeline bubble), and every process stops at the first sync point after any of them
got the signal. A single process reads its flag at every action point and never
communicates. The same all-gather carries each process's checkpoint timer
(checkpoint_every_minutes; clocks differ between hosts, and a save is a collective too):
every process saves at the first sync point where any timer ran out.

The handlers stay installed across the runs of a seeds run or a pipeline (the context is
re-entrant), so a signal that arrives after a run's last step (during its last evaluation,
checkpoint or export) still stops the seeds run before its next seed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator, Optional

import jax
import numpy as np


class RunStopped(Exception):
    """A run stopped by SIGTERM or SIGINT after saving its step; the same command resumes.

    signum: the signal; summary: the run's (unfinished) summary, as written to the workdir.
    """

    def __init__(self, signum: int, what: str, summary: Optional[dict] = None):
        super().__init__(f"{signal.Signals(signum).name}: {what}; run the same command (same "
                         "--workdir) to resume")
        self.signum, self.summary = signum, summary


class StopSignal:
    """SIGTERM and SIGINT during a run (handlers are installed from the main thread only).

    In the training loop (`immediate` False) the first one is recorded and the loop saves and
    stops at the next (agreed) action point; a second SIGINT raises KeyboardInterrupt at once.
    Outside it (setup, compilation, export) SIGINT raises KeyboardInterrupt at once in a
    single process (in several, the first one is only recorded: one process leaving alone
    would hang the others), and `check()` raises it again should a library have swallowed it
    (a bare `except:` in an import, say).
    """

    def __init__(self):
        self.signum = 0
        self.immediate = True

    def is_set(self) -> bool:
        return self.signum != 0

    def check(self) -> None:
        if self.signum == signal.SIGINT and jax.process_count() == 1:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """The training loop: check() first, then a first signal is only recorded (the loop
        saves and stops at the next agreed action point) until the block ends."""
        self.check()
        self.immediate = False
        try:
            yield
        finally:
            self.immediate = True

    def _handle(self, signum, frame):
        first = not self.signum
        self.signum = self.signum or signum
        if signum == signal.SIGINT and (not first or (self.immediate
                                                      and jax.process_count() == 1)):
            raise KeyboardInterrupt


_active: Optional[StopSignal] = None


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignal]:
    """Installs the handlers (once: a nested call yields the outer StopSignal)."""
    global _active
    if _active is not None:
        yield _active
        return
    stop = StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    # A SIGINT the parent set to be ignored (a background job, nohup) stays ignored.
    signals = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT)
                                  is not signal.SIG_IGN else [])
    previous = {sig: signal.signal(sig, stop._handle) for sig in signals}
    unraisable = sys.unraisablehook

    def quiet_interrupt(info):
        # A Ctrl-C that lands in a garbage-collection callback (jax has one) cannot propagate;
        # Python would print it as "Exception ignored". It is recorded, and check() raises it.
        if not issubclass(info.exc_type, KeyboardInterrupt):
            unraisable(info)

    sys.unraisablehook = quiet_interrupt
    _active = stop
    try:
        yield stop
    finally:
        _active = None
        sys.unraisablehook = unraisable
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _agree(stop: StopSignal, checkpoint_due: bool) -> tuple[int, bool]:
    """(the signal that stops every process or 0, whether any process's checkpoint timer ran
    out): one all-gather of both flags. A collective with several processes: every process
    must call it at the same point."""
    if jax.process_count() == 1:
        return stop.signum, checkpoint_due
    from jax.experimental import multihost_utils
    flags = np.asarray(multihost_utils.process_allgather(
        np.array([stop.signum, checkpoint_due], np.int32))).reshape(-1, 2)
    nonzero = [int(f) for f in flags[:, 0] if f]
    if nonzero and not stop.signum:
        stop.signum = nonzero[0]   # this process stops too, as if it had got the signal
    return (stop.signum if nonzero else 0), bool(flags[:, 1].any())


def agreed(stop: StopSignal) -> int:
    """The signal that stops every process (0: none). A collective with several processes:
    every process must call it at the same point."""
    return _agree(stop, False)[0]


def requested(stop: StopSignal, sync_point: bool, checkpoint_due: bool = False
              ) -> tuple[bool, bool]:
    """(whether the run stops, whether a checkpoint is due by time) after the step just
    taken. `sync_point`: a step at which every process calls this (with several processes
    the flags are agreed only there; the checkpoint timer, `checkpoint_due` (this process's
    kd_jax.train.actions.CheckpointTimer), is read only there in every run, so one process
    or several save at the same kind of point)."""
    if jax.process_count() == 1:
        return stop.is_set(), sync_point and checkpoint_due
    if not sync_point:
        return False, False
    signum, checkpoint = _agree(stop, checkpoint_due)
    return bool(signum), checkpoint


def check_between_runs(stop: StopSignal, done: str, next_run: str) -> None:
    """Between the runs of a seeds run or a pipeline: raises RunStopped if any process got a
    signal (during the finished run's last steps, evaluation, checkpoint or export)."""
    signum = agreed(stop)
    if signum:
        raise RunStopped(signum, f"{done}; stopped before {next_run}")
