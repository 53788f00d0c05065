"""Checks a config before anything is built, and returns the plan of the run it describes.

Every error names the config key and the allowed values. `validate` checks each student's
method block (`MethodSpec.check`, and `check_models` against the pair's models) without
building anything, so a bad hyperparameter fails before any data is read or anything
compiles; the trainer builds each loss from the returned `RunPlan`
(`plan.spec.build(plan.hparams)`).

A config trains one student (`config.method`), or several in lockstep (`config.students`:
name -> {method: {...}, init_seed_offset, clip_grad_norm}), as
kd_jax.recipes.build_lockstep_config writes them (kd_jax/configs/cifar_lockstep.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Iterator, Mapping

import jax

from kd_jax import methods, models, teachers
from kd_jax.convert.converted import META_FILE, read_meta
from kd_jax.convert.mapping import ConversionError
from kd_jax.data import catalog

RANDOM_TEACHER = "random"   # teacher.checkpoint value for smoke tests and benchmarks only.
SOLO = "student"            # the name of the only student of a solo run
COMPUTE_DTYPES = ("float32", "bfloat16")
TORCH_SUFFIXES = (".pth", ".pt", ".tar")   # a checkpoint file torch.load reads (else a directory)


class ConfigError(ValueError):
    """A bad or contradictory config value."""


@dataclasses.dataclass(frozen=True)
class StudentPlan:
    """One student of a run: its method and checked hyperparameters."""

    name: str                      # SOLO, or the lockstep entry name
    spec: methods.MethodSpec
    hparams: Mapping[str, Any]     # the config's method block without "name"
    init_seed: int                 # nnx.Rngs seed of the student's initialisation
    subdir: str                    # its outputs: <workdir>/<subdir> ("" for a solo run)
    clip_grad_norm: float = 0.0    # torch clip_grad_norm_'s max_norm on its gradient; 0: off

    @property
    def method_key(self) -> str:
        return self.spec.method_key(self.hparams)

    @property
    def label(self) -> str:
        return self.spec.label(self.hparams)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    students: tuple[StudentPlan, ...]

    @property
    def needs_teacher(self) -> bool:
        return any(s.spec.needs_teacher for s in self.students)

    @property
    def lockstep(self) -> bool:
        return bool(self.students) and self.students[0].name != SOLO


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _get(config, key: str):
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def _int(config, key: str, allow_zero: bool = False) -> None:
    value = _get(config, key)
    ok = isinstance(value, int) and not isinstance(value, bool) and (
        value >= 0 if allow_zero else value > 0)
    _require(ok, f"{key}={value!r}: expected an integer {'>= 0' if allow_zero else '> 0'}")


def _non_finite(value, key: str):
    """(key, value) of the first NaN or inf float in a config value (nested groups, tuples)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (key, value)
    if hasattr(value, "keys"):
        for k in value.keys():
            found = _non_finite(value[k], f"{key}.{k}" if key else k)
            if found:
                return found
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            found = _non_finite(v, f"{key}[{i}]")
            if found:
                return found
    return None


def _check_finite(config) -> None:
    """No key anywhere in the config holds NaN or inf (an inf lr or temperature would train
    to NaN weights; an inf loss weight ends in a non-finite loss at the first step)."""
    found = _non_finite(config, "")
    if found:
        raise ConfigError(f"{found[0]}={found[1]!r}: expected a finite number")


def _archs(config) -> Iterator[tuple[str, str]]:
    """(key, arch) for student.arch and teacher.arch, those that are set."""
    for key in ("student.arch", "teacher.arch"):
        arch = _get(config, key)
        if arch:
            yield key, arch


