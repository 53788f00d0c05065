"""Timing of a run segment: its wall time, and its training time without compilation,
evaluation or saving (the images/s of the summaries).

    clock = Clock(first_step, t0)           # t0: perf_counter() before setup
    clock.after_step(metrics, images, step) # after each dispatch
    clock.pause(); ...eval, save...; clock.resume()
    clock.wall()                            # this segment's record, for the summaries
"""

from __future__ import annotations

import time
from typing import Optional

import jax


class Clock:
    """Wall time of this segment, and training time without compilation, eval or saving."""

    def __init__(self, step: int, t0: float):
        self.segment = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "first_step": step,
                        "last_step": step, "wall_s": 0.0, "train_s": 0.0}
        self._t0 = t0   # perf_counter() at the start of the segment (before setup)
        self._mark: Optional[float] = None
        self.compiled = False
        self.images = 0

    def after_step(self, metrics, images: int, step: int) -> None:
        """After a dispatch of `images` training images that ended at `step`. The first one
        compiled the step (every dispatch has the same shapes): its images are not counted."""
        self.segment["last_step"] = step
        if not self.compiled:
            # Compilation is not training time: time from after it.
            jax.block_until_ready(metrics)
            self.compiled, self._mark = True, time.perf_counter()
        else:
            self.images += images

    def pause(self) -> None:
        if self._mark is not None:
            self.segment["train_s"] += time.perf_counter() - self._mark
            self._mark = None

    def resume(self) -> None:
        if self.compiled:
            self._mark = time.perf_counter()

    def wall(self) -> dict:
        """This segment's record: {"started", "first_step", "last_step", "wall_s", "train_s"}."""
        self.segment["wall_s"] = time.perf_counter() - self._t0
        return dict(self.segment)
