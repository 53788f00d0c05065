"""The training loop: setup, epochs of jitted steps, periodic actions, finish.

    summary = train_and_evaluate(config, workdir)

- setup: validate the config (which builds every student's loss), read the dataset (before
  anything is written, so a missing dataset leaves no workdir behind), build the models,
  the state and the jitted steps, and restore the latest checkpoint of `workdir`.
- one epoch: the data of (seed, epoch) through the train step (host path: augmented batches;
  on-device path, kd_jax.data.on_device: each call's draws, k = steps_per_dispatch steps per
  call); after each call `_actions_due` decides which periodic actions run: log (fetch the
  step metrics, check the loss is finite), evaluate, checkpoint.
- finish: export each student, write and print its summary. A run is finished only when
  its exports are complete (kd_jax.train.exports): a rerun redoes a missing or partial one.

A live run holds its workdir's lock (kd_jax.train.workdir_lock). Stops (SIGTERM, Ctrl-C)
are agreed across processes at sync points (kd_jax.train.stops); a damaged newest
checkpoint is set aside and a failed save is one StorageError line (kd_jax.train.checkpoint).

Resumption: the state (step, every student's parameters, BatchNorm statistics and
optimizer state, RNG) is checkpointed every `checkpoint_every_epochs`, at the end, and on
SIGTERM or Ctrl-C (SIGINT; a second Ctrl-C interrupts at once), after which `train` raises
RunStopped (so a seeds run or a pipeline does not go on to its next run); the same command with the same workdir restores the latest checkpoint and continues
at the same step with the same data order (a function of (seed, epoch, step)), so a killed
run ends with the parameters of an uninterrupted one. A finished run is not re-run: it says
so and prints its summary. Each start of a run is a segment; summaries keep the wall and
training time of every segment.

Non-finite losses: step metrics stay on the device until the next logging point (every
`log_every_steps`, at epoch ends and before every checkpoint), where they are fetched in
one transfer and checked, so the loop never waits for the device between steps; a NaN/inf
loss raises NonFiniteLossError naming the step, the student and the terms. The check runs
before each save, so a checkpoint never holds a state reached through a non-finite loss;
the whole state is also checked finite before each save and the export
(kd_jax.train.finite: an update can overflow the weights while the loss stays finite).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import convert, data, methods, models
from kd_jax.data import on_device
from kd_jax.train import config_validation, exports, finite, schedules, stops, workdir_lock
from kd_jax.train import summary as summary_lib
from kd_jax.train.checkpoint import Checkpointer, raise_if_storage
from kd_jax.train.config_validation import ConfigError, RunPlan, StudentPlan
from kd_jax.train.metric_log import MetricLog
from kd_jax.train.state import (init_state, init_student, make_optimizer, param_count,
                                split_student)
from kd_jax.train.step import (StepStudent, make_eval_step, make_mesh, make_multi_train_step,
                               make_train_step)
from kd_jax.train.stops import RunStopped  # noqa: F401  (raised by train; the CLI's name)

FINAL_MODEL_DIR = "final_model"   # the last step's student, loadable as a teacher.
BEST_MODEL_DIR = "best_model"     # the student of the best evaluation (mdistiller's student_best).
# What finishing a run exports for each student (and redoes when a rerun finds it missing).
# best_model/ is not here: it is written at the evaluation that improves on the best, before
# the checkpoint recording it, and cannot be rebuilt from the last checkpoint.
EXPORT_DIRS = (FINAL_MODEL_DIR,)


class NonFiniteLossError(finite.NonFiniteError):
    """The loss became NaN or inf."""


def compute_dtype(config) -> Any:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.get("compute_dtype",
                                                                         "float32")]


def load_teacher(config, num_classes: int) -> nnx.Module:
    """The teacher in eval mode: 'random' init, a .pth file or a converted directory."""
    path = config_validation.teacher_checkpoint(config)   # 'published' -> its directory
    dtype = compute_dtype(config)
    if path == config_validation.RANDOM_TEACHER:
        teacher = models.create(config.teacher.arch, num_classes, dtype=dtype,
                                rngs=nnx.Rngs(config.seed + 1))
    else:
        try:
            teacher = convert.load_teacher(path, config.teacher.arch, num_classes,
                                           allow_pickle=config.teacher.allow_pickle, dtype=dtype)
        except Exception as e:  # name the config key whatever the converter raised
            raise ConfigError(
                f"teacher.checkpoint={path!r} could not be loaded as a {config.teacher.arch} "
                f"with {num_classes} classes: {e}") from e
    teacher.eval()
    return teacher


def init_from(config, num_classes: int) -> nnx.Module:
    """The student built from config.student.init_from (a converted directory or a .pth)."""
    path = config.student.init_from
    try:
        return convert.load_teacher(path, config.student.arch, num_classes,
                                    dtype=compute_dtype(config))
    except Exception as e:   # name the config key whatever the converter raised
        raise ConfigError(f"student.init_from={path!r} could not be loaded as a "
                          f"{config.student.arch} with {num_classes} classes: {e}") from e


class _Clock:
    """Wall time of this segment, and training time without compilation, eval or saving."""

    def __init__(self, step: int, t0: float):
        self.segment = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "first_step": step,
                        "last_step": step, "wall_s": 0.0, "train_s": 0.0}
        self._t0 = t0   # perf_counter() at the start of the segment (before setup)
        self._mark: Optional[float] = None
        self.compiled = False
        self.images = 0

    def after_step(self, metrics, images: int, step: int, compiles: bool = False) -> None:
        """After a dispatch of `images` training images that ended at `step`. `compiles`: the
        dispatch compiled a program (its first call, or a new number of steps per call);
        the caller paused the clock before it, and its images are not counted."""
        self.segment["last_step"] = step
        if not self.compiled or compiles:
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
        self.segment["wall_s"] = time.perf_counter() - self._t0
        return dict(self.segment)


@dataclasses.dataclass
class _Student:
    plan: StudentPlan
    graphdef: Any
    eval_graphdef: Any
    out_dir: str
    log: Optional[MetricLog] = None
    history: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Due:
    log: bool
    eval: bool
    checkpoint: bool
    stop: bool
    # Log every step taken (epoch end, stop); else only up to the last multiple of
    # log_every_steps, keeping the rest for the next record, so that the records (their
    # steps and means) do not depend on steps_per_dispatch.
    log_through: bool = True


@dataclasses.dataclass
class _Run:
    """Everything one training run holds: what setup built, and the state of the loop."""

    config: Any
    plan: RunPlan
    workdir: str
    ds: Any
    built: "Built"
    batch_sharding: Any
    batch_size: int
    eval_batch_size: int
    steps_per_epoch: int
    total_steps: int
    state: Any
    step: int
    ckpt: Checkpointer
    progress: Optional[MetricLog] = None
    segments: list = dataclasses.field(default_factory=list)
    images_seen: int = 0
    clock: Optional[_Clock] = None
    pending: list = dataclasses.field(default_factory=list)
    pending_t0: float = 0.0
    pending_checked: int = 0         # leading entries of `pending` already fetched and checked
    device_train: Any = None         # on_device.DeviceTrainSet, or None: the host path
    steps_per_dispatch: int = 1      # steps per call on the on-device path
    compiled_k: set = dataclasses.field(default_factory=set)   # dispatch lengths compiled

    @property
    def students(self) -> dict:
        return self.built.students

    @property
    def epoch(self) -> int:
        """The epoch (from 1) of the next step, or of the last one at an epoch end."""
        return max(self.step - 1, 0) // self.steps_per_epoch + 1

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)

    def close(self) -> None:
        self.ckpt.close()
        for s in self.students.values():
            if s.log is not None and s.log is not self.progress:
                s.log.close()
        if self.progress is not None:
            self.progress.close()


# --- setup -----------------------------------------------------------------------------------

def _train_steps(config, ds) -> tuple[int, int]:
    steps_per_epoch = ds.steps_per_epoch(config.batch_size)
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {ds.info.num_train} "
                          "training images")
    total = config.num_epochs * steps_per_epoch
    return steps_per_epoch, min(total, config.total_steps) if config.total_steps else total


def _eval_batch_size(config, ds) -> int:
    """eval_batch_size (0: batch_size), at most the test set in one batch (padded to the
    devices): a larger one would only allocate padding (eval_batch_size=1e8: host memory)."""
    n = jax.device_count()
    most = -(-ds.info.num_test // n) * n
    return min(config.eval_batch_size or config.batch_size, most)


def _build_students(config, plan: RunPlan, num_classes: int, teacher, txs: dict, workdir: str):
    """(runtime students, initial StudentStates) of the plan."""
    students, states = {}, {}
    teacher_head = None if teacher is None else tuple(teacher.head.kernel.shape)
    for p in plan.students:
        if config.student.get("init_from"):   # weights and BN statistics of another run
            model = init_from(config, num_classes)
        else:
            model = models.create(config.student.arch, num_classes, dtype=compute_dtype(config),
                                  rngs=nnx.Rngs(p.init_seed))
        graphdef, eval_graphdef, params, model_state = split_student(model)
        extra = None
        if p.spec.init_extra is not None:
            shapes = methods.HeadShapes(tuple(model.head.kernel.shape), teacher_head)
            extra = p.spec.init_extra(jax.random.PRNGKey(p.init_seed + 2), shapes, p.hparams)
        students[p.name] = _Student(p, graphdef, eval_graphdef, os.path.join(workdir, p.subdir))
        states[p.name] = init_student(params, model_state, txs[p.name], extra)
    return students, states


def _restore(run: _Run) -> dict:
    """Restores the latest checkpoint into run.state; returns its metadata ({} if none)."""
    names = sorted(run.students)

    def check_meta(meta: dict) -> None:
        # Checked before the state: a different run has another tree.
        if (meta.get("batch_size") != run.batch_size
                or meta.get("steps_per_epoch") != run.steps_per_epoch
                or sorted(meta.get("students", [])) != names):
            raise ConfigError(
                f"{run.workdir} holds a run with batch_size={meta.get('batch_size')}, "
                f"{meta.get('steps_per_epoch')} steps per epoch and students "
                f"{meta.get('students')}; this config gives batch_size={run.batch_size}, "
                f"{run.steps_per_epoch} and {names}: use another --workdir")

    # A damaged newest checkpoint is set aside and the previous one restored (checkpoint.py).
    restored = run.ckpt.restore_latest(run.state, check_meta)
    if restored is None:
        return {}
    run.state, meta = restored
    run.step = int(jax.device_get(run.state.step))
    for name, history in meta["history"].items():
        run.students[name].history = list(history)
    run.segments = list(meta["segments"])
    run.images_seen = int(meta["images_seen"])
    return meta


@dataclasses.dataclass
class Built:
    """The models, the initial state and the jitted steps of a run (no data, no files)."""

    mesh: Any
    students: dict          # name -> _Student
    teacher_state: Any      # replicated teacher variables, or None
    state: Any              # the initial TrainState, replicated
    train_step: Any         # jit(state, teacher_state, batch, lr, epoch) -> (state, metrics)
    eval_step: Any          # jit({name: (params, model_state)}, batch) -> {name: sums}
    # jit(state, teacher_state, device train set, draws (k, B, 4), lr, epoch)
    #   -> (state, metrics stacked (k,)): k steps per call on the on-device path.
    multi_train_step: Any = None


def build(config, plan: RunPlan, num_classes: int, workdir: str = "", devices=None) -> Built:
    """Builds the teacher (if any student needs one), the students and the steps of `plan`.

    Used by the trainer and by benchmarks/, so that both time the same step. `devices`: the
    mesh's devices (default: all of them; benchmarks time subsets).
    """
    # How convolutions are traced on the CPU backend (GPU/TPU: always XLA's): process-wide,
    # read when the steps are traced, so set before anything is compiled.
    models.set_cpu_conv(config.get("cpu_conv", "auto"))
    mesh = make_mesh(devices)
    replicated = NamedSharding(mesh, P())
    teacher = teacher_graphdef = teacher_state = None
    if plan.needs_teacher:
        teacher = load_teacher(config, num_classes)
        teacher_graphdef, teacher_state = nnx.split(teacher)
        teacher_state = jax.device_put(teacher_state, replicated)
    # One optimizer per student: each clips its gradient as its method's reference trainer.
    txs = {p.name: make_optimizer(config.optimizer, p.clip_grad_norm) for p in plan.students}
    students, states = _build_students(config, plan, num_classes, teacher, txs, workdir)
    dtype = compute_dtype(config)
    step_students = {n: StepStudent(s.graphdef, s.plan.spec.build(s.plan.hparams), txs[n])
                     for n, s in students.items()}
    train_step = make_train_step(step_students, teacher_graphdef, None, mesh, dtype)
    # Unrolled on CPU, where a step in XLA's rolled loop ran several times slower
    # (kd_jax.train.step).
    multi_train_step = make_multi_train_step(
        step_students, teacher_graphdef, None, mesh, on_device.train_batch, dtype,
        unroll=mesh.devices.flat[0].platform == "cpu")
    eval_step = make_eval_step({n: s.eval_graphdef for n, s in students.items()}, mesh, dtype)
    state = jax.device_put(init_state(states, config.seed), replicated)
    return Built(mesh, students, teacher_state, state, train_step, eval_step, multi_train_step)


def use_on_device(config, ds) -> bool:
    """dataset.on_device: None (auto) = an in-memory train set within
    on_device.DEVICE_BUDGET_BYTES; True where the set cannot go there is an error."""
    wanted = config.dataset.get("on_device", None)
    if wanted is None:
        return on_device.fits(ds)
    if wanted and not isinstance(ds, data.InMemoryDataset):
        raise ConfigError(f"dataset.on_device=True, but {ds.info.name} is not held in memory "
                          "(its batches come from tf.data): set dataset.on_device=False")
    return bool(wanted)


def _setup(config, plan: RunPlan, ds, workdir: str) -> _Run:
    steps_per_epoch, total_steps = _train_steps(config, ds)
    b = build(config, plan, ds.info.num_classes, workdir)
    run = _Run(config=config, plan=plan, workdir=workdir, ds=ds, built=b,
               batch_sharding=NamedSharding(b.mesh, P("data")), batch_size=config.batch_size,
               eval_batch_size=_eval_batch_size(config, ds),
               steps_per_epoch=steps_per_epoch, total_steps=total_steps, state=b.state, step=0,
               ckpt=Checkpointer(workdir, keep=config.keep_checkpoints))
    try:
        _restore(run)
        if use_on_device(config, ds):
            run.device_train = on_device.put_on_mesh(ds, b.mesh)
            run.steps_per_dispatch = on_device.steps_per_dispatch(
                int(config.get("steps_per_dispatch", 0)), b.mesh.devices.flat[0].platform)
    except BaseException:
        run.ckpt.close()
        raise
    return run


def _open_logs(run: _Run) -> None:
    c = run.config
    if run.plan.lockstep:
        run.progress = MetricLog(run.workdir, tensorboard=False, progress_bar=c.progress_bar,
                                 total_steps=run.total_steps, initial_step=run.step,
                                 records=False)
        for s in run.students.values():
            s.log = MetricLog(s.out_dir, tensorboard=c.tensorboard, progress_bar=False,
                              resume_step=run.step)
    else:
        (s,) = run.students.values()
        s.log = run.progress = MetricLog(run.workdir, tensorboard=c.tensorboard,
                                         progress_bar=c.progress_bar,
                                         total_steps=run.total_steps, initial_step=run.step,
                                         resume_step=run.step)


CONFIG_FILE = "config.json"


def _save_config(run: _Run) -> None:
    """The config this segment trains with, every hyperparameter included."""
    if jax.process_index() == 0:
        os.makedirs(run.workdir, exist_ok=True)
        summary_lib.write_json(os.path.join(run.workdir, CONFIG_FILE),
                               json.loads(run.config.to_json_best_effort()))


def _header(run: _Run) -> str:
    c = run.config
    first = next(iter(run.state.students.values()))
    what = ", ".join(s.plan.label if s.plan.name == config_validation.SOLO
                     else f"{s.plan.name} ({s.plan.label})" for s in run.students.values())
    lines = [f"{what}: {c.teacher.arch or '-'} -> {c.student.arch} "
             f"({param_count(first.params['model']):,} params) on {run.ds.info.name}, "
             f"{jax.device_count()} device(s), global batch {run.batch_size}, "
             f"{run.steps_per_epoch} steps/epoch (remainder dropped), {run.total_steps} steps"]
    lines.append("  input: " + (
        f"train set on the devices, augmented in the step, {run.steps_per_dispatch} step(s) "
        "per call" if run.device_train is not None else "augmented on the host"))
    for s in run.students.values():
        hp = " ".join(f"{k}={v}" for k, v in sorted(s.plan.hparams.items()))
        who = "" if s.plan.name == config_validation.SOLO else f"{s.plan.name}: "
        clip = (f"clip_grad_norm={s.plan.clip_grad_norm:g}" if s.plan.clip_grad_norm
                else "clip_grad_norm=0 (off)")
        lines.append(" ".join(part for part in (f"  {who}method {s.plan.spec.name}", hp, clip)
                              if part))
    o = c.optimizer
    lines.append(f"  optimizer lr={o.lr} momentum={o.momentum} weight_decay={o.weight_decay} "
                 f"schedule={o.schedule} milestones={tuple(o.milestones)} epochs={c.num_epochs}"
                 f" (all values: {os.path.join(run.workdir, CONFIG_FILE)})")
    return "\n".join(lines)


# --- periodic actions ------------------------------------------------------------------------

def _actions_due(run: _Run, stop_requested: bool, steps_taken: int = 1) -> _Due:
    """Which periodic actions follow the dispatch of `steps_taken` steps that just ended at
    run.step (dispatches never cross an epoch end). Logging happens at the first dispatch
    boundary at or after each multiple of log_every_steps."""
    c = run.config
    end_of_epoch = run.step % run.steps_per_epoch == 0
    finished = run.step >= run.total_steps
    stop = finished or stop_requested
    log_point = run.step // c.log_every_steps > (run.step - steps_taken) // c.log_every_steps
    return _Due(
        log=log_point or end_of_epoch or stop,
        eval=(end_of_epoch and run.epoch % c.eval_every_epochs == 0) or finished,
        checkpoint=(end_of_epoch and run.epoch % c.checkpoint_every_epochs == 0) or stop,
        stop=stop, log_through=end_of_epoch or stop)


def _sync_point(run: _Run, steps_taken: int = 1) -> bool:
    """Whether the dispatch of `steps_taken` steps that just ended at run.step crossed a point
    at which every process takes part in agreeing on a stop (kd_jax.train.stops): a multiple
    of log_every_steps or an epoch end; the same dispatches, so the same points, in every
    process."""
    every = run.config.log_every_steps
    return (run.step // every > (run.step - steps_taken) // every
            or run.step % run.steps_per_epoch == 0)


def _flush_metrics(run: _Run, through: bool = True) -> None:
    """Fetches and checks the step metrics kept since the last logging point, and logs one
    record per multiple of log_every_steps among their steps (the mean of the steps since
    the previous record) and, if `through`, one for the steps after the last multiple."""
    if not run.pending:
        return
    host = _per_step(jax.device_get(run.pending))
    first_step = run.step - len(host) + 1
    for i, metrics in enumerate(host):
        for name, m in metrics.items():
            if not np.isfinite(m["loss"]):
                terms = ", ".join(f"{k}={float(v):.6g}" for k, v in m.items())
                who = f" of student {name!r}" if run.plan.lockstep else ""
                raise NonFiniteLossError(
                    f"non-finite loss{who} at step {first_step + i} (epoch {run.epoch}): "
                    f"{terms}. Stopped; "
                    + finite.last_good(run.ckpt.latest_step(), run.ckpt.directory))
    every = run.config.log_every_steps
    ends = [s for s in range(first_step, run.step + 1) if s % every == 0]
    if through and (not ends or ends[-1] != run.step):
        ends.append(run.step)
    fresh = len(host) - run.pending_checked   # steps fetched for the first time
    elapsed = time.perf_counter() - run.pending_t0
    images_per_s = fresh * run.batch_size / max(elapsed, 1e-9)
    start = first_step
    for end in ends:
        window = host[start - first_step:end - first_step + 1]
        losses = {}
        for name, s in run.students.items():
            mean = {k: float(np.mean([m[name][k] for m in window])) for k in window[0][name]}
            # The largest pre-clip norm of the window: > optimizer.clip_grad_norm where it bound.
            mean["grad_norm_max"] = float(np.max([m[name]["grad_norm"] for m in window]))
            s.log.write(end, "train", {**mean, "epoch": run.epoch, "images_per_s": images_per_s})
            losses[name] = mean["loss"]
        loss = (next(iter(losses.values())) if len(losses) == 1
                else "/".join(f"{v:.4g}" for v in losses.values()))
        run.progress.progress(len(window), loss=loss, img_s=round(images_per_s, 1),
                              epoch=run.epoch)
        start = end + 1
    # The steps after the last record stay (fetched and checked) for the next one.
    run.pending = host[start - first_step:]
    run.pending_checked = len(run.pending)
    run.pending_t0 = time.perf_counter()


def _per_step(host: list) -> list:
    """Fetched metrics of dispatches -> one {student: {term: float}} per step: a k-step
    dispatch's metrics are stacked (every leaf (k,)), a single step's are scalars."""
    steps = []
    for metrics in host:
        k = np.shape(jax.tree.leaves(metrics)[0])
        if not k:
            steps.append(metrics)
        else:
            steps.extend(jax.tree.map(lambda x, i=i: x[i], metrics) for i in range(k[0]))
    return steps


def _evaluate(run: _Run) -> None:
    students = {n: (s.params["model"], s.model_state) for n, s in run.state.students.items()}
    sums = []
    for batch in data.prefetch_to_mesh(run.ds.eval_batches(run.eval_batch_size),
                                       run.batch_sharding):
        sums.append(run.built.eval_step(students, batch))
    host = jax.device_get(sums)
    lr = schedules.learning_rate(run.config.optimizer, run.config.num_epochs, run.epoch)
    for name, s in run.students.items():
        total = {k: float(np.sum([b[name][k] for b in host])) for k in ("top1", "top5", "count")}
        count = max(total["count"], 1.0)
        result = {"top1": 100.0 * total["top1"] / count, "top5": 100.0 * total["top5"] / count}
        improved = all(result["top1"] > h["top1"] for h in s.history)
        s.history.append({"epoch": run.epoch, "step": run.step, **result})
        if improved and run.config.export_model:
            _check_finite(run)   # no export ever holds a non-finite weight
            # Written now, before the checkpoint that records this evaluation: a run killed
            # in between redoes the same steps on resume and rewrites the same weights.
            _save_model(run, s, BEST_MODEL_DIR, s.history[-1])
        s.log.write(run.step, "eval", {"epoch": run.epoch, **result})
        who = f"{name}: " if run.plan.lockstep else ""
        run.message(f"{who}epoch {run.epoch} step {run.step}: test top-1 {result['top1']:.2f} "
                    f"top-5 {result['top5']:.2f} (lr {lr:.4g})")


def _segments(run: _Run) -> list:
    return run.segments + [run.clock.wall()]


def _check_finite(run: _Run) -> None:
    """Before every save and export: no NaN or inf anywhere in the state."""
    finite.check_state(run.state, step=run.step, epoch=run.epoch, lockstep=run.plan.lockstep,
                       latest_step=run.ckpt.latest_step(), directory=run.ckpt.directory)


def _save(run: _Run) -> None:
    _check_finite(run)
    run.ckpt.save(run.step, run.state, {
        "step": run.step, "epoch": run.epoch, "students": sorted(run.students),
        "history": {n: s.history for n, s in run.students.items()},
        "segments": _segments(run), "images_seen": run.images_seen + run.clock.images,
        "batch_size": run.batch_size, "steps_per_epoch": run.steps_per_epoch})


def _run_actions(run: _Run, due: _Due) -> None:
    if due.log:
        _flush_metrics(run, due.log_through)   # before any eval or save: a non-finite loss
                                               # stops here
    if due.eval or due.checkpoint:
        run.clock.pause()
        if due.eval:
            _evaluate(run)
        if due.checkpoint:
            _save(run)
        run.clock.resume()
        run.pending_t0 = time.perf_counter()


# --- epochs ----------------------------------------------------------------------------------

def _train_epoch(run: _Run, stop: stops.StopSignal) -> bool:
    """Runs the steps of run.epoch from run.step on; True when the run should stop.

    Each call runs k steps: on the host path one augmented batch per call (k = 1); on the
    on-device path (kd_jax.data.on_device) the host sends each call's draws (k, B, 4) (k =
    steps_per_dispatch, fewer at the epoch's end or total_steps). The periodic actions and
    the stop signal are checked between calls.
    """
    c = run.config
    epoch = run.step // run.steps_per_epoch + 1
    lr = np.float32(schedules.learning_rate(c.optimizer, c.num_epochs, epoch))
    epoch_arr = np.int32(epoch)
    first = run.step % run.steps_per_epoch
    b = run.built
    if run.device_train is None:
        inputs = data.prefetch_to_mesh(
            run.ds.train_batches(epoch, run.batch_size, c.seed, start_step=first),
            run.batch_sharding)

        def call(batch):
            return b.train_step(run.state, b.teacher_state, batch, lr, epoch_arr)
    else:
        last = min(run.steps_per_epoch, run.total_steps - (epoch - 1) * run.steps_per_epoch)
        inputs = data.prefetch_to_mesh(
            on_device.dispatches(run.ds, epoch, run.batch_size, c.seed, first, last,
                                 run.steps_per_dispatch), on_device.draws_sharding(b.mesh))

        def call(draws):
            return b.multi_train_step(run.state, b.teacher_state, run.device_train, draws, lr,
                                      epoch_arr)
    try:
        for item in inputs:
            k = 1 if run.device_train is None else item.shape[0]
            compiles = run.clock.compiled and k not in run.compiled_k
            if compiles:   # a new call length: keep its compilation out of training time
                jax.block_until_ready(run.pending)
                run.clock.pause()
            run.state, metrics = call(item)
            run.compiled_k.add(k)
            run.step += k
            run.pending.append(metrics)
            run.clock.after_step(metrics, k * run.batch_size, run.step, compiles)
            due = _actions_due(run, stops.requested(stop, _sync_point(run, k)), k)
            _run_actions(run, due)
            if due.stop:
                return True
    finally:
        inputs.close()   # stops the prefetch thread, also when a step raised
    return False


def _train_loop(run: _Run, stop: stops.StopSignal) -> int:
    """Trains until the end or a stop signal; the signal's number if stopped by one, else 0."""
    run.pending_t0 = time.perf_counter()
    stop.check()
    stop.immediate = False
    try:
        while run.step < run.total_steps:
            if _train_epoch(run, stop):
                break
        run.ckpt.wait()
    finally:
        stop.immediate = True
    return stop.signum if run.step < run.total_steps else 0


