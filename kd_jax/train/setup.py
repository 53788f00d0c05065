"""Setup of a run: the models, the jitted steps, the input path and the restored loop state.

    s, loop = setup(config, plan, ds, workdir)   # Setup (immutable), resume.LoopState

`build` (the teacher, the students with their losses and optimizers, the jitted steps) is
also what benchmarks/ time, so that both time the same step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import convert, data, methods, models
from kd_jax.data import catalog, device_test_set, on_device
from kd_jax.train import config_validation, finite, inputs, platform_defaults, resume
from kd_jax.train.actions import Schedule
from kd_jax.train.checkpoint import Checkpointer
from kd_jax.train.config_validation import ConfigError, RunPlan, StudentPlan
from kd_jax.train.state import init_state, init_student, make_optimizer, split_student
from kd_jax.train.step import (StepStudent, make_eval_step, make_mesh, make_multi_train_step,
                               make_train_step)

MODEL_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_dtype(config) -> Any:
    """The dtype the teacher and the students compute in (config.compute_dtype)."""
    return MODEL_DTYPES[config.get("compute_dtype", "float32")]


def load_teacher(config, num_classes: int) -> nnx.Module:
    """The teacher in eval mode: 'random' init, a .pth file or a converted directory."""
    path = config_validation.teacher_checkpoint(config)   # 'published' -> its directory
    dtype = model_dtype(config)
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


def with_new_head(loaded: nnx.Module, fresh: nnx.Module) -> nnx.Module:
    """`fresh` holding every variable of `loaded` (same architecture) but its head's: the
    weights and BatchNorm statistics of a model trained on other classes (ImageNet), with
    `fresh`'s own initialised final linear layer (kernel (C, K), bias (K,))."""
    head = {id(fresh.head.kernel), id(fresh.head.bias)}
    source = dict(nnx.to_flat_state(nnx.state(loaded)))
    for path, variable in nnx.to_flat_state(nnx.state(fresh)):
        if id(variable) in head:
            continue
        if path not in source or source[path].shape != variable.shape:
            raise ValueError(f"{'.'.join(map(str, path))}: {variable.shape} in the model, "
                             f"{getattr(source.get(path), 'shape', 'absent')} in the checkpoint")
        variable.set_value(source[path][...])
    return fresh


def init_from(config, num_classes: int, seed: int = 0) -> nnx.Module:
    """The student built from config.student.init_from (a converted directory or a .pth).

    On own data a converted directory of the same arch with other classes (e.g. torchvision's
    ImageNet weights: `python -m kd_jax.teachers fetch imagenet_ResNet34`, then
    init_from='published') gives everything but the head, initialised from `seed`."""
    path, arch = config_validation.init_from_path(config), config.student.arch
    dtype = model_dtype(config)
    try:
        source_classes = (convert.read_meta(path).get("num_classes")
                          if convert.is_converted_dir(path) else num_classes)
        if source_classes == num_classes or not catalog.is_own(config.dataset.name):
            return convert.load_teacher(path, arch, num_classes, dtype=dtype)
        loaded = convert.load_teacher(path, arch, int(source_classes), dtype=dtype)
        model = with_new_head(loaded, models.create(arch, num_classes, dtype=dtype,
                                                    rngs=nnx.Rngs(seed)))
        print(f"kd_jax: note: student.init_from={path!r}: a {arch} with {source_classes} "
              f"classes; its weights start the student, with a new {num_classes}-class head",
              flush=True)
        return model
    except Exception as e:   # name the config key whatever the converter raised
        raise ConfigError(f"student.init_from={path!r} could not be loaded as a "
                          f"{config.student.arch} with {num_classes} classes: {e}") from e


@dataclasses.dataclass(frozen=True)
class Student:
    """One student of a run: its plan, its loss, its model's graph and its output directory."""

    plan: StudentPlan
    compute_loss: methods.LossFn   # plan.spec.build(plan.hparams)
    graphdef: Any
    eval_graphdef: Any
    out_dir: str


