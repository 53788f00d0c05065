"""The training loop: data -> jitted step -> logs, evaluation, checkpoints, summary.

Resumption: the state (step, parameters, BatchNorm statistics, optimizer state, RNG) is
checkpointed every `checkpoint_every_epochs`, at the end, and on SIGTERM; starting again
with the same workdir restores the latest checkpoint and continues at the same epoch and
step with the same data order (a function of (seed, epoch, step)), so a killed and resumed
run ends with the same parameters as an uninterrupted one.

Non-finite losses: the step returns its metrics as device arrays and the loop keeps them
until the next logging point (every `log_every_steps`, at epoch ends and before every
checkpoint), where they are fetched in one transfer and checked; a NaN/inf loss raises
NonFiniteLossError naming the step and the loss terms. Checking only there avoids one
host sync per step, and because the check runs before each save, a checkpoint never holds
a state that came from a non-finite loss: the last good one stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any, Optional

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax.train import config_validation, methods, schedules
from kd_jax.train import summary as summary_lib
from kd_jax.train.checkpoint import Checkpointer
from kd_jax.train.metric_log import MetricLog
from kd_jax.train.state import init_state, make_optimizer, param_count, split_student
from kd_jax.train.step import make_eval_step, make_mesh, make_train_step

FINAL_MODEL_DIR = "final_model"   # the trained student, loadable as a teacher.


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf."""


def load_teacher(config, num_classes: int) -> nnx.Module:
    """The teacher in eval mode: 'random' init, a .pth file or a converted directory."""
    from kd_jax import convert, models

    path = config.teacher.checkpoint
    if path == config_validation.RANDOM_TEACHER:
        teacher = models.create(config.teacher.arch, num_classes,
                                rngs=nnx.Rngs(config.seed + 1))
    else:
        try:
            teacher = convert.load_teacher(path, config.teacher.arch, num_classes,
                                           allow_pickle=config.teacher.allow_pickle)
        except Exception as e:  # name the config key whatever the converter raised
            raise config_validation.ConfigError(
                f"teacher.checkpoint={path!r} could not be loaded as a {config.teacher.arch} "
                f"with {num_classes} classes: {e}") from e
    teacher.eval()
    return teacher


@contextlib.contextmanager
def _sigterm_flag():
    """Yields a threading.Event set by SIGTERM (only installable from the main thread)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


def _evaluate(eval_step, state, ds, batch_size: int, sharding) -> dict:
    from kd_jax import data

    sums = []
    for batch in data.prefetch_to_mesh(ds.eval_batches(batch_size), sharding):
        sums.append(eval_step(state.params["student"], state.model_state, batch))
    total = jax.tree.map(lambda *x: float(np.sum(x)), *jax.device_get(sums))
    count = max(total["count"], 1.0)
    return {"top1": 100.0 * total["top1"] / count, "top5": 100.0 * total["top5"] / count}


class _Pending:
    """Step metrics kept on device until the next logging point."""

    def __init__(self):
        self.metrics: list = []
        self.first_step = 0
        self.t0 = time.perf_counter()

    def reset(self, step: int) -> None:
        self.metrics, self.first_step, self.t0 = [], step, time.perf_counter()


def _flush(pending: _Pending, log: MetricLog, step: int, epoch: int, batch_size: int,
           ckpt: Checkpointer) -> Optional[dict]:
    """Fetches, checks and logs the pending metrics; returns their mean (None if empty)."""
    if not pending.metrics:
        return None
    host = jax.device_get(pending.metrics)
    for i, m in enumerate(host):
        if not np.isfinite(m["loss"]):
            terms = ", ".join(f"{k}={float(v):.6g}" for k, v in m.items())
            raise NonFiniteLossError(
                f"non-finite loss at step {pending.first_step + i + 1} (epoch {epoch}): {terms}. "
                f"Stopped; the last good checkpoint is step {ckpt.latest_step()} in "
                f"{ckpt.directory}")
    elapsed = time.perf_counter() - pending.t0
    mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    mean["epoch"] = epoch
    mean["images_per_s"] = len(host) * batch_size / max(elapsed, 1e-9)
    log.write(step, "train", mean)
    log.progress(len(host), loss=mean["loss"], img_s=round(mean["images_per_s"], 1),
                 epoch=epoch)
    pending.reset(step)
    return mean


def _export_model(workdir: str, graphdef, state, arch: str, num_classes: int,
                  top1: Optional[float]) -> None:
    from kd_jax import convert

    model = nnx.merge(graphdef, jax.device_get(state.params["student"]),
                      jax.device_get(state.model_state))
    model.eval()
    convert.save_converted(model, os.path.join(workdir, FINAL_MODEL_DIR),
                           {"arch": arch, "num_classes": num_classes, "top1": top1,
                            "source": "kd_jax.train"}, overwrite=True)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains config's student in `workdir` (resuming if it holds a checkpoint).

    Returns the summary dict (also written to workdir/summary.json).
    """
    return train(config, workdir)[0]