# --- finish ----------------------------------------------------------------------------------

def _save_model(run: _Run, student: _Student, dirname: str, evaluation: dict) -> None:
    """The student's current weights as a teacher-loadable <out_dir>/<dirname>, with the
    accuracy of `evaluation` ({"epoch", "step", "top1", "top5"}: an evaluation of THESE
    weights) in its teacher.json. Written to <dirname>.tmp, then renamed into place (process
    0), so a kill never leaves a half-written model under the final name."""
    s = run.state.students[student.plan.name]
    model = nnx.merge(student.graphdef, jax.device_get(s.params["model"]),
                      jax.device_get(s.model_state))
    model.eval()
    path = os.path.join(student.out_dir, dirname)
    # Every process: the orbax save synchronises them all (process 0 writes).
    convert.save_converted(model, path + ".tmp", {
        "arch": run.config.student.arch, "num_classes": run.ds.info.num_classes,
        "weights": dirname, **{k: evaluation[k] for k in ("epoch", "step", "top1", "top5")},
        "source": "kd_jax.train"}, overwrite=True)
    if jax.process_index() == 0:
        shutil.rmtree(path + ".old", ignore_errors=True)
        if os.path.exists(path):
            os.rename(path, path + ".old")
        os.rename(path + ".tmp", path)
        shutil.rmtree(path + ".old", ignore_errors=True)


