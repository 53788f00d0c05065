"""A run's logs: the header, config.json, and the step metrics as records and progress.

Lockstep runs log each student's records (metrics.jsonl, TensorBoard) in <workdir>/<name>
and the progress (bar or lines, and messages) at the top level; a solo run has one log in
the workdir. Step metrics stay on the device until the next logging point (StepMetrics):
one record per multiple of log_every_steps, the mean of the steps since the previous one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING
import jax
import numpy as np

from kd_jax.data import on_device
from kd_jax.train import config_validation, finite
from kd_jax.train import summary as summary_lib
from kd_jax.train.metric_log import MetricLog
from kd_jax.train.state import param_count

if TYPE_CHECKING:
    from kd_jax.train.setup import Setup

CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class Logs:
    """progress: the run's progress and messages; students: name -> its records' log (in a
    solo run both are the same MetricLog)."""

    progress: MetricLog
    students: dict

    def message(self, text: str) -> None:
        self.progress.message(text)

    def close(self) -> None:
        for log in self.students.values():
            if log is not self.progress:
                log.close()
        self.progress.close()


def open_logs(s: Setup, step: int) -> Logs:
    """The logs of the run resumed at `step` (records after
    `step`, from a segment cut short after its last checkpoint, are dropped)."""
    c = s.config
    if s.plan.lockstep:
        progress = MetricLog(s.workdir, tensorboard=False, progress_bar=c.progress_bar,
                             total_steps=s.total_steps, initial_step=step, records=False)
        return Logs(progress, {
            name: MetricLog(student.out_dir, tensorboard=c.tensorboard, progress_bar=False,
                            resume_step=step) for name, student in s.students.items()})
    (name,) = s.students
    log = MetricLog(s.workdir, tensorboard=c.tensorboard, progress_bar=c.progress_bar,
                    total_steps=s.total_steps, initial_step=step, resume_step=step)
    return Logs(log, {name: log})


def save_config(config, workdir: str) -> None:
    """The config this segment trains with, every hyperparameter included."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        summary_lib.write_json(os.path.join(workdir, CONFIG_FILE),
                               json.loads(config.to_json_best_effort()))


def header(s: Setup, state) -> str:
    """The first lines of a new run: what trains on what, the input path, each student's
    method and clip, the optimizer (state: the initial TrainState)."""
    c = s.config
    first = next(iter(state.students.values()))
    what = ", ".join(st.plan.label if st.plan.name == config_validation.SOLO
                     else f"{st.plan.name} ({st.plan.label})" for st in s.students.values())
    lines = [f"{what}: {c.teacher.arch or '-'} -> {c.student.arch} "
             f"({param_count(first.params['model']):,} params) on {s.ds.info.name}, "
             f"{jax.device_count()} device(s), global batch {s.batch_size}, "
             f"{s.schedule.steps_per_epoch} steps/epoch (remainder dropped), "
             f"{s.total_steps} steps"]
    lines.append("  input: " + (
        f"train set on the devices ({on_device.held_bytes(s.device_train) / 2**20:.1f} MiB "
        f"per device), augmented in the step, {s.steps_per_dispatch} step(s) per call"
        if s.device_train is not None else "augmented on the host"))
    lines.append(f"  evaluation batch {s.eval_batch_size} ("
                 + ("test set on the devices" if s.device_test is not None else "from the host")
                 + "); checkpoints " + checkpoint_policy(s.schedule))
    for st in s.students.values():
        hp = " ".join(f"{k}={v}" for k, v in sorted(st.plan.hparams.items()))
        who = "" if st.plan.name == config_validation.SOLO else f"{st.plan.name}: "
        clip = (f"clip_grad_norm={st.plan.clip_grad_norm:g}" if st.plan.clip_grad_norm
                else "clip_grad_norm=0 (off)")
        lines.append(" ".join(part for part in (f"  {who}method {st.plan.spec.name}", hp, clip)
                              if part))
    o = c.optimizer
    lines.append(f"  optimizer lr={o.lr} momentum={o.momentum} weight_decay={o.weight_decay} "
                 f"schedule={o.schedule} milestones={tuple(o.milestones)} epochs={c.num_epochs}"
                 f" (all values: {os.path.join(s.workdir, CONFIG_FILE)})")
    return "\n".join(lines)


