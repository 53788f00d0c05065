"""Initialisation of every family of the zoo, against the reference code's init schemes.

Reference (mdistiller @ a08d46f, read from its source; SDD's train_origin.py for CUB):
  CIFAR resnet8..110, x4 (cifar/resnet.py)   convs kaiming_normal_(mode="fan_out", relu):
  CIFAR ResNet18/34/50 (cifar/resnetv2.py)    N(0, 2 / (out * kh * kw)); BN weight 1, bias 0;
                                              fc / linear: PyTorch's default
  ImageNet ResNet (imagenet/resnet.py)        convs normal_(0, sqrt(2 / (kh * kw * out)))
                                              (the same); BN 1 / 0; fc default
  WRN (cifar/wrn.py)                          convs as above; BN 1 / 0; fc weight default,
                                              bias zeroed
  VGG, MobileNetV2 (cifar/vgg.py,             convs as above, conv bias 0; BN 1 / 0; linear
    cifar/mobilenetv2.py)                     N(0, 0.01^2), bias 0. Depthwise convs too:
                                              torch's out_channels * kh * kw, not out / groups
  ShuffleV1, ShuffleV2, MobileNetV1           no init code: PyTorch's default everywhere
                                              (conv / linear weight and linear bias
                                              U(+-1 / sqrt(fan_in)), fan_in = in / groups * kh * kw)
  CUB variants (SDD)                          replaced modules (7x7 stems, MobileNetV2's stem
                                              BN, re-made heads) PyTorch's default
Each statistical check is on a layer whose fan_in and fan_out differ (by 1.5x at least, so a
swapped fan mode fails) and with enough entries to be sharp at a fixed seed: normal ->
sample std within max(3%, 5 / sqrt(2n)) of the expected std, |mean| small, excess kurtosis
near 0 (a uniform has -1.2); uniform -> max |w| <= bound and >= bound (1 - 20 / n) (a fan
mode giving a larger bound overshoots it, a smaller one falls short), std near bound /
sqrt(3) and kurtosis near -1.2 for large layers. Expected values come from the formulas
above applied to the layer's shape, never from kd_jax's initialisers.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from flax import nnx

from kd_jax import models


@functools.lru_cache(maxsize=None)
def params(name: str, num_classes: int) -> dict[str, np.ndarray]:
    """"path.to.leaf" -> value of every Param and BatchStat of models.create(name) (seed 0)."""
    model = models.create(name, num_classes=num_classes, rngs=nnx.Rngs(0))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    return {".".join(map(str, path)): np.asarray(var[...]) for path, var in flat}


def torch_fans(kernel_shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init computes them for the torch weight of this Flax
    kernel: conv HWIO (kh, kw, in / groups, out) <-> torch (out, in / groups, kh, kw), fan_in =
    in / groups * kh * kw, fan_out = out * kh * kw; linear (in, out): in, out."""
    *receptive, fan_in_channels, out = kernel_shape
    field = math.prod(receptive)
    return fan_in_channels * field, out * field


def excess_kurtosis(w: np.ndarray) -> float:
    centred = w - w.mean()
    return float(np.mean(centred ** 4) / np.mean(centred ** 2) ** 2 - 3.0)


def assert_normal(w: np.ndarray, std: float, what: str):
    w = w.astype(np.float64).ravel()
    n = w.size
    assert n >= 2000, f"{what}: {n} entries are too few for a sharp check"
    assert abs(w.mean()) <= 5 * std / math.sqrt(n), f"{what}: mean {w.mean():.3g}"
    rel = max(0.03, 5 / math.sqrt(2 * n))
    assert w.std() == pytest.approx(std, rel=rel), f"{what}: std {w.std():.4g} vs {std:.4g}"
    kurt = excess_kurtosis(w)
    assert abs(kurt) <= max(0.1, 5 * math.sqrt(24 / n)), f"{what}: kurtosis {kurt:.3f} (normal: 0)"