def _export(run: _Run, student: _Student) -> None:
    """final_model/: the last step's weights with the last evaluation's accuracy (the run
    evaluates after its last step)."""
    _save_model(run, student, FINAL_MODEL_DIR, student.history[-1])


def _model_records(student: _Student) -> dict:
    """{"final_model": ..., "best_model": ...}: each exported model's teacher.json record
    (epoch, step, top1, top5 of its own weights) and path, or None where it is absent."""
    records = {}
    for dirname in (FINAL_MODEL_DIR, BEST_MODEL_DIR):
        path = os.path.join(student.out_dir, dirname)
        meta = summary_lib.read_json(os.path.join(path, "teacher.json"))
        records[dirname] = None if meta is None else {
            "path": path, **{k: meta.get(k) for k in ("epoch", "step", "top1", "top5")}}
    return records


def _export_dirs(run: _Run) -> list[str]:
    """Every export directory a finished run must hold (all students)."""
    if not run.config.export_model:
        return []
    return [os.path.join(s.out_dir, d) for s in run.students.values() for d in EXPORT_DIRS]


def _export_all(run: _Run, summaries: dict) -> None:
    """Exports every student; a failed write (disk full, permission) is one StorageError line."""
    _check_finite(run)
    if not run.config.export_model:
        return
    if jax.process_index() == 0:
        for path in _export_dirs(run):
            exports.clear_partial(path)
    for name, s in run.students.items():
        try:
            # Every process: the orbax save synchronises them all (process 0 writes).
            _export(run, s)
            summaries[name].update(_model_records(s))
        except Exception as e:  # noqa: BLE001  an OS cause becomes one line, others re-raise
            where = os.path.normpath(os.path.join(s.out_dir, FINAL_MODEL_DIR))
            raise_if_storage(e, f"could not export the model to {where}", run.step,
                             run.ckpt.directory)
            raise


