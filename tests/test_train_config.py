"""Configs, recipes, schedules and config validation (no compilation: fast)."""

import glob
import math
import os

import numpy as np
import pytest

from kd_jax.data import catalog
from kd_jax.train import config_validation, schedules
from kd_jax.train.config_validation import ConfigError

import repo_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "kd_jax", "configs", "[!_]*.py")))


def _valid(config):
    if config.teacher.arch:   # distillation configs, and lockstep configs (which keep one)
        config.teacher.checkpoint = "random"
    if catalog.is_own(config.dataset.name):   # custom_*.py: the user names the folder
        config.dataset.data_dir = "my_images"
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
        config = repo_files.config_module(os.path.basename(path)[:-3]).get_config()
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
    # SDD's cub20.png (its README): NKD and SD-NKD rows.
    assert published_top1("caltech_birds2011", "sd_nkd", "cub_vgg13", "cub_vgg8") == 68.37
    assert published_top1("caltech_birds2011", "nkd", "cub_vgg13", "cub_vgg8") == 67.16
    assert published_top1("caltech_birds2011", "nkd", "cub_resnet32x4",
                          "cub_ShuffleV1") == 64.0
    assert published_top1("caltech_birds2011", "sd_nkd", "cub_ResNet50",
                          "cub_ShuffleV1") == 60.42
    assert published_top1("cifar100", "ce", "", "wrn_40_2") == 75.61
    assert published_top1("cifar100", "clkd", "resnet32x4", "resnet8x4") is None


def test_unknown_pair_names_the_known_ones():
    with pytest.raises(ValueError, match="resnet32x4-resnet8x4"):
        repo_files.config_module("cifar_kd").get_config("resnet8-resnet99")


# --- validation errors name the key and the allowed values --------------------------------

def _kd_config():
    c = repo_files.config_module("cifar_kd").get_config()
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


# Validation order, as validate's docstring promises: with several mistakes, the first in
# this list is reported. (key, bad value, the error it gives), in the order they are checked.
ORDERED_MISTAKES = [
    ("dataset.name", "mnist", r"^dataset.name='mnist'; allowed"),
    ("dataset.num_train", -1, r"^dataset.num_train=-1: expected an integer >= 0"),
    ("optimizer.lr", float("nan"), r"^optimizer.lr=nan: expected a finite number"),
    ("total_steps", -1, r"^total_steps=-1: expected an integer >= 0"),
    ("compute_dtype", "float16", r"^compute_dtype='float16'; allowed: float32, bfloat16"),
    ("student.arch", "resnet9", r"^student.arch='resnet9'; allowed"),
    ("method.name", "fitnet", r"^method.name='fitnet'; allowed"),
    ("teacher.checkpoint", "/nonexistent/t.pth",
     r"^teacher.checkpoint='/nonexistent/t.pth': no such file"),
    ("teacher.arch", "imagenet_ResNet18",
     r"^teacher.arch='imagenet_ResNet18' does not fit dataset.name='cifar100'"),
    ("optimizer.schedule", "step", r"^optimizer.schedule='step'; allowed"),
    ("batch_size", 0, r"^batch_size=0: expected an integer > 0"),
    ("eval_batch_size", 12, r"^eval_batch_size=12 must be divisible by the number of devices"),
]


@pytest.mark.parametrize("first", range(len(ORDERED_MISTAKES)))
def test_the_first_of_several_mistakes_is_reported(first):
    c = _kd_config()
    for key, value, _ in ORDERED_MISTAKES[first:]:
        section, _, leaf = key.rpartition(".")
        (c[section] if section else c)[leaf] = value
    with pytest.raises(ConfigError, match=ORDERED_MISTAKES[first][2]):
        config_validation.validate(c, num_devices=8)


def test_method_specific_errors():
    c = repo_files.config_module("cifar_sdd").get_config()
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
    c = repo_files.config_module("cifar_teacher").get_config()
    c.teacher.checkpoint = "random"
    with pytest.raises(ConfigError, match="trains without a teacher"):
        config_validation.validate(c, num_devices=1)