def assert_uniform(w: np.ndarray, bound: float, what: str):
    w = w.astype(np.float64).ravel()
    n = w.size
    top = float(np.abs(w).max())
    assert top <= bound * (1 + 1e-6), f"{what}: max |w| {top:.4g} > bound {bound:.4g}"
    assert top >= bound * (1 - 20 / n), f"{what}: max |w| {top:.4g} << bound {bound:.4g}"
    if n >= 2000:
        rel = max(0.03, 3 / math.sqrt(n))
        assert w.std() == pytest.approx(bound / math.sqrt(3), rel=rel), f"{what}: std"
        kurt = excess_kurtosis(w)
        assert kurt == pytest.approx(-1.2, abs=max(0.1, 5 * math.sqrt(1.2 / n))), \
            f"{what}: kurtosis {kurt:.3f} (uniform: -1.2)"


# Schemes: "kaiming_fan_out" N(0, 2 / fan_out); "default" U(+-1 / sqrt(fan_in)) for a kernel;
# "default_bias" U(+-1 / sqrt(fan_in of the layer's kernel)); "normal_0.01"; "zeros"; "ones".
# name -> (num_classes, [(leaf path, scheme)])
CASES = {
    "resnet8x4": (100, [
        ("layer3.0.conv1.kernel", "kaiming_fan_out"),          # 3x3 128 -> 256
        ("layer3.0.downsample.0.kernel", "kaiming_fan_out"),   # 1x1 128 -> 256
        ("fc.kernel", "default"), ("fc.bias", "default_bias"),  # 256 -> 100
        ("layer3.0.bn1.scale", "ones"), ("layer3.0.bn1.bias", "zeros"),
    ]),
    "ResNet18": (100, [
        ("layer4.0.conv1.kernel", "kaiming_fan_out"),          # 3x3 256 -> 512
        ("layer4.0.shortcut.0.kernel", "kaiming_fan_out"),
        ("linear.kernel", "default"), ("linear.bias", "default_bias"),
        ("layer4.0.shortcut.1.scale", "ones"), ("layer4.0.shortcut.1.bias", "zeros"),
    ]),
    "wrn_16_2": (10, [  # 10 classes: fc fan_in 128 vs fan_out 10 (100 would be too close)
        ("block3.layer.0.conv1.kernel", "kaiming_fan_out"),    # 3x3 64 -> 128
        ("block3.layer.0.convShortcut.kernel", "kaiming_fan_out"),
        ("fc.kernel", "default"), ("fc.bias", "zeros"),        # 128 -> 10, bias zeroed
        ("bn1.scale", "ones"), ("bn1.bias", "zeros"),
    ]),
    "vgg8": (100, [
        ("block1.0.kernel", "kaiming_fan_out"), ("block1.0.bias", "zeros"),  # 3x3 64 -> 128
        ("classifier.kernel", "normal_0.01"), ("classifier.bias", "zeros"),
        ("block1.1.scale", "ones"), ("block1.1.bias", "zeros"),
    ]),
    "MobileNetV2": (100, [
        ("conv2.0.kernel", "kaiming_fan_out"),                 # 1x1 160 -> 1280
        ("blocks.6.0.conv.0.kernel", "kaiming_fan_out"),       # 1x1 expand 80 -> 480
        ("blocks.5.0.conv.3.kernel", "kaiming_fan_out"),       # depthwise 3x3, 288 groups
        ("classifier.0.kernel", "normal_0.01"), ("classifier.0.bias", "zeros"),
        ("conv2.1.scale", "ones"), ("conv2.1.bias", "zeros"),
    ]),
    "ShuffleV1": (100, [
        ("layer3.1.conv3.kernel", "default"),                  # 1x1 240 -> 960, 3 groups
        ("layer3.1.conv2.kernel", "default"),                  # depthwise 3x3, 240 groups
        ("linear.kernel", "default"), ("linear.bias", "default_bias"),  # 960 -> 100
        ("layer3.1.bn3.scale", "ones"), ("layer3.1.bn3.bias", "zeros"),
    ]),
    "ShuffleV2": (100, [
        ("conv2.kernel", "default"),                           # 1x1 464 -> 1024
        ("layer3.1.conv2.kernel", "default"),                  # depthwise 3x3, 232 groups
        ("linear.kernel", "default"), ("linear.bias", "default_bias"),  # 1024 -> 100
        ("bn2.scale", "ones"), ("bn2.bias", "zeros"),
    ]),
    "imagenet_ResNet18": (1000, [
        ("conv1.kernel", "kaiming_fan_out"),                   # 7x7 3 -> 64
        ("layer4.0.conv1.kernel", "kaiming_fan_out"),          # 3x3 256 -> 512
        ("fc.kernel", "default"), ("fc.bias", "default_bias"),  # 512 -> 1000
        ("bn1.scale", "ones"), ("bn1.bias", "zeros"),
    ]),
    "imagenet_MobileNetV1": (1000, [
        ("model.12.3.kernel", "default"),                      # 1x1 512 -> 1024
        ("model.13.0.kernel", "default"),                      # depthwise 3x3, 1024 groups
        ("model.0.0.kernel", "default"),                       # 3x3 3 -> 32, stride 2
        ("model.12.4.scale", "ones"), ("model.12.4.bias", "zeros"),
    ]),
    "cub_resnet8x4": (200, [
        ("conv1.kernel", "default"),                           # SDD's new 7x7 stem 3 -> 32
        ("layer3.0.conv1.kernel", "kaiming_fan_out"),          # the rest as the CIFAR model
        # (fc 256 -> 200: default as in resnet8x4, but its fans are too close to tell apart)
    ]),
    "cub_MobileNetV2": (200, [
        ("conv1.0.kernel", "default"),                         # SDD's new 7x7 stem 3 -> 16
        ("conv1.1.scale", "ones"), ("conv1.1.bias", "zeros"),
        ("conv2.0.kernel", "kaiming_fan_out"),
        ("classifier.0.kernel", "normal_0.01"), ("classifier.0.bias", "zeros"),  # not replaced
    ]),
    "cub_vgg8": (200, [
        ("classifier.kernel", "default"), ("classifier.bias", "default_bias"),  # re-made 512 -> 200
        ("block1.0.kernel", "kaiming_fan_out"), ("block1.0.bias", "zeros"),
    ]),
}