def _check_image_size(config, image_size: int) -> None:
    """Images (synthetic, or the user's own) must be at least as large as the models' total
    stride: below it, every later stage sees only padding (image_size=1 would 'train')."""
    from kd_jax.models.shapes import pre_pool_shape
    for key, arch in _archs(config):
        nominal = 32 if models.family_of(arch) == "cifar" else 224   # their design sizes
        stride = max(nominal // pre_pool_shape(arch, 10, nominal)[0], 1)
        _require(image_size >= stride,
                 f"dataset.image_size={image_size}: smaller than the {stride}x downsampling "
                 f"of {key}={arch!r}; use at least {stride}")


def _check_synthetic_size(config) -> None:
    d = config.dataset
    _int(config, "dataset.image_size")
    _int(config, "dataset.num_classes")
    _require(d.num_classes >= 2, f"dataset.num_classes={d.num_classes}: expected >= 2")
    _check_image_size(config, d.image_size)


def load_model_file(config) -> None:
    """Imports config.model_file (a user's Python file registering models with
    kd_jax.models.register), once per process, so that its models can be named."""
    path = config.get("model_file", "") or ""
    if not path:
        return
    try:
        models.import_model_file(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model_file={path!r}: {e}") from None


def parse_seeds(seeds: str) -> list[int]:
    """config.seeds "0,1,2" -> [0, 1, 2] ("" -> [])."""
    if not str(seeds).strip():
        return []
    try:
        values = [int(s) for s in str(seeds).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(
            f"seeds={seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    _require(all(v >= 0 for v in values) and len(set(values)) == len(values),
             f"seeds={seeds!r}: expected distinct non-negative integers")
    return values


def _clip(value, key: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    _require(ok, f"{key}={value!r}: expected a number >= 0 (the max global gradient norm, "
                 "as torch's clip_grad_norm_; 0 = no clip)")
    return float(value)


def _method_error(name: str, error: ValueError) -> ConfigError:
    """A method's ValueError (which names `method.<key>`), prefixed with the lockstep entry."""
    return ConfigError(str(error) if name == SOLO else f"students.{name}.method: {error}")


def _student(name: str, method_config, init_seed: int, subdir: str,
             clip_grad_norm: float = 0.0) -> StudentPlan:
    block = method_config.to_dict()
    method_name = block.pop("name", None)
    try:
        spec = methods.get(method_name)
        spec.check(block)
    except ValueError as e:
        raise _method_error(name, e) from None
    return StudentPlan(name, spec, block, init_seed, subdir, clip_grad_norm)


def _students(config) -> tuple[StudentPlan, ...]:
    entries = config.get("students")
    if not entries:
        _require("method" in config, "the config has neither `method` nor `students`")
        clip = _clip(config.optimizer.get("clip_grad_norm", 0.0), "optimizer.clip_grad_norm")
        return (_student(SOLO, config.method, config.seed, "", clip),)
    plans = []
    for name, entry in entries.items():
        _require(re.fullmatch(r"[A-Za-z0-9_.@-]+", name) is not None and name != SOLO,
                 f"students.{name}: a student name must be letters, digits, '_', '-', '.', '@'")
        offset = entry.get("init_seed_offset", 0)
        _require(isinstance(offset, int) and offset >= 0,
                 f"students.{name}.init_seed_offset={offset!r}: expected an integer >= 0")
        # Each lockstep student clips as its method's reference trainer does; the optimizer
        # block's value is the default for entries without their own.
        clip = _clip(entry.get("clip_grad_norm", config.optimizer.get("clip_grad_norm", 0.0)),
                     f"students.{name}.clip_grad_norm")
        plans.append(_student(name, entry.method, config.seed + offset, name, clip))
    return tuple(plans)


def _resolve_published(value: str, key: str, arch: str) -> str:
    """`value`, or for 'published' the directory of the installed published teacher `arch`;
    ConfigError naming `key` and the fetch command when it is not installed."""
    if value != teachers.PUBLISHED:
        return value
    try:
        return teachers.published_path(arch)
    except FileNotFoundError as e:
        raise ConfigError(f"{key}={value!r}: {e}") from None


def teacher_checkpoint(config) -> str:
    """config.teacher.checkpoint with 'published' resolved to the installed teacher's directory."""
    return _resolve_published(config.teacher.checkpoint, "teacher.checkpoint",
                              config.teacher.arch)


def init_from_path(config) -> str:
    """config.student.init_from with 'published' resolved to the installed published teacher
    of student.arch (e.g. torchvision's imagenet_ResNet34 weights, to fine-tune on own data)."""
    return _resolve_published(config.student.get("init_from") or "", "student.init_from",
                              config.student.arch)


def _check_init_from(config, num_classes: int) -> None:
    """student.init_from: a converted directory of student.arch with num_classes, or a .pth
    (own data: any class count, the head is made anew)."""
    path = init_from_path(config)
    if not path:
        return
    key, arch = f"student.init_from={path!r}", config.student.arch
    _require(os.path.exists(path), f"{key}: no such file or directory")
    if not os.path.isdir(path):
        _require(path.endswith(TORCH_SUFFIXES),
                 f"{key}: expected a final_model / best_model / converted directory or a .pth")
        return
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        inside = [d for d in ("final_model", "best_model") if os.path.isdir(os.path.join(path, d))]
        _require(False, f"{key}: no {META_FILE} in it" + (
            f"; it is a run directory: use {os.path.join(path, inside[0])}" if inside else
            " (expected a final_model / best_model / converted directory)"))
    try:
        meta = read_meta(path)
    except ConversionError as e:
        raise ConfigError(f"{key}: {e}") from None
    if catalog.is_own(config.dataset.name):   # fine-tuning: another head is made anew
        _require(meta.get("arch") == arch,
                 f"{key} holds a {meta.get('arch')}, but student.arch={arch!r}: the "
                 "architectures must match")
        return
    _require(meta.get("arch") == arch and meta.get("num_classes") == num_classes,
             f"{key} holds a {meta.get('arch')} with {meta.get('num_classes')} classes, but "
             f"student.arch={arch!r} with {num_classes} classes: architecture and classes "
             "must match")


def _check_dataset(config) -> None:
    """dataset.name and its sizes (>= 0; > 0 for synthetic data), with every number of the
    config checked finite in between: a NaN size reads as a bad integer, and a NaN lr is
    reported before a synthetic split of size 0. Own data: its keys (kd_jax.data.own)."""
    d = config.dataset
    _require(d.name in catalog.DATASETS or catalog.is_own(d.name),
             f"dataset.name={d.name!r}; allowed: {catalog.allowed_names()}")
    for key in ("num_train", "num_test", "limit_train", "limit_test"):
        _int(config, f"dataset.{key}", allow_zero=True)
    if "input_threads" in d:
        _int(config, "dataset.input_threads", allow_zero=True)
    _check_finite(config)
    if d.name == catalog.SYNTHETIC:
        _require(d.num_train > 0 and d.num_test > 0,
                 "dataset.name='synthetic' needs dataset.num_train > 0 and dataset.num_test > 0")
    if catalog.is_own(d.name):
        from kd_jax.data import own
        _int(config, "dataset.image_size", allow_zero=True)
        try:
            own.settings(d)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _check_run_options(config) -> None:
    """The seeds, the step budget and the numerics options."""
    for key in ("seed", "total_steps", "eval_batch_size"):
        _int(config, key, allow_zero=True)
    parse_seeds(config.get("seeds", ""))
    _require(config.get("compute_dtype", "float32") in COMPUTE_DTYPES,
             f"compute_dtype={config.get('compute_dtype')!r}; allowed: {', '.join(COMPUTE_DTYPES)}")
    _require(config.get("cpu_conv", "auto") in models.CPU_CONV_CHOICES,
             f"cpu_conv={config.get('cpu_conv')!r}; allowed: {', '.join(models.CPU_CONV_CHOICES)}")


def _check_arch(key: str, arch: str) -> None:
    """`arch`, the value of `key` (student.arch or teacher.arch), is a registered model."""
    names = models.names()
    _require(arch in names, f"{key}={arch!r}; allowed: {', '.join(names)}")


def _teacher_users(plan: RunPlan) -> str:
    """The students that need a teacher, as the config names them."""
    return ", ".join(
        f"method.name={s.spec.name!r}" if s.name == SOLO else f"students.{s.name} ({s.label})"
        for s in plan.students if s.spec.needs_teacher)


def _check_teacher(config, plan: RunPlan, check_files: bool) -> None:
    """A run that distils names its teacher; a solo run without one leaves teacher.arch and
    teacher.checkpoint empty."""
    ckpt = config.teacher.checkpoint
    if plan.needs_teacher:
        needing = _teacher_users(plan)
        _check_arch("teacher.arch", config.teacher.arch)
        _require(bool(ckpt),
                 f"{needing} needs teacher.checkpoint (a .pth file, a converted orbax "
                 f"directory or {teachers.PUBLISHED!r}; {RANDOM_TEACHER!r} for smoke tests only)")
        if check_files:
            _check_teacher_file(config)
    elif not plan.lockstep:   # a lockstep run of CE students simply leaves its teacher unused
        _require(not ckpt and not config.teacher.arch,
                 f"method.name={plan.students[0].spec.name!r} trains without a teacher, but "
                 f"teacher.arch="
                 f"{config.teacher.arch!r} / teacher.checkpoint={ckpt!r} are set; clear them")


def _check_teacher_file(config) -> None:
    """teacher.checkpoint: the published teacher installed, or a .pth / converted directory."""
    ckpt = config.teacher.checkpoint
    if ckpt == teachers.PUBLISHED:
        teacher_checkpoint(config)
    elif ckpt != RANDOM_TEACHER:
        _require(os.path.exists(ckpt), f"teacher.checkpoint={ckpt!r}: no such file or directory")
        _require(os.path.isdir(ckpt) or ckpt.endswith(TORCH_SUFFIXES),
                 f"teacher.checkpoint={ckpt!r}: expected a .pth file or a converted orbax "
                 "directory")


def _check_model_family(config) -> None:
    """The input size must fit the model family: ImageNet models for imagenet2012, the
    224-input CUB variants for caltech_birds2011, CIFAR-size models otherwise; any model
    whose downsampling fits the image size on the user's own data."""
    name = config.dataset.name
    family = catalog.facts(name).model_family
    if not family:
        if config.dataset.image_size:   # 0: the images' own size, checked once read
            _check_image_size(config, config.dataset.image_size)
        return
    for key, arch in _archs(config):
        _require(models.family_of(arch) == family,
                 f"{key}={arch!r} does not fit dataset.name={name!r}: use a "
                 f"{family} model" + {"cifar": " (no imagenet_/cub_ prefix)",
                                      "imagenet": " (imagenet_*)", "cub": " (cub_*)"}[family])


def _check_pair_models(config, plan: RunPlan, image_size: int | None = None) -> None:
    """Each student's method accepts the (student, teacher) pair (`MethodSpec.check_models`)
    on images of `image_size` (None: the config's)."""
    if image_size is None:
        image_size = (config.dataset.image_size if catalog.is_own(config.dataset.name)
                      else catalog.facts(config.dataset.name).image_size)
    if not image_size:   # own data at the images' own size: checked once read (check_data)
        return
    for s in plan.students:
        if s.spec.check_models is not None and config.teacher.arch:
            try:
                s.spec.check_models(s.hparams, config.student.arch, config.teacher.arch,
                                    image_size)
            except ValueError as e:
                raise _method_error(s.name, e) from None


def _check_optimizer(o) -> None:
    """The optimizer block: schedule, lr, decay_rate, weight_decay, momentum, milestones."""
    _require(o.schedule in ("multistep", "cosine"),
             f"optimizer.schedule={o.schedule!r}; allowed: multistep, cosine")
    _require(o.lr > 0, f"optimizer.lr={o.lr!r}: expected > 0")
    _require(0 < o.get("decay_rate", 0.1) <= 1,
             f"optimizer.decay_rate={o.get('decay_rate')!r}: expected in (0, 1] (the lr "
             "factor at each milestone)")
    _require(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay!r}: expected >= 0")
    _require(0 <= o.momentum < 1, f"optimizer.momentum={o.momentum!r}: expected in [0, 1)")
    ms = list(o.milestones)
    _require(all(isinstance(m, int) and m > 0 for m in ms) and ms == sorted(set(ms)),
             f"optimizer.milestones={o.milestones!r}: expected strictly increasing positive epochs")


def _check_loop(config) -> None:
    """The loop's sizes and periods: positive integers (steps_per_dispatch 0: automatic;
    the checkpoint intervals >= 0, None: by platform)."""
    for key in ("batch_size", "num_epochs", "log_every_steps", "eval_every_epochs",
                "keep_checkpoints"):
        _int(config, key)
    if "steps_per_dispatch" in config:
        _int(config, "steps_per_dispatch", allow_zero=True)
    if config.get("checkpoint_every_epochs") is not None:
        _int(config, "checkpoint_every_epochs", allow_zero=True)
    minutes = config.get("checkpoint_every_minutes")
    _require(minutes is None or (isinstance(minutes, (int, float))
                                 and not isinstance(minutes, bool) and minutes >= 0),
             f"checkpoint_every_minutes={minutes!r}: expected a number >= 0 (0: none by time; "
             "None: by platform)")


def _check_placement(config, num_devices: int | None) -> None:
    """dataset.on_device fits the dataset; the batches split evenly over the devices."""
    d = config.dataset
    on_device = d.get("on_device", None)
    _require(on_device is None or isinstance(on_device, bool),
             f"dataset.on_device={on_device!r}: expected True, False or None (auto: the train "
             "set goes on the devices when it is held in memory and fits the budget)")
    _require(not on_device or d.name in (catalog.CIFAR100, catalog.FASHION_MNIST,
                                         catalog.SYNTHETIC) or catalog.is_own(d.name),
             f"dataset.on_device=True: {d.name} is read through tf.data, not held in memory; "
             "set dataset.on_device=False")
    n = jax.device_count() if num_devices is None else num_devices
    for key in ("batch_size", "eval_batch_size"):
        value = config[key]
        _require(value % n == 0,
                 f"{key}={value} must be divisible by the number of devices ({n})")


def check_data(config, plan: RunPlan, info) -> None:
    """The checks that need the dataset read (own data: classes and image size come from
    it): dataset.num_classes if set, the models' downsampling and each method's pair check
    at the real image size, student.init_from. `info`: its kd_jax.data.DatasetInfo."""
    d = config.dataset
    if not catalog.is_own(d.name):
        return
    where = d.get("data_dir") or d.name
    _require(info.num_classes >= 2,
             f"dataset.data_dir={where!r} holds {info.num_classes} class: expected >= 2")
    _require(not d.num_classes or d.num_classes == info.num_classes,
             f"dataset.num_classes={d.num_classes}, but {where} has {info.num_classes} "
             "classes: leave it 0 (read from the data)")
    if not d.image_size:
        size = min(info.image_shape[:2])
        _check_image_size(config, size)
        _check_pair_models(config, plan, size)
    _check_init_from(config, info.num_classes)


def validate(config, *, num_devices: int | None = None, check_files: bool = True) -> RunPlan:
    """Raises ConfigError on unknown or contradictory settings; returns the run's plan.

    The checks run in this order, so a config with several mistakes reports the same first
    one every time."""
    _check_dataset(config)
    _check_run_options(config)
    load_model_file(config)
    _check_arch("student.arch", config.student.arch)
    plan = RunPlan(_students(config))
    _check_teacher(config, plan, check_files)
    _check_model_family(config)
    _check_pair_models(config, plan)
    if check_files and not catalog.is_own(config.dataset.name):   # own: once read
        _check_init_from(config, config.dataset.num_classes)
    _check_optimizer(config.optimizer)
    _check_loop(config)
    _check_placement(config, num_devices)
    if config.dataset.name == catalog.SYNTHETIC:
        _check_synthetic_size(config)
    return plan