def test_locked_config_rejects_unknown_keys():
    c = _kd_config()
    c.lock()
    with pytest.raises(AttributeError):
        c.method.beta = 8.0   # KD has no beta


# --- the gradient clip: torch's clip_grad_norm_ before SGD's weight decay and momentum --------

def _torch_sgd_with_clip(params, grads_per_step, lr, max_norm, wd=5e-4, momentum=0.9):
    """SDD's BaseTrainer: backward (grads given), clip_grad_norm_(max_norm), SGD.step()."""
    import torch
    ps = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
    opt = torch.optim.SGD(ps, lr=lr, momentum=momentum, weight_decay=wd)
    norms = []
    for grads in grads_per_step:
        for p, g in zip(ps, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        norms.append(float(torch.nn.utils.clip_grad_norm_(ps, max_norm=max_norm, norm_type=2)))
        opt.step()
    return [p.detach().numpy() for p in ps], norms


@pytest.mark.parametrize("max_norm", [40.0, 0.0])
def test_clip_then_sgd_equals_torch(max_norm):
    """make_optimizer(clip 40) on a student tree and a method's own parameters ("extra")
    equals torch's clip_grad_norm_ over all of them followed by SGD (coupled weight decay,
    momentum), float64, over 3 steps with norms above and below 40; 0 = no clip. The clip
    scales by max_norm / (norm + 1e-6) exactly as torch (optax.clip_by_global_norm, without
    the epsilon, differs)."""
    pytest.importorskip("torch", reason="needs torch: the reference is its clip_grad_norm_")
    import jax
    import jax.numpy as jnp
    import ml_collections
    import optax

    from kd_jax.train.state import make_optimizer

    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (2, 5)]          # two "model" leaves and one "extra" leaf
    params = [rng.normal(size=s) for s in shapes]
    scales = (30.0, 5.0, 60.0)               # global norms about 40 x (1.3, 0.2, 2.6)
    steps = [[sc * rng.normal(size=s) / 3.0 for s in shapes] for sc in scales]
    o = ml_collections.ConfigDict(dict(lr=0.1, momentum=0.9, weight_decay=5e-4,
                                       clip_grad_norm=max_norm))
    with jax.enable_x64(True):
        tx = make_optimizer(o)
        tree = {"model": {"a": jnp.asarray(params[0]), "b": jnp.asarray(params[1])},
                "extra": jnp.asarray(params[2])}
        state = tx.init(tree)
        for grads in steps:
            g = {"model": {"a": jnp.asarray(grads[0]), "b": jnp.asarray(grads[1])},
                 "extra": jnp.asarray(grads[2])}
            updates, state = tx.update(g, state, tree)
            tree = optax.apply_updates(tree, updates)
        got = [np.asarray(tree["model"]["a"]), np.asarray(tree["model"]["b"]),
               np.asarray(tree["extra"])]
    want, norms = _torch_sgd_with_clip(params, steps, 0.1, max_norm or float("inf"))
    assert min(norms) < 40.0 < max(norms)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_clip_has_torchs_epsilon():
    """max_norm / (norm + 1e-6), in float64: torch's coefficient, not optax's max_norm / norm."""
    import jax
    import jax.numpy as jnp
    import optax

    from kd_jax.train.state import clip_grad_norm

    g = np.full((4,), 25.0)                  # norm 50
    with jax.enable_x64(True):
        got = np.asarray(clip_grad_norm(40.0).update(jnp.asarray(g), optax.EmptyState())[0])
        plain = np.asarray(optax.clip_by_global_norm(40.0).update(
            jnp.asarray(g), optax.EmptyState())[0])
    np.testing.assert_allclose(got, g * 40.0 / (50.0 + 1e-6), rtol=1e-15)
    assert np.abs(got - plain).max() > 1e-9


def test_clip_grad_norm_must_be_a_number_at_least_0():
    c = repo_files.config_module("cifar_sdd").get_config("resnet32x4-ShuffleV1")
    c.teacher.checkpoint = "random"
    c.optimizer.clip_grad_norm = -1.0
    with pytest.raises(ConfigError, match=r"optimizer\.clip_grad_norm=-1\.0: expected a number"):
        config_validation.validate(c, num_devices=1)
