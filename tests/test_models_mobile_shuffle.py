"""MobileNetV2, ShuffleV1/V2, ImageNet ResNet / MobileNetV1 and the CUB-200 variants.

Parameter counts, keys and feature shapes of the models with a reference dump are checked by
test_model_zoo.py, whole-model PyTorch parity of every family (CUB variants included) by
test_model_parity.py, initialisation by test_model_init.py. Here: the tricky pieces against
NumPy / PyTorch (channel shuffle, counted-padding average pool, stride-2 symmetric stem,
torchvision Bottleneck), a jitted train step per family of this file, and the CUB variants
(abstract models: tracing only) against counts derived from the CIFAR dumps.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import models
from kd_jax.models import (layers, mobilenetv1, mobilenetv2, resnet_imagenet, shufflenetv1,
                           shufflenetv2)
from kd_jax.models.shufflenetv1 import channel_shuffle

try:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is optional
    torch = None

needs_torch = pytest.mark.skipif(torch is None,
                                 reason="needs torch: PyTorch is the oracle of this check")

DUMP_DIR = Path(__file__).parent / "data" / "torch_state_dicts"
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var"}


def nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def abstract_model(name: str, num_classes: int = 100) -> nnx.Module:
    """The model with abstract leaves (no initialisation cost): fill it before running it."""
    return nnx.eval_shape(lambda: models.create(name, num_classes=num_classes))


def numpy_filled(build, seed: int = 0) -> nnx.Module:
    """build() with NumPy-drawn weights (kernels N(0, 1/fan_in), BN identity): XLA-free init."""
    model = nnx.eval_shape(build)
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
        shape = tuple(var.shape)
        if path[-1] == "kernel":
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif path[-1] in ("scale", "var"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        var.set_value(jnp.asarray(value, jnp.float32))
    return model


def load_torch_weights(module: nnx.Module, state_dict: dict) -> None:
    """Copies a PyTorch state_dict into `module` by attribute path (conv OIHW -> HWIO)."""
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))):
        key = ".".join([str(p) for p in path[:-1]] + [LEAF_NAMES[path[-1]]])
        value = state_dict[key].detach().numpy()
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        assert value.shape == var.shape, key
        var.set_value(jnp.asarray(value))


def randomize_bn(module) -> None:
    """Trained-looking BatchNorm statistics and affine parameters (else BN is nearly identity)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


# --- Pieces against NumPy / PyTorch ---

@pytest.mark.parametrize("groups,channels", [(3, 12), (2, 10)])
def test_channel_shuffle_matches_torch_nchw_definition(groups, channels):
    x = np.random.default_rng(0).normal(size=(2, channels, 3, 4)).astype(np.float32)
    n, c, h, w = x.shape
    expected = x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
    ours = np.asarray(channel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), groups))
    np.testing.assert_array_equal(ours.transpose(0, 3, 1, 2), expected)


def test_channel_shuffle_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="not divisible"):
        channel_shuffle(jnp.zeros((1, 2, 2, 10)), 3)


@needs_torch
@pytest.mark.parametrize("size", [8, 9])
def test_counted_padding_avg_pool_matches_torch(size):
    """ShuffleV1's shortcut: nn.AvgPool2d(3, stride=2, padding=1), padding counted (border / 9)."""
    x = torch.randn(2, 4, size, size, generator=torch.Generator().manual_seed(0))
    expected = nhwc(tnn.AvgPool2d(3, stride=2, padding=1)(x))
    ours = layers.avg_pool(jnp.asarray(nhwc(x)), 3, 2, 1, count_include_pad=True)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-6, atol=1e-6)


@needs_torch
def test_mobilenetv2_stem_is_stride2_with_symmetric_padding():
    conv = abstract_model("MobileNetV2").conv1[0]
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 3, 8, 8, generator=g), torch.randn(16, 3, 3, 3, generator=g)
    conv.kernel.set_value(jnp.asarray(weight.numpy().transpose(2, 3, 1, 0)))
    expected = nhwc(F.conv2d(x, weight, stride=2, padding=1))
    ours = np.asarray(conv(jnp.asarray(nhwc(x))))
    assert ours.shape == (2, 4, 4, 16)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@needs_torch
