"""Configs, recipes, schedules and config validation (no compilation: fast)."""

import glob
import importlib.util
import math
import os

import numpy as np
import pytest

from kd_jax.train import config_validation, methods, recipes, schedules
from kd_jax.train.config_validation import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load_config_module(name):
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _valid(config):
    if config.method.name != "ce":
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


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet2012", "caltech_birds2011"])
def test_every_recipe_pair_builds(dataset):
    for teacher, student in recipes.pairs(dataset):
        for method in ("kd", "dkd", "sdd"):
            _valid(recipes.build_config(method, dataset, f"{teacher}-{student}", ""))


def test_published_numbers_and_hyperparameters():
    sdd = load_config_module("cifar_sdd")
    c = sdd.get_config("resnet32x4-ShuffleV1")
    assert (c.teacher.arch, c.student.arch, c.method.base) == ("resnet32x4", "ShuffleV1", "dkd")
    assert c.method.beta == 8.0 and c.method.scales == "[1,2,4]" and c.optimizer.lr == 0.01
    from kd_jax.train import summary
    assert summary.published_for(c) == 77.30
    c = sdd.get_config("resnet32x4-ShuffleV1,kd")
    assert summary.published_for(c) == 76.30
    c = sdd.get_config("resnet32x4-resnet8x4")
    assert c.method.scales == "[1,2]" and c.optimizer.lr == 0.05
    c = load_config_module("cifar_dkd").get_config("vgg13-vgg8")
    assert (c.method.beta, c.method.warmup_epochs, summary.published_for(c)) == (6.0, 20, 74.68)
    c = load_config_module("imagenet_dkd").get_config("ResNet50-MobileNetV1")
    assert (c.teacher.arch, c.student.arch) == ("imagenet_ResNet50", "imagenet_MobileNetV1")
    assert (c.method.beta, c.method.temperature, c.method.warmup_epochs) == (2.0, 1.0, 1)
    assert (c.batch_size, c.optimizer.lr, c.optimizer.weight_decay) == (512, 0.2, 1e-4)
    assert summary.published_for(c) == 72.05
    c = load_config_module("cub_sdd").get_config("vgg13-vgg8")
    assert c.student.arch == "cub_vgg8" and summary.published_for(c) == 68.67
    assert c.dataset.image_size == 224 and c.dataset.num_classes == 200
    c = load_config_module("cifar_teacher").get_config("wrn_40_2")
    assert summary.published_for(c) == 75.61
    c = load_config_module("cifar_kd").get_config()
    assert (c.method.temperature, c.method.ce_weight, c.method.kd_weight) == (4.0, 0.1, 0.9)
    assert tuple(c.optimizer.milestones) == (150, 180, 210) and c.num_epochs == 240


def test_sdd_weights_follow_the_base():
    c = load_config_module("cifar_sdd").get_config()
    assert recipes.sdd_weights("kd", "cifar100") == (0.1, 0.9)
    assert recipes.sdd_weights("dkd", "cifar100") == (1.0, 1.0)
    assert recipes.sdd_weights("kd", "imagenet2012") == (0.5, 0.5)
    assert methods.parse_scales(c.method.scales) == (1, 2, 4)


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
    ("dataset.name", "mnist", r"dataset.name='mnist'; allowed: cifar100"),
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
    c.method.base = "kd"
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
