"""MobileNetV1 of the ImageNet zoo (mdistiller's `mdistiller/models/imagenet/mobilenetv1.py`), NHWC.

  model.0       conv_bn: conv3x3 stride 2 (3 -> 32) + BN + ReLU       keys model.0.{0,1}
  model.1..13   conv_dw: depthwise 3x3 (stride) + BN + ReLU, 1x1 + BN + ReLU
                                                                       keys model.k.{0,1,3,4}
                widths 64, 128, 128, 256, 256, 512 x6, 1024, 1024; stride 2 at units 2, 4, 6, 12
  model.14      AvgPool(7) (global on the 7x7 map of 224x224 inputs; no parameters)
  fc            linear 1024 -> K (1000 in the reference)
PyTorch default initialisation everywhere (the reference sets none). Features as the
reference: "preact_stages" = outputs of units 3, 5, 11, 13 before their last ReLU
(56, 28, 14, 7 pixels on 224 inputs), "stages" = their ReLUs, "pre_pool" = relu(unit 13).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers
from kd_jax.models.registry import register

# (output width, stride) of the 13 depthwise-separable units model.1 .. model.13.
_UNITS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# Units whose pre-activation output is a feature.
_FEATURE_UNITS = (3, 5, 11, 13)


def _conv(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0,
          groups: int = 1, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    return layers.conv(cin, cout, kernel, stride=stride, padding=padding, groups=groups,
                       kernel_init=layers.torch_default_kernel_init, dtype=dtype, rngs=rngs)


def _conv_bn(cin: int, cout: int, stride: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([_conv(cin, cout, 3, stride=stride, padding=1, dtype=dtype, rngs=rngs),
                     layers.BatchNorm(cout, dtype=dtype), None])


def _conv_dw(cin: int, cout: int, stride: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([
        _conv(cin, cin, 3, stride=stride, padding=1, groups=cin, dtype=dtype, rngs=rngs),
        layers.BatchNorm(cin, dtype=dtype),
        None,
        _conv(cin, cout, 1, dtype=dtype, rngs=rngs),
        layers.BatchNorm(cout, dtype=dtype),
        None,
    ])


class MobileNetV1(nnx.Module):
    """ImageNet MobileNetV1; `logits, features = model(x)` with x (B, 224, 224, 3)."""

    def __init__(self, num_classes: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        units: list = [_conv_bn(3, 32, 2, dtype=dtype, rngs=rngs)]
        cin = 32
        for cout, stride in _UNITS:
            units.append(_conv_dw(cin, cout, stride, dtype=dtype, rngs=rngs))
            cin = cout
        units.append(None)  # model.14: AvgPool2d(7)
        self.model = nnx.List(units)
        self.fc = layers.linear(cin, num_classes, rngs=rngs)

    @property
    def head(self) -> nnx.Linear:
        return self.fc

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict]:
        stem = self.model[0]
        out = layers.relu(stem[1](stem[0](x.astype(self.dtype))))
        preacts = []
        for k in range(1, len(_UNITS) + 1):
            unit = self.model[k]
            out = layers.relu(unit[1](unit[0](out)))
            preact = unit[4](unit[3](out))
            out = layers.relu(preact)
            if k in _FEATURE_UNITS:
                preacts.append(preact)
        return layers.pool_and_classify(self.head, out, [layers.relu(p) for p in preacts],
                                        preacts)


@register("imagenet_MobileNetV1")
def imagenet_mobilenetv1(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> MobileNetV1:
    return MobileNetV1(num_classes, dtype=dtype, rngs=rngs)