def test_imagenet_bottleneck_matches_torchvision_v15():
    """Stride on the 3x3 conv (v1.5), projection shortcut downsample.{0,1}; output before ReLU."""

    class TorchBottleneck(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = tnn.Conv2d(16, 8, 1, bias=False), tnn.BatchNorm2d(8)
            self.conv2, self.bn2 = tnn.Conv2d(8, 8, 3, 2, 1, bias=False), tnn.BatchNorm2d(8)
            self.conv3, self.bn3 = tnn.Conv2d(8, 32, 1, bias=False), tnn.BatchNorm2d(32)
            self.downsample = tnn.Sequential(tnn.Conv2d(16, 32, 1, 2, bias=False),
                                             tnn.BatchNorm2d(32))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = F.relu(self.bn2(self.conv2(out)))
            return self.bn3(self.conv3(out)) + self.downsample(x)

    torch.manual_seed(0)
    tblock = TorchBottleneck()
    randomize_bn(tblock)
    tblock.eval()
    block = resnet_imagenet.Bottleneck(16, 8, 2, dtype=jnp.float32, rngs=nnx.Rngs(0))
    load_torch_weights(block, tblock.state_dict())
    block.eval()
    x = torch.randn(2, 16, 7, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = nhwc(tblock(x))
    out, preact = block(jnp.asarray(nhwc(x)))
    ours = np.asarray(preact)
    assert ours.shape == (2, 4, 4, 32)
    np.testing.assert_allclose(np.asarray(out), np.maximum(expected, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


# --- A jitted train step per family of this file (2 x 32 x 32) ---

# Shallower instances of the same classes (every unit kind, stride and merge kept), since
# compiling the backward pass of the full depth costs several times more; the full models'
# forwards are traced by test_model_zoo.py and compiled by test_convert.py.
SMALL = {
    "MobileNetV2": lambda: mobilenetv2.MobileNetV2(
        100, setting=tuple((t, c, 1, s) for t, c, _, s in mobilenetv2.SETTING), rngs=nnx.Rngs(0)),
    "ShuffleV1": lambda: shufflenetv1.ShuffleNetV1(100, num_blocks=(1, 2, 1), rngs=nnx.Rngs(0)),
    "ShuffleV2": lambda: shufflenetv2.ShuffleNetV2(100, num_blocks=(1, 1, 1), rngs=nnx.Rngs(0)),
    # The ImageNet families at 32x32 (their pools are global, so any size runs).
    "imagenet_ResNet": lambda: resnet_imagenet.ResNet(
        resnet_imagenet.Bottleneck, (1, 1, 1, 1), 100, rngs=nnx.Rngs(0)),
    "imagenet_MobileNetV1": lambda: mobilenetv1.MobileNetV1(100, rngs=nnx.Rngs(0)),
}


@functools.lru_cache(maxsize=None)
def train_step(name: str):
    """(model before, loss, grads, logits, features, batch stats after) of one train-mode step."""
    model = numpy_filled(SMALL[name])
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    kx, ky = jax.random.split(jax.random.key(0))
    x, y = jax.random.normal(kx, (2, 32, 32, 3)), jax.random.randint(ky, (2,), 0, 100)

    @jax.jit
    def step(params, rest):
        def loss_fn(params):
            m = nnx.merge(graphdef, params, rest, copy=True)
            logits, feats = m(x)
            loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
            return loss, (logits, feats, nnx.state(m, nnx.BatchStat))
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, (logits, feats, stats)), grads = step(params, rest)
    return model, loss, grads, logits, feats, stats


@pytest.mark.parametrize("name", sorted(SMALL))
def test_train_step(name):
    model, loss, grads, logits, feats, stats = train_step(name)
    assert np.isfinite(float(loss)) and logits.dtype == jnp.float32
    grad_leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in grad_leaves)
    # Every parameter takes part: no weight without gradient (a dead branch would show here).
    dead = [".".join(map(str, p)) for p, g in nnx.to_flat_state(grads)
            if not np.any(np.asarray(g[...]))]
    assert not dead, f"{name}: zero gradient for {dead[:5]}"
    before = nnx.state(model, nnx.BatchStat)
    unchanged = jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.all(np.asarray(a) == np.asarray(b))), before, stats))
    assert not any(unchanged), f"{name}: train mode must update every running statistic"
    # The head applied to the mean of pre_pool is the logits (SDD region 0).
    pooled = np.asarray(feats["pre_pool"], np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(pooled, feats["pooled"], rtol=1e-5, atol=1e-6)
    expected = pooled @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-5)