@dataclasses.dataclass(frozen=True)
class Built:
    """The models, the initial state and the jitted steps of a run (no data, no files)."""

    mesh: Any
    students: dict          # name -> Student
    teacher_state: Any      # replicated teacher variables, or None
    state: Any              # the initial TrainState, replicated
    train_step: Any         # jit(state, teacher_state, batch, lr, epoch) -> (state, metrics)
    eval_step: Any          # jit({name: (params, model_state)}, batch) -> {name: sums}
    # jit(state, teacher_state, device train set, draws (k, B, 4), live, lr, epoch)
    #   -> (state, metrics stacked (k,)): k steps per call on the on-device path.
    multi_train_step: Any = None
    # jit({name: (params, model_state)}, device test set, i) -> {name: sums} of batch i.
    device_eval_step: Any = None


def _build_students(config, plan: RunPlan, num_classes: int, teacher, txs: dict, workdir: str):
    """(runtime students, initial StudentStates) of the plan."""
    students, states = {}, {}
    teacher_head = None if teacher is None else tuple(teacher.head.kernel.shape)
    for p in plan.students:
        if config.student.get("init_from"):   # weights and BN statistics of another run
            model = init_from(config, num_classes, p.init_seed)
        else:
            model = models.create(config.student.arch, num_classes, dtype=model_dtype(config),
                                  rngs=nnx.Rngs(p.init_seed))
        graphdef, eval_graphdef, params, model_state = split_student(model)
        extra = None
        if p.spec.init_extra is not None:
            shapes = methods.HeadShapes(tuple(model.head.kernel.shape), teacher_head)
            extra = p.spec.init_extra(jax.random.PRNGKey(p.init_seed + 2), shapes, p.hparams)
        students[p.name] = Student(p, p.spec.build(p.hparams), graphdef, eval_graphdef,
                                   os.path.join(workdir, p.subdir))
        states[p.name] = init_student(params, model_state, txs[p.name], extra)
    return students, states


def build(config, plan: RunPlan, num_classes: int, workdir: str = "", devices=None,
          prepare_batch: Callable | None = None) -> Built:
    """Builds the teacher (if any student needs one), the students and the steps of `plan`.

    Used by the trainer and by benchmarks/, so that both time the same step. `devices`: the
    mesh's devices (default: all of them; benchmarks time subsets). `prepare_batch`: the
    host path's batch finished in the step (on_device.host_batch_finisher of the dataset).
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
    dtype = model_dtype(config)
    step_students = {n: StepStudent(s.graphdef, s.compute_loss, txs[n])
                     for n, s in students.items()}
    train_step = make_train_step(step_students, teacher_graphdef, None, mesh, dtype,
                                 prepare=prepare_batch)
    # Unrolled on CPU, where a step in XLA's rolled loop ran several times slower
    # (kd_jax.train.step).
    multi_train_step = make_multi_train_step(
        step_students, teacher_graphdef, None, mesh, on_device.train_batch, dtype,
        unroll=mesh.devices.flat[0].platform == "cpu")
    eval_graphdefs = {n: s.eval_graphdef for n, s in students.items()}
    eval_step = make_eval_step(eval_graphdefs, mesh, dtype)
    device_eval_step = make_eval_step(eval_graphdefs, mesh, dtype, device_test_set.eval_batch)
    state = jax.device_put(init_state(states, config.seed), replicated)
    return Built(mesh, students, teacher_state, state, train_step, eval_step, multi_train_step,
                 device_eval_step)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run holds fixed while it trains (the loop state is resume.LoopState)."""

    config: Any
    plan: RunPlan
    workdir: str                # absolute
    ds: Any                     # the dataset (kd_jax.data)
    built: Built
    schedule: Schedule          # steps per epoch, total steps, action intervals
    batch_size: int             # global
    eval_batch_size: int
    batch_sharding: Any         # a host batch's sharding over the mesh ('data')
    ckpt: Checkpointer
    device_train: Any           # on_device.DeviceTrainSet, or None: the host path
    device_test: Any            # device_test_set.DeviceTestSet (with device_train), or None
    steps_per_dispatch: int     # steps per call on the on-device path (1 on the host path)
    # (state, batch or draws (k, B, 4), steps, lr, epoch) -> (state, metrics): one dispatch
    # of the jitted step, `steps` of it live (the host path: 1; the on-device path: at most
    # k, the draws padded to k; metrics stacked (k,), the first `steps` meaningful).
    dispatch: Callable

    @property
    def students(self) -> dict:
        return self.built.students

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    def eval_sums(self, students: dict) -> list:
        """{name: sums} of every evaluation batch (on the devices), for students {name:
        (params, model_state)}: from the test set on the devices, or from host batches."""
        if self.device_test is not None:
            return [self.built.device_eval_step(students, self.device_test, np.int32(i))
                    for i in range(self.device_test.num_batches)]
        return [self.built.eval_step(students, batch) for batch in data.prefetch_to_mesh(
            self.ds.eval_batches(self.eval_batch_size), self.batch_sharding)]

    def check_finite(self, loop: resume.LoopState) -> None:
        """Before every save and export: no NaN or inf anywhere in the state."""
        finite.check_state(loop.state, step=loop.step, epoch=self.schedule.epoch(loop.step),
                           lockstep=self.plan.lockstep, latest_step=self.ckpt.latest_step(),
                           directory=self.ckpt.directory)


