"""Checks a config before anything is built: every error names the key and allowed values."""

from __future__ import annotations

import os

import jax

from kd_jax.train import methods, recipes

DATASETS = ("cifar100", "imagenet2012", "caltech_birds2011", "fashion_mnist", "synthetic")
RANDOM_TEACHER = "random"   # teacher.checkpoint value for smoke tests and benchmarks only.


class ConfigError(ValueError):
    """A bad or contradictory config value."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _positive_int(config, key: str, allow_zero: bool = False) -> None:
    value = config
    for part in key.split("."):
        value = value[part]
    ok = isinstance(value, int) and not isinstance(value, bool) and (
        value >= 0 if allow_zero else value > 0)
    _require(ok, f"{key}={value!r}: expected an integer {'>= 0' if allow_zero else '> 0'}")


def validate(config, *, num_devices: int | None = None, check_files: bool = True) -> None:
    """Raises ConfigError on unknown or contradictory settings (before any training)."""
    from kd_jax import models

    d = config.dataset
    _require(d.name in DATASETS, f"dataset.name={d.name!r}; allowed: {', '.join(DATASETS)}")
    for key in ("num_train", "num_test", "limit_train", "limit_test"):
        _positive_int(config, f"dataset.{key}", allow_zero=True)
    if d.name == "synthetic":
        _require(d.num_train > 0 and d.num_test > 0,
                 "dataset.name='synthetic' needs dataset.num_train > 0 and dataset.num_test > 0")

    names = models.names()
    _require(config.student.arch in names,
             f"student.arch={config.student.arch!r}; allowed: {', '.join(names)}")

    _require(config.method.name in recipes.METHODS,
             f"method.name={config.method.name!r}; allowed: {', '.join(recipes.METHODS)}")
    try:
        method = methods.get_method(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ckpt = config.teacher.checkpoint
    if method.needs_teacher:
        _require(config.teacher.arch in names,
                 f"teacher.arch={config.teacher.arch!r}; allowed: {', '.join(names)}")
        _require(bool(ckpt),
                 f"method.name={method.name!r} needs teacher.checkpoint (a .pth file or a "
                 f"converted orbax directory; {RANDOM_TEACHER!r} for smoke tests only)")
        if check_files and ckpt != RANDOM_TEACHER:
            _require(os.path.exists(ckpt), f"teacher.checkpoint={ckpt!r}: no such file or directory")
            _require(os.path.isdir(ckpt) or ckpt.endswith((".pth", ".pt", ".tar")),
                     f"teacher.checkpoint={ckpt!r}: expected a .pth file or a converted orbax "
                     "directory")
    else:
        _require(not ckpt and not config.teacher.arch,
                 f"method.name='ce' trains without a teacher, but teacher.arch="
                 f"{config.teacher.arch!r} / teacher.checkpoint={ckpt!r} are set; clear them")

    # Input size must fit the architecture family: ImageNet models for imagenet2012, the
    # 224-input CUB variants for caltech_birds2011, CIFAR models (32x32) otherwise.
    family = {"imagenet2012": "imagenet_", "caltech_birds2011": "cub_"}.get(d.name, "")
    for key in ("student.arch", "teacher.arch"):
        arch = config[key.split(".")[0]].arch
        if not arch:
            continue
        prefix = next((p for p in ("imagenet_", "cub_") if arch.startswith(p)), "")
        _require(prefix == family,
                 f"{key}={arch!r} does not fit dataset.name={d.name!r}: use "
                 + (f"a {family}* model" if family else "a CIFAR model (no imagenet_/cub_ prefix)"))

    o = config.optimizer
    _require(o.schedule in ("multistep", "cosine"),
             f"optimizer.schedule={o.schedule!r}; allowed: multistep, cosine")
    _require(o.lr > 0, f"optimizer.lr={o.lr!r}: expected > 0")
    _require(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay!r}: expected >= 0")
    _require(0 <= o.momentum < 1, f"optimizer.momentum={o.momentum!r}: expected in [0, 1)")
    ms = list(o.milestones)
    _require(all(isinstance(m, int) and m > 0 for m in ms) and ms == sorted(set(ms)),
             f"optimizer.milestones={o.milestones!r}: expected strictly increasing positive epochs")

    for key in ("batch_size", "num_epochs", "log_every_steps", "eval_every_epochs",
                "keep_checkpoints", "checkpoint_every_epochs"):
        _positive_int(config, key)
    for key in ("total_steps", "eval_batch_size", "seed"):
        _positive_int(config, key, allow_zero=True)
    n = jax.device_count() if num_devices is None else num_devices
    for key in ("batch_size", "eval_batch_size"):
        value = config[key]
        _require(value % n == 0,
                 f"{key}={value} must be divisible by the number of devices ({n})")
