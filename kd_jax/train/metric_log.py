"""Metrics out: JSON lines (<workdir>/metrics.jsonl), TensorBoard events (<workdir>/tb)
and progress on stderr. Only process 0 writes; others are silent.

Progress: a tqdm bar when stderr is a terminal (or a notebook); otherwise (CI, nohup, SLURM
logs) one plain line per logging interval, e.g.
``step 150/3905 epoch 1 loss 2.3456 img/s 312.4 eta 0:12:34``, and no bar at all.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time

import jax
import numpy as np

from kd_jax.train import tb_events


def _to_python(value):
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        value = np.asarray(value).item()
    return value


def _interactive(stream) -> bool:
    """A terminal, or a Jupyter kernel (where tqdm.auto draws a widget)."""
    if getattr(stream, "isatty", lambda: False)():
        return True
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


def drop_records_after(path: str, step: int) -> int:
    """Rewrites the JSON-lines file `path` (atomically) without its records of steps after
    `step` and without a torn last line; returns how many records were dropped."""
    if not os.path.isfile(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:   # a line cut short by a kill
                dropped += 1
                continue
            if isinstance(record, dict) and int(record.get("step", 0)) > step:
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            fh.writelines(kept)
        os.replace(path + ".tmp", path)
    return dropped


class MetricLog:
    """write(step, kind, metrics) -> JSON line + TB scalars; progress(steps, **postfix) ->
    the bar or a plain line; message(text) -> a line that does not break the bar.

    interactive: True for a tqdm bar, False for plain lines, None (default): a bar iff stderr
    is a terminal or a notebook.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True, progress_bar: bool = True,
                 total_steps: int = 0, initial_step: int = 0,
                 interactive: bool | None = None, records: bool = True,
                 resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._lines = False   # plain progress lines instead of a bar
        self._total, self._step = total_steps, initial_step
        self._t0, self._step0 = time.perf_counter(), initial_step
        self._first = None   # (time, step) of the first progress call: the ETA's origin
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if records:   # False: progress and messages only (a lockstep run's top level)
            # Append: a resumed run continues the same file, after dropping the records of
            # the steps it will take again (logged after its checkpoint by a killed run).
            path = os.path.join(workdir, "metrics.jsonl")
            if resume_step is not None:
                drop_records_after(path, resume_step)
            self._jsonl = open(path, "a", encoding="utf-8")
        if tensorboard:
            # Event files written without TensorFlow (importing it costs seconds per run).
            self._tb = tb_events.EventWriter(os.path.join(workdir, "tb"))
        if progress_bar and (interactive if interactive is not None else
                             _interactive(sys.stderr)):
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                             dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
        else:
            self._lines = progress_bar

    def write(self, step: int, kind: str, metrics: dict) -> None:
        """One JSON line {"step", "kind" (train | eval), **metrics} and TB scalars kind/name."""
        if not self.enabled:
            return
        values = {k: _to_python(v) for k, v in metrics.items()}
        record = {"step": int(step), "kind": kind,
                  **{k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                     for k, v in values.items()}}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.scalars(int(step), {f"{kind}/{k}": v for k, v in values.items()
                                         if isinstance(v, (int, float))
                                         and not isinstance(v, bool)})

    def progress(self, steps: int, **postfix) -> None:
        """`steps` more steps done; postfix: loss, img_s, epoch, ... of the last interval."""
        self._step += steps
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                       for k, v in postfix.items()}, refresh=False)
        elif self._lines and self.enabled:
            print(self.progress_line(postfix), file=sys.stderr, flush=True)

    def progress_line(self, postfix: dict) -> str:
        """'step 150/3905 epoch 1 loss 2.3456 img/s 312.4 eta 0:12:34'. The ETA uses the mean
        time per step since the first progress call (evaluations included, the first
        interval's compilation not); on the first line, since this log was created."""
        parts = [f"step {self._step}/{self._total}" if self._total else f"step {self._step}"]
        rest = dict(postfix)
        if "epoch" in rest:
            parts.append(f"epoch {rest.pop('epoch')}")
        if "loss" in rest:   # a number, or "a/b/c" (the students of a lockstep run)
            loss = rest.pop("loss")
            parts.append(f"loss {loss:.4f}" if isinstance(loss, (int, float)) else f"loss {loss}")
        if "img_s" in rest:
            parts.append(f"img/s {float(rest.pop('img_s')):.1f}")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rest.items()]
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, self._step)
        t_ref, step_ref = self._first if self._step > self._first[1] else (self._t0, self._step0)
        if self._total and self._step > step_ref:
            per_step = (now - t_ref) / (self._step - step_ref)
            parts.append(f"eta {format_eta(per_step * max(self._total - self._step, 0))}")
        return " ".join(parts)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