def train(config, workdir: str) -> tuple[dict, Any]:
    """train_and_evaluate, also returning the final TrainState (for tests and pipelines)."""
    from kd_jax import data, models

    wall_t0 = time.time()
    config_validation.validate(config)
    method = methods.get_method(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)

    ds = data.get_dataset(config.dataset, process_index=jax.process_index(),
                          process_count=jax.process_count())
    num_classes = ds.info.num_classes
    batch_size = config.batch_size
    eval_batch_size = config.eval_batch_size or batch_size
    steps_per_epoch = ds.steps_per_epoch(batch_size)
    if steps_per_epoch < 1:
        raise config_validation.ConfigError(
            f"batch_size={batch_size} exceeds the {ds.info.num_train} training images")
    total_steps = config.num_epochs * steps_per_epoch
    if config.total_steps:
        total_steps = min(total_steps, config.total_steps)

    mesh = make_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    teacher_graphdef = teacher_state = None
    if method.needs_teacher:
        teacher = load_teacher(config, num_classes)
        teacher_graphdef, teacher_state = nnx.split(teacher)
        teacher_state = jax.device_put(teacher_state, replicated)

    student = models.create(config.student.arch, num_classes, rngs=nnx.Rngs(config.seed))
    graphdef, eval_graphdef, params, model_state = split_student(student)
    tx = make_optimizer(config.optimizer)
    extra = None
    if method.init_extra is not None:
        extra = method.init_extra(jax.random.PRNGKey(config.seed + 2), student, num_classes)
    state = jax.device_put(init_state(params, model_state, tx, config.seed, extra), replicated)

    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    meta = {"history": [], "train_time_s": 0.0, "images_seen": 0}
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        if meta.get("batch_size", batch_size) != batch_size or meta.get(
                "steps_per_epoch", steps_per_epoch) != steps_per_epoch:
            raise config_validation.ConfigError(
                f"{workdir} holds a run with batch_size={meta.get('batch_size')} and "
                f"{meta.get('steps_per_epoch')} steps per epoch; this config gives "
                f"batch_size={batch_size} and {steps_per_epoch}: use another --workdir")
    step = int(jax.device_get(state.step))
    history = list(meta["history"])
    train_time = float(meta["train_time_s"])
    images_seen = int(meta["images_seen"])

    train_step = make_train_step(graphdef, teacher_graphdef, method, tx, mesh)
    eval_step = make_eval_step(eval_graphdef, mesh)
    log = MetricLog(workdir, tensorboard=config.tensorboard, progress_bar=config.progress_bar,
                    total_steps=total_steps, initial_step=step)
    if step == 0:
        log.message(f"{summary_lib.method_label(config)}: {config.teacher.arch or '-'} -> "
                    f"{config.student.arch} ({param_count(params):,} params) on "
                    f"{ds.info.name}, {jax.device_count()} device(s), global batch {batch_size},"
                    f" {steps_per_epoch} steps/epoch (remainder dropped), {total_steps} steps")
    else:
        log.message(f"resuming from step {step} (epoch {step // steps_per_epoch + 1}) in "
                    f"{ckpt.directory}")

    def save(epoch: int) -> None:
        ckpt.save(step, state, {"step": step, "epoch": epoch, "history": history,
                                "train_time_s": train_time, "images_seen": images_seen,
                                "batch_size": batch_size, "steps_per_epoch": steps_per_epoch})

    pending = _Pending()
    t_steady = None
    stopped_by_signal = False
    try:
        with _sigterm_flag() as sigterm:
            while step < total_steps and not stopped_by_signal:
                epoch = step // steps_per_epoch + 1
                lr = np.float32(schedules.learning_rate(config.optimizer, config.num_epochs, epoch))
                epoch_arr = np.int32(epoch)
                batches = data.prefetch_to_mesh(
                    ds.train_batches(epoch, batch_size, config.seed,
                                     start_step=step % steps_per_epoch), batch_sharding)
                pending.reset(step)
                t_epoch = time.perf_counter()
                for batch in batches:
                    state, metrics = train_step(state, teacher_state, batch, lr, epoch_arr)
                    pending.metrics.append(metrics)
                    step += 1
                    if t_steady is None:
                        # The first step of a process includes compilation: time from after it
                        # (one extra sync per process) for the reported images/s.
                        jax.block_until_ready(metrics)
                        t_steady = time.perf_counter()
                    else:
                        images_seen += batch_size
                    end_of_epoch = step % steps_per_epoch == 0
                    if step % config.log_every_steps == 0 or end_of_epoch or step == total_steps:
                        _flush(pending, log, step, epoch, batch_size, ckpt)
                    if step >= total_steps or sigterm.is_set():
                        break
                if hasattr(batches, "close"):
                    batches.close()   # stops the prefetch thread after an early break
                _flush(pending, log, step, epoch, batch_size, ckpt)
                if t_steady is not None:   # steady-state training time (no compile, no eval)
                    train_time += time.perf_counter() - max(t_epoch, t_steady)
                stopped_by_signal = sigterm.is_set()
                end_of_epoch = step % steps_per_epoch == 0
                finished = step >= total_steps
                if (end_of_epoch and epoch % config.eval_every_epochs == 0) or finished:
                    result = _evaluate(eval_step, state, ds, eval_batch_size, batch_sharding)
                    history.append({"epoch": epoch, "step": step, **result})
                    log.write(step, "eval", {"epoch": epoch, **result})
                    log.message(f"epoch {epoch} step {step}: test top-1 {result['top1']:.2f} "
                                f"top-5 {result['top5']:.2f} (lr {float(lr):.4g})")
                if ((end_of_epoch and epoch % config.checkpoint_every_epochs == 0) or finished
                        or stopped_by_signal):
                    save(epoch)
            if stopped_by_signal:
                log.message(f"SIGTERM: saved step {step}; run again with the same --workdir "
                            "to resume")
        ckpt.wait()
        best = max((h["top1"] for h in history), default=None)
        if step >= total_steps and config.export_model:
            _export_model(workdir, graphdef, state, config.student.arch, num_classes, best)
    finally:
        ckpt.close()
        log.close()

    result = summary_lib.make_summary(config, history, steps=step,
                                      wall_time_s=time.time() - wall_t0,
                                      train_time_s=train_time, images_seen=images_seen)
    result["finished"] = step >= total_steps
    if jax.process_index() == 0:
        summary_lib.write_summary(workdir, result)
        print(summary_lib.format_table(result), flush=True)
    return result, state