def checkpoint_policy(schedule) -> str:
    """'every 1 epoch(s), at the end and at stops' and the like."""
    every = []
    if schedule.checkpoint_every_epochs:
        every.append(f"every {schedule.checkpoint_every_epochs} epoch(s)")
    if schedule.checkpoint_every_minutes:
        every.append(f"every {schedule.checkpoint_every_minutes:g} min")
    return ", ".join(every + ["at the end and at stops"])


def per_step(host: list, live: list) -> list:
    """Fetched metrics of dispatches -> one {student: {term: float}} per live step: a k-step
    dispatch's metrics are stacked (every leaf (k,)), of which the first live[i] are steps
    taken (the rest were masked); a single step's are scalars."""
    steps = []
    for metrics, n in zip(host, live):
        if not np.shape(jax.tree.leaves(metrics)[0]):
            steps.append(metrics)
        else:
            steps.extend(jax.tree.map(lambda x, i=i: x[i], metrics) for i in range(n))
    return steps


class StepMetrics:
    """The step metrics of the dispatches since the last record, kept on the device until a
    logging point fetches them (one transfer) to check and log them."""

    def __init__(self):
        self.pending: list = []     # per dispatch; fetched ones are per step
        self._live: list = []       # the steps taken by each entry of `pending`
        self._checked = 0           # leading entries of `pending` already fetched and checked
        self._t0 = time.perf_counter()   # start of the time the fresh steps took

    def append(self, metrics, steps: int = 1) -> None:
        """A dispatch's metrics, of which the first `steps` are steps taken."""
        self.pending.append(metrics)
        self._live.append(steps)

    def restart_timer(self) -> None:
        """After an evaluation or a save: not time the steps took."""
        self._t0 = time.perf_counter()

    def flush(self, s: Setup, logs: Logs, step: int, through: bool = True) -> None:
        """Fetches and checks the metrics of the steps up to `step`, and logs
        one record per multiple of log_every_steps among their steps (the mean of the steps
        since the previous record) and, if `through`, one for the steps after the last
        multiple. A non-finite loss raises NonFiniteLossError."""
        if not self.pending:
            return
        host = per_step(jax.device_get(self.pending), self._live)
        first_step = step - len(host) + 1
        epoch = s.schedule.epoch(step)
        finite.check_losses(host, first_step=first_step, epoch=epoch,
                            lockstep=s.plan.lockstep, latest_step=s.ckpt.latest_step(),
                            directory=s.ckpt.directory)
        every = s.config.log_every_steps
        ends = [t for t in range(first_step, step + 1) if t % every == 0]
        if through and (not ends or ends[-1] != step):
            ends.append(step)
        fresh = len(host) - self._checked   # steps fetched for the first time
        elapsed = time.perf_counter() - self._t0
        images_per_s = fresh * s.batch_size / max(elapsed, 1e-9)
        start = first_step
        for end in ends:
            window = host[start - first_step:end - first_step + 1]
            losses = {}
            for name in s.students:
                mean = {k: float(np.mean([m[name][k] for m in window])) for k in window[0][name]}
                # The largest pre-clip norm of the window: > optimizer.clip_grad_norm where it
                # bound.
                mean["grad_norm_max"] = float(np.max([m[name]["grad_norm"] for m in window]))
                logs.students[name].write(end, "train", {**mean, "epoch": epoch,
                                                         "images_per_s": images_per_s})
                losses[name] = mean["loss"]
            loss = (next(iter(losses.values())) if len(losses) == 1
                    else "/".join(f"{v:.4g}" for v in losses.values()))
            logs.progress.progress(len(window), loss=loss, img_s=round(images_per_s, 1),
                                   epoch=epoch)
            start = end + 1
        # The steps after the last record stay (fetched and checked) for the next one.
        self.pending = host[start - first_step:]
        self._live = [1] * len(self.pending)
        self._checked = len(self.pending)
        self._t0 = time.perf_counter()