def _summaries(run: _Run, segments: list, images_seen: int) -> dict:
    finished = run.step >= run.total_steps
    return {name: summary_lib.make_summary(run.config, s.plan, s.history, steps=run.step,
                                           segments=segments, images_seen=images_seen,
                                           finished=finished)
            for name, s in run.students.items()}


def _report(run: _Run, summaries: dict) -> dict:
    """Writes (process 0) and prints the summaries; returns the run's summary."""
    if run.plan.lockstep:
        result = {"lockstep": True, "students": summaries, "seed": run.config.seed,
                  "finished": run.step >= run.total_steps}
        table = summary_lib.format_lockstep_table(summaries)
    else:
        (result,) = summaries.values()
        table = summary_lib.format_table(result)
    if jax.process_index() == 0:
        for name, s in run.students.items():
            if run.plan.lockstep:
                summary_lib.write_json(os.path.join(s.out_dir, summary_lib.SUMMARY_FILE),
                                       summaries[name])
        summary_lib.write_json(os.path.join(run.workdir, summary_lib.SUMMARY_FILE), result)
        print(table, flush=True)
    return result


def _finish(run: _Run) -> dict:
    segments = _segments(run)
    images_seen = run.images_seen + run.clock.images
    summaries = _summaries(run, segments, images_seen)
    if run.step >= run.total_steps:
        _export_all(run, summaries)
    return _report(run, summaries)