def test_every_family_has_init_cases():
    """One model per module of kd_jax.models (the CUB module included)."""
    families = {models.registry._REGISTRY[name].__module__ for name in CASES}
    zoo = {models.registry._REGISTRY[name].__module__ for name in models.names(reference_only=True)}
    assert families == zoo


@pytest.mark.parametrize("name", sorted(CASES))
def test_initialisation_scheme(name):
    num_classes, cases = CASES[name]
    values = params(name, num_classes)
    for path, scheme in cases:
        w = values[path]
        what = f"{name} {path} {w.shape}"
        if scheme == "zeros":
            np.testing.assert_array_equal(w, 0.0, err_msg=what)
        elif scheme == "ones":
            np.testing.assert_array_equal(w, 1.0, err_msg=what)
        elif scheme == "normal_0.01":
            assert_normal(w, 0.01, what)
        elif scheme == "default_bias":
            fan_in, _ = torch_fans(values[path.rsplit(".", 1)[0] + ".kernel"].shape)
            assert fan_in >= 1.5 * w.size or w.size >= 1.5 * fan_in, f"{what}: fans too close"
            assert_uniform(w, 1 / math.sqrt(fan_in), what)
        else:
            fan_in, fan_out = torch_fans(w.shape)
            assert max(fan_in, fan_out) >= 1.5 * min(fan_in, fan_out), f"{what}: fans too close"
            if scheme == "kaiming_fan_out":
                assert_normal(w, math.sqrt(2 / fan_out), what)
            elif scheme == "default":
                assert_uniform(w, 1 / math.sqrt(fan_in), what)
            else:
                raise ValueError(scheme)