def test_shufflev2_preact_is_unshuffled_concat():
    """Last stage: stages[-1] == shuffle(relu(preact), 2) and preact's first half is >= 0 (x1)."""
    _, _, _, _, feats, _ = train_step("ShuffleV2")
    pre, out = np.asarray(feats["preact_stages"][-1]), np.asarray(feats["stages"][-1])
    np.testing.assert_allclose(np.asarray(channel_shuffle(jnp.maximum(pre, 0), 2)), out, atol=1e-6)
    half = pre.shape[-1] // 2
    assert pre[..., :half].min() >= 0 and pre[..., half:].min() < 0


# --- CUB-200 variants (abstract models: tracing only) ---

# name -> (CIFAR dump, torch key of the stem conv weight, CIFAR stem kernel size, pre_pool on 224)
CUB = {
    "cub_resnet8x4": ("resnet8x4", "conv1.weight", 3, (28, 28, 256)),
    "cub_resnet32x4": ("resnet32x4", "conv1.weight", 3, (28, 28, 256)),
    "cub_ResNet50": ("ResNet50", "conv1.weight", 3, (14, 14, 2048)),
    "cub_ShuffleV1": ("ShuffleV1", "conv1.weight", 1, (14, 14, 960)),
    "cub_ShuffleV2": ("ShuffleV2", "conv1.weight", 1, (14, 14, 1024)),
    "cub_MobileNetV2": ("MobileNetV2", "conv1.0.weight", 3, (7, 7, 1280)),
    "cub_vgg8": ("vgg8", None, None, (28, 28, 512)),
    "cub_vgg13": ("vgg13", None, None, (28, 28, 512)),
}


def read_dump(name: str) -> tuple[int, dict[str, tuple[int, ...]]]:
    """(parameter count, {key: shape} without num_batches_tracked) of a reference dump (K = 100)."""
    text = (DUMP_DIR / f"{name}.txt").read_text()
    count = int(re.search(r"^parameter_count: (\d+)", text, re.M).group(1))
    state = {k: tuple(int(d) for d in re.findall(r"\d+", s))
             for k, s in re.findall(r"^(\S+)\t\(([\d,]*)\)\t", text, re.M)
             if not k.endswith("num_batches_tracked")}
    return count, state


def torch_view(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
        shape = tuple(var.shape)
        if path[-1] == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        out[".".join([str(p) for p in path[:-1]] + [LEAF_NAMES[path[-1]]])] = shape
    return out


@pytest.mark.parametrize("name", sorted(CUB))
def test_cub_variant_structure(name):
    base, stem_key, k0, pre_pool = CUB[name]
    count, expected = read_dump(base)
    head = next(h for h in ("fc", "linear", "classifier.0", "classifier")
                if f"{h}.weight" in expected)
    width = expected[f"{head}.weight"][1]
    # Head 100 -> 200 classes; stem kernel k0 x k0 -> 7 x 7 (stride 2).
    count += 100 * (width + 1)
    expected[f"{head}.weight"], expected[f"{head}.bias"] = (200, width), (200,)
    if stem_key is not None:
        c = expected[stem_key][0]
        count += c * 3 * (49 - k0 * k0)
        expected[stem_key] = (c, 3, 7, 7)

    model = nnx.eval_shape(lambda: models.create(name, num_classes=200))
    model.eval()
    assert torch_view(model) == expected
    assert sum(v.size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))) == count
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    logits, feats = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert logits.shape == (2, 200) and logits.dtype == jnp.float32
    assert feats["pre_pool"].shape == (2,) + pre_pool
    assert feats["pooled"].shape == (2, pre_pool[-1])
    assert model.head.kernel.shape == (width, 200)