def _report_finished(run: _Run) -> dict:
    """A finished run: nothing to train; prints (and returns) its saved summary."""
    try:
        saved = summary_lib.read_json(os.path.join(run.workdir, summary_lib.SUMMARY_FILE))
    except summary_lib.BrokenJSONError as e:   # rebuilt below from the checkpoint's metadata
        print(f"kd_jax: note: {e}; rewriting it", file=sys.stderr, flush=True)
        saved = None
    missing = exports.missing(_export_dirs(run))
    if missing:
        # Killed (or out of disk) after the last checkpoint: the export is part of finishing.
        print(f"{run.workdir} holds a finished run (step {run.step} of {run.total_steps}) "
              f"whose export is missing or partial ({', '.join(missing)}); exporting it again "
              f"from checkpoint step {run.step}", flush=True)
        summaries = _summaries(run, run.segments, run.images_seen)
        _export_all(run, summaries)
        return _report(run, summaries)
    print(f"{run.workdir} holds a finished run (step {run.step} of {run.total_steps}); "
          "nothing to do. Its summary:", flush=True)
    if saved is None or not saved.get("finished"):
        # Stopped after the last checkpoint and before its summary: rebuild it from the
        # checkpoint's metadata (the times of the segments that were saved).
        return _report(run, _summaries(run, run.segments, run.images_seen))
    print(summary_lib.format_lockstep_table(saved["students"]) if saved.get("lockstep")
          else summary_lib.format_table(saved), flush=True)
    return saved


