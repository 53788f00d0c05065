"""Configs, recipes, schedules and config validation (no compilation: fast)."""

import glob
import importlib.util
import math
import os

import numpy as np
import pytest

from kd_jax.train import config_validation, schedules
from kd_jax.train.config_validation import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "kd_jax", "configs", "[!_]*.py")))


def load_config_module(name):
    path = os.path.join(ROOT, "kd_jax", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _valid(config):
    if config.teacher.arch:   # distillation configs, and lockstep configs (which keep one)
        config.teacher.checkpoint = "random"
    config_validation.validate(config, num_devices=1)


# --- schedules: the reference formulas, written out independently -------------------------

def test_multistep_lr_matches_mdistiller():
    milestones = [150, 180, 210]
    for epoch in (1, 149, 150, 151, 180, 181, 210, 211, 240):
        # mdistiller adjust_learning_rate: steps = np.sum(epoch > np.asarray(milestones))
        expected = 0.05 * 0.1 ** int(np.sum(epoch > np.asarray(milestones)))
        assert schedules.multistep_lr(epoch, 0.05, milestones, 0.1) == pytest.approx(expected, rel=1e-12)
    assert schedules.multistep_lr(150, 0.05, milestones) == 0.05
    assert schedules.multistep_lr(151, 0.05, milestones) == pytest.approx(0.005)


def test_cosine_lr():
    assert schedules.cosine_lr(1, 0.1, 10) == pytest.approx(0.1)
    assert schedules.cosine_lr(6, 0.1, 10) == pytest.approx(0.05)
    assert schedules.cosine_lr(10, 0.1, 10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))


def test_warmup_factor_matches_reference():
    from kd_jax.losses import warmup_factor
    for epoch in (1, 5, 19, 20, 21, 240):
        assert float(warmup_factor(np.int32(epoch), 20)) == pytest.approx(min(epoch / 20.0, 1.0))


# --- recipes and config files -------------------------------------------------------------

def test_every_config_file_builds_and_validates():
    assert len(CONFIG_FILES) >= 13
    for path in CONFIG_FILES:
        config = load_config_module(os.path.basename(path)[:-3]).get_config()
        if config.get("pipeline"):   # e.g. quickstart: a list of runs, tested elsewhere
            continue
        _valid(config)


def test_published_numbers_follow_the_method_key():
    """The summary's published number is the pair's column of the method's key."""
    from kd_jax.train.summary import published_top1
    assert published_top1("cifar100", "sd_dkd", "resnet32x4", "ShuffleV1") == 77.30
    assert published_top1("cifar100", "sd_kd", "resnet32x4", "ShuffleV1") == 76.30
    assert published_top1("cifar100", "dkd", "vgg13", "vgg8") == 74.68
    assert published_top1("imagenet2012", "dkd", "imagenet_ResNet50",
                          "imagenet_MobileNetV1") == 72.05
    assert published_top1("caltech_birds2011", "sd_dkd", "cub_vgg13", "cub_vgg8") == 68.67
    assert published_top1("caltech_birds2011", "sd_nkd", "cub_vgg13", "cub_vgg8") is None
    assert published_top1("cifar100", "ce", "", "wrn_40_2") == 75.61
    assert published_top1("cifar100", "clkd", "resnet32x4", "resnet8x4") is None


def test_unknown_pair_names_the_known_ones():
    with pytest.raises(ValueError, match="resnet32x4-resnet8x4"):
        load_config_module("cifar_kd").get_config("resnet8-resnet99")


# --- validation errors name the key and the allowed values --------------------------------

def _kd_config():
    c = load_config_module("cifar_kd").get_config()
    c.teacher.checkpoint = "random"
    return c


@pytest.mark.parametrize("key,value,match", [
    ("method.name", "fitnet", r"method.name='fitnet'; allowed: ce, kd"),
    ("dataset.name", "mnist", r"dataset.name='mnist'; allowed: cifar10, cifar100"),
    ("student.arch", "resnet9", r"student.arch='resnet9'; allowed: .*resnet8"),
    ("teacher.arch", "nope", r"teacher.arch='nope'"),
    ("teacher.checkpoint", None, r"needs teacher.checkpoint"),
    ("teacher.checkpoint", "/nonexistent/t.pth", r"teacher.checkpoint='/nonexistent/t.pth': no such"),
    ("student.arch", "imagenet_ResNet18", r"student.arch='imagenet_ResNet18' does not fit dataset.name='cifar100'"),
    ("optimizer.schedule", "step", r"optimizer.schedule='step'; allowed: multistep, cosine"),
    ("optimizer.milestones", (180, 150), r"optimizer.milestones"),
    ("batch_size", 0, r"batch_size=0"),
    ("total_steps", -1, r"total_steps=-1"),
])
def test_bad_values_fail_with_the_key(key, value, match):
    c = _kd_config()
    section, _, leaf = key.rpartition(".")
    (c[section] if section else c)[leaf] = value
    with pytest.raises(ConfigError, match=match):
        config_validation.validate(c, num_devices=1)


def test_method_specific_errors():
    c = load_config_module("cifar_sdd").get_config()
    c.teacher.checkpoint = "random"
    c.method.base = "crd"
    with pytest.raises(ConfigError, match="method.base='crd'; allowed: kd, dkd, nkd"):
        config_validation.validate(c, num_devices=1)
    c.method.base = "dkd"
    c.method.scales = "[2,4]"
    with pytest.raises(ConfigError, match=r"method.scales: invalid scales '\[2,4\]'"):
        config_validation.validate(c, num_devices=1)
    c = _kd_config()
    c.batch_size = 12
    with pytest.raises(ConfigError, match="divisible by the number of devices"):
        config_validation.validate(c, num_devices=8)
    c = load_config_module("cifar_teacher").get_config()
    c.teacher.checkpoint = "random"
    with pytest.raises(ConfigError, match="trains without a teacher"):
        config_validation.validate(c, num_devices=1)


def test_locked_config_rejects_unknown_keys():
    c = _kd_config()
    c.lock()
    with pytest.raises(AttributeError):
        c.method.beta = 8.0   # KD has no beta