def _train_steps(config, ds) -> tuple[int, int]:
    steps_per_epoch = ds.steps_per_epoch(config.batch_size)
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {ds.info.num_train} "
                          "training images")
    total = config.num_epochs * steps_per_epoch
    return steps_per_epoch, min(total, config.total_steps) if config.total_steps else total


def _eval_batch_size(config, ds, platform: str) -> int:
    """eval_batch_size (0: by platform), at most the test set in one batch (padded to the
    devices): a larger one would only allocate padding (eval_batch_size=1e8: host memory)."""
    return platform_defaults.eval_batch_size(
        config.eval_batch_size, config.batch_size, ds.info.image_shape, platform,
        ds.info.num_test, jax.device_count())


def setup(config, plan: RunPlan, ds, workdir: str) -> tuple[Setup, resume.LoopState]:
    """The run's Setup and its loop state (restored from the latest checkpoint of `workdir`,
    else step 0). The caller closes Setup.ckpt."""
    steps_per_epoch, total_steps = _train_steps(config, ds)
    b = build(config, plan, ds.info.num_classes, workdir,
              prepare_batch=on_device.host_batch_finisher(ds))
    platform = b.mesh.devices.flat[0].platform
    schedule = Schedule(
        steps_per_epoch, total_steps, config.log_every_steps, config.eval_every_epochs,
        platform_defaults.checkpoint_every_epochs(config.get("checkpoint_every_epochs"),
                                                  platform),
        platform_defaults.checkpoint_every_minutes(config.get("checkpoint_every_minutes"),
                                                   platform))
    eval_batch_size = _eval_batch_size(config, ds, platform)
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    try:
        loop = resume.restore(ckpt, b.state, names=list(b.students), batch_size=config.batch_size,
                              steps_per_epoch=steps_per_epoch, workdir=workdir)
        device_train, device_test, steps_per_dispatch = None, None, 1
        if inputs.use_on_device(config, ds, platform):
            device_train = on_device.put_on_mesh(ds, b.mesh)
            device_test = device_test_set.put_on_mesh(ds, b.mesh, eval_batch_size)
            steps_per_dispatch = on_device.steps_per_dispatch(
                int(config.get("steps_per_dispatch", 0)), platform)
    except BaseException:
        ckpt.close()
        raise
    if device_train is None:
        def dispatch(state, batch, steps, lr, epoch):
            del steps   # always 1
            return b.train_step(state, b.teacher_state, batch, lr, epoch)
    else:
        def dispatch(state, draws, steps, lr, epoch):
            return b.multi_train_step(state, b.teacher_state, device_train, draws,
                                      np.int32(steps), lr, epoch)
    s = Setup(config=config, plan=plan, workdir=workdir, ds=ds, built=b, schedule=schedule,
              batch_size=config.batch_size, eval_batch_size=eval_batch_size,
              batch_sharding=NamedSharding(b.mesh, P("data")), ckpt=ckpt,
              device_train=device_train, device_test=device_test,
              steps_per_dispatch=steps_per_dispatch,
              dispatch=dispatch)
    return s, loop