# --- entry points ----------------------------------------------------------------------------

def train(config, workdir: str) -> tuple[dict, Any]:
    """Trains the config's student(s) in `workdir`, resuming from its latest checkpoint.

    Returns (summary, final TrainState); the summary is also written to
    workdir/summary.json (lockstep: {"lockstep": True, "students": {name: summary}}, and
    each student's in workdir/<name>/summary.json). Raises RunStopped (after saving the step
    and writing the unfinished summary) when SIGTERM or SIGINT stopped it.
    """
    with stops.stop_signals() as stop, workdir_lock.hold(workdir):
        return _train(config, workdir, stop)


def _train(config, workdir: str, stop: stops.StopSignal) -> tuple[dict, Any]:
    t0 = time.perf_counter()
    plan = config_validation.validate(config)
    ds = data.get_dataset(config.dataset, process_index=jax.process_index(),
                          process_count=jax.process_count())
    workdir = os.path.abspath(workdir)
    run = _setup(config, plan, ds, workdir)
    run.clock = _Clock(run.step, t0)
    try:
        if run.step >= run.total_steps:
            return _report_finished(run), run.state
        _open_logs(run)
        _save_config(run)
        run.message(_header(run) if run.step == 0 else
                    f"resuming from step {run.step} of {run.total_steps} "
                    f"(epoch {run.step // run.steps_per_epoch + 1}) "
                    f"in {run.ckpt.directory}")
        stopped_by = _train_loop(run, stop)
    finally:
        run.close()
    summary = _finish(run)
    if stopped_by:
        raise RunStopped(stopped_by, f"saved step {run.step} of {run.total_steps} in {workdir}",
                         summary)
    return summary, run.state


def train_and_evaluate(config, workdir: str) -> dict:
    """train(), returning only the summary."""
    return train(config, workdir)[0]
