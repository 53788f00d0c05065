"""The training loop: setup; for each dispatch: step, log, evaluate, checkpoint; finish.

    summary = train_and_evaluate(config, workdir)

`_train` is the whole run, top to bottom, over an immutable `setup.Setup` (config, mesh,
students, jitted steps, data, checkpointer) and a small `resume.LoopState` (step, TrainState,
evaluations so far):
- setup (kd_jax.train.setup): validate the config, read the dataset (before anything is
  written, so a missing dataset leaves no workdir behind), build the teacher, the students
  (each with its method's loss) and the jitted steps, and restore the latest checkpoint of
  `workdir` (kd_jax.train.resume).
- each dispatch (kd_jax.train.inputs): one call of the jitted step, k steps (host path: one
  augmented batch, k = 1; on-device path: k = steps_per_dispatch draws); then the actions
  due (kd_jax.train.actions): log (fetch the step metrics, check the loss is finite:
  kd_jax.train.logs), evaluate, checkpoint, stop.
- finish: export each student (kd_jax.train.exports), write and print its summary
  (kd_jax.train.summary). A run is finished only when its exports are complete: a rerun
  redoes a missing or partial one.

A live run holds its workdir's lock (kd_jax.train.workdir_lock). Stops (SIGTERM, Ctrl-C)
are agreed across processes at sync points (kd_jax.train.stops); a damaged newest
checkpoint is set aside and a failed save is one StorageError line (kd_jax.train.checkpoint).

Resumption: the state (step, every student's parameters, BatchNorm statistics and optimizer
state, RNG) is checkpointed every `checkpoint_every_epochs` and every
`checkpoint_every_minutes` (their defaults by platform: kd_jax.train.platform_defaults), at
the end, and on SIGTERM or Ctrl-C (SIGINT; a second Ctrl-C interrupts at once), after which
`train` raises RunStopped (so a seeds run or a pipeline does not go on to its next run); the
same command with the same workdir restores the latest checkpoint and continues at the same
step with the same data order (a function of (seed, epoch, step)), so a killed run ends with
the parameters of an uninterrupted one. A finished run is not re-run: it says so and prints
its summary. Each start of a run is a segment; summaries keep the wall and training time of
every segment (kd_jax.train.timing).

Non-finite losses: step metrics stay on the device until the next logging point (every
`log_every_steps`, at epoch ends and before every checkpoint), where they are fetched in
one transfer and checked, so the loop never waits for the device between steps; a NaN/inf
loss raises NonFiniteLossError naming the step, the student and the terms. The check runs
before each save, so a checkpoint never holds a state reached through a non-finite loss;
the whole state is also checked finite before each save and the export
(kd_jax.train.finite: an update can overflow the weights while the loss stays finite).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from kd_jax import data
from kd_jax.train import (config_validation, exports, inputs, resume, schedules, stops,
                          workdir_lock)
from kd_jax.train import logs as logs_lib
from kd_jax.train import setup as setup_lib
from kd_jax.train import summary as summary_lib
from kd_jax.train.config_validation import ConfigError
from kd_jax.train.actions import CheckpointTimer
from kd_jax.train.exports import BEST_MODEL_DIR, EXPORT_DIRS, FINAL_MODEL_DIR
from kd_jax.train.finite import NonFiniteLossError
from kd_jax.train.inputs import use_on_device
from kd_jax.train.setup import Built, build, load_teacher
from kd_jax.train.step import make_mesh
from kd_jax.train.stops import RunStopped
from kd_jax.train.timing import Clock

# The trainer's public names (the CLI, the pipeline, tests, benchmarks and the notebook
# import them from here).
__all__ = ["train", "train_and_evaluate", "build", "Built", "load_teacher", "make_mesh",
           "use_on_device", "FINAL_MODEL_DIR", "BEST_MODEL_DIR", "EXPORT_DIRS", "RunStopped",
           "NonFiniteLossError", "ConfigError"]


def train(config, workdir: str) -> tuple[dict, Any]:
    """Trains the config's student(s) in `workdir`, resuming from its latest checkpoint.

    Returns (summary, final TrainState); the summary is also written to
    workdir/summary.json (lockstep: {"lockstep": True, "students": {name: summary}}, and
    each student's in workdir/<name>/summary.json). Raises RunStopped (after saving the step
    and writing the unfinished summary) when SIGTERM or SIGINT stopped it.
    """
    with stops.stop_signals() as stop, workdir_lock.hold(workdir):
        return _train(config, workdir, stop)


def train_and_evaluate(config, workdir: str) -> dict:
    """train(), returning only the summary."""
    return train(config, workdir)[0]


def _train(config, workdir: str, stop: stops.StopSignal) -> tuple[dict, Any]:
    """The run: setup; for each dispatch: step, log, evaluate, checkpoint; finish."""
    # --- setup ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    plan = config_validation.validate(config)
    ds = data.get_dataset(config.dataset, process_index=jax.process_index(),
                          process_count=jax.process_count())
    config_validation.check_data(config, plan, ds.info)   # own data: classes, image size
    workdir = os.path.abspath(workdir)
    s, loop = setup_lib.setup(config, plan, ds, workdir)
    clock = Clock(loop.step, t0)
    with contextlib.closing(s.ckpt):
        if loop.step >= s.total_steps:
            return _report_finished(s, loop), loop.state
        with contextlib.closing(logs_lib.open_logs(s, loop.step)) as logs:
            logs_lib.save_config(config, workdir)
            logs.message(logs_lib.header(s, loop.state) if loop.step == 0 else
                         f"resuming from step {loop.step} of {s.total_steps} "
                         f"(epoch {loop.step // s.schedule.steps_per_epoch + 1}) "
                         f"in {s.ckpt.directory}")
            # --- for each dispatch: step, log, evaluate, checkpoint -----------------------
            metrics = logs_lib.StepMetrics()   # on the device until a logging point
            timer = CheckpointTimer(s.schedule.checkpoint_every_minutes)
            with stop.deferred(), contextlib.closing(inputs.dispatches(s, loop.step)) as it:
                # Every dispatch has the same shapes (kd_jax.train.inputs): the first compiles.
                for d in it:
                    loop.state, step_metrics = s.dispatch(loop.state, d.item, d.steps, d.lr,
                                                          d.epoch)
                    loop.step += d.steps
                    metrics.append(step_metrics, d.steps)
                    clock.after_step(step_metrics, d.steps * s.batch_size, loop.step)
                    sync_point = s.schedule.sync_point(loop.step, d.steps)
                    due = s.schedule.due(loop.step, d.steps,
                                         *stops.requested(stop, sync_point, timer.due()))
                    if due.log:   # first: a non-finite loss stops before any eval or save
                        metrics.flush(s, logs, loop.step, due.log_through)
                    if due.eval or due.checkpoint:
                        clock.pause()
                        if due.eval:
                            for name, evaluation in _evaluate(s, loop, logs).items():
                                loop.history[name].append(evaluation)
                        if due.checkpoint:
                            _save(s, loop, clock)
                            timer.restart()
                        clock.resume()
                        metrics.restart_timer()
                    if due.stop:
                        break
                it.close()      # the prefetch thread stops before the wait
                s.ckpt.wait()   # the last save is complete
    # --- finish --------------------------------------------------------------------------
    summary = _finish(s, loop, clock)
    stopped_by = stop.signum if loop.step < s.total_steps else 0
    if stopped_by:
        raise RunStopped(stopped_by, f"saved step {loop.step} of {s.total_steps} in {workdir}",
                         summary)
    return summary, loop.state


def _evaluate(s: setup_lib.Setup, loop: resume.LoopState, logs: logs_lib.Logs) -> dict:
    """Evaluates every student on the test set, logs and prints the result, and exports the
    student as best_model/ where it beats all its earlier evaluations. Returns {name:
    {"epoch", "step", "top1", "top5"}} (percent), for the caller to record."""
    students = {n: (st.params["model"], st.model_state) for n, st in loop.state.students.items()}
    host = jax.device_get(s.eval_sums(students))
    epoch = s.schedule.epoch(loop.step)
    lr = schedules.learning_rate(s.config.optimizer, s.config.num_epochs, epoch)
    evaluations = {}
    for name, student in s.students.items():
        total = {k: float(np.sum([b[name][k] for b in host])) for k in ("top1", "top5", "count")}
        count = max(total["count"], 1.0)
        result = {"top1": 100.0 * total["top1"] / count, "top5": 100.0 * total["top5"] / count}
        evaluations[name] = {"epoch": epoch, "step": loop.step, **result}
        if s.config.export_model and all(result["top1"] > h["top1"]
                                         for h in loop.history[name]):
            s.check_finite(loop)   # no export ever holds a non-finite weight
            # Written now, before the checkpoint that records this evaluation: a run killed
            # in between redoes the same steps on resume and rewrites the same weights.
            exports.save_model(s, loop.state, student, exports.BEST_MODEL_DIR,
                               evaluations[name])
        logs.students[name].write(loop.step, "eval", {"epoch": epoch, **result})
        who = f"{name}: " if s.plan.lockstep else ""
        logs.message(f"{who}epoch {epoch} step {loop.step}: test top-1 {result['top1']:.2f} "
                     f"top-5 {result['top5']:.2f} (lr {lr:.4g})")
    return evaluations


def _save(s: setup_lib.Setup, loop: resume.LoopState, clock: Clock) -> None:
    """Checkpoints the loop state, checked finite first (no checkpoint holds a NaN or inf)."""
    s.check_finite(loop)
    resume.save(s.ckpt, loop, epoch=s.schedule.epoch(loop.step), segment=clock.wall(),
                images=clock.images, batch_size=s.batch_size,
                steps_per_epoch=s.schedule.steps_per_epoch)


def _finish(s: setup_lib.Setup, loop: resume.LoopState, clock: Clock) -> dict:
    """Exports (a finished run) and reports the run; returns its summary."""
    summaries = summary_lib.run_summaries(s, loop, loop.segments + [clock.wall()],
                                          loop.images_seen + clock.images)
    if loop.step >= s.total_steps:
        exports.export_all(s, loop, summaries)
    return summary_lib.report(s, loop, summaries)


def _report_finished(s: setup_lib.Setup, loop: resume.LoopState) -> dict:
    """A finished run: nothing to train; prints (and returns) its saved summary, after
    redoing its export if that is missing or partial."""
    try:
        saved = summary_lib.read_json(os.path.join(s.workdir, summary_lib.SUMMARY_FILE))
    except summary_lib.BrokenJSONError as e:   # rebuilt below from the checkpoint's metadata
        print(f"kd_jax: note: {e}; rewriting it", file=sys.stderr, flush=True)
        saved = None
    missing = exports.missing(exports.export_dirs(s))
    if missing:
        # Killed (or out of disk) after the last checkpoint: the export is part of finishing.
        print(f"{s.workdir} holds a finished run (step {loop.step} of {s.total_steps}) "
              f"whose export is missing or partial ({', '.join(missing)}); exporting it again "
              f"from checkpoint step {loop.step}", flush=True)
        summaries = summary_lib.run_summaries(s, loop, loop.segments, loop.images_seen)
        exports.export_all(s, loop, summaries)
        return summary_lib.report(s, loop, summaries)
    print(f"{s.workdir} holds a finished run (step {loop.step} of {s.total_steps}); "
          "nothing to do. Its summary:", flush=True)
    if saved is None or not saved.get("finished"):
        # Stopped after the last checkpoint and before its summary: rebuild it from the
        # checkpoint's metadata (the times of the segments that were saved).
        return summary_lib.report(s, loop, summary_lib.run_summaries(s, loop, loop.segments,
                                                                     loop.images_seen))
    print(summary_lib.format_lockstep_table(saved["students"]) if saved.get("lockstep")
          else summary_lib.format_table(saved), flush=True)
    return saved
