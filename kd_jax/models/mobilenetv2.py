"""MobileNetV2 of the CIFAR zoo ("mobile_half": width 0.5, expansion 6), NHWC.

Mirrors mdistiller's `mdistiller/models/cifar/mobilenetv2.py`:
  conv1      conv3x3 STRIDE 2 (3 -> 16) + BN + ReLU          keys conv1.{0,1}
  blocks.i.j inverted residual: 1x1 expand (present even when t = 1) + BN + ReLU,
             depthwise 3x3 (stride) + BN + ReLU, 1x1 project + BN; x + f(x) iff
             stride 1 and equal widths                         keys blocks.i.j.conv.{0,1,3,4,6,7}
  conv2      conv1x1 (160 -> 1280) + BN + ReLU                keys conv2.{0,1}
  pool       global average (the reference's AvgPool2d(2, ceil_mode) on the 2x2 map)
  classifier.0  linear 1280 -> K
ReLU, not ReLU6. Features: "stages" = [conv1, blocks[1], blocks[2], blocks[4], blocks[6]]
outputs (the reference feats list), no pre-activation list, "pre_pool" = the conv2 output
(B, 2, 2, 1280) on 32x32 inputs, which is NOT the last stage.

`stem="cub"` gives SDD's CUB-200 variant (see kd_jax/models/cub.py): conv1 becomes
[conv7x7 stride 2 pad 3 (3 -> 16), BN, ReLU, MaxPool 2x2] (keys conv1.{0,1}; torch default
init, as SDD replaces the module after construction); on 224x224 inputs pre_pool is 7x7.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers
from kd_jax.models.registry import register

# Seven groups of (expansion t, width c, units n, first stride s) at width 1.0; t = 0 means
# "the model's expansion T".
SETTING = ((1, 16, 1, 1), (0, 24, 2, 1), (0, 32, 3, 2), (0, 64, 4, 2), (0, 96, 3, 1),
           (0, 160, 3, 2), (0, 320, 1, 1))
# Stage outputs kept as features: after conv1 (-1) and after these block groups.
_FEATURE_GROUPS = (1, 2, 4, 6)
STEMS = ("cifar", "cub")


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, padding: int, *,
                  kernel_init=layers.kaiming_normal_fan_out, extra_slots: int = 0, dtype: Any,
                  rngs: nnx.Rngs) -> nnx.List:
    """nn.Sequential(Conv2d, BatchNorm2d, ReLU, ...): parameter-free layers are None slots."""
    return nnx.List([
        layers.conv(cin, cout, kernel, stride=stride, padding=padding, kernel_init=kernel_init,
                    dtype=dtype, rngs=rngs),
        layers.BatchNorm(cout, dtype=dtype),
        None,
    ] + [None] * extra_slots)


class InvertedResidual(nnx.Module):
    """1x1 expand -> BN -> ReLU -> dw3x3(stride) -> BN -> ReLU -> 1x1 project -> BN (+ x)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, *, dtype: Any,
                 rngs: nnx.Rngs):
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nnx.List([
            layers.conv(inp, hidden, 1, dtype=dtype, rngs=rngs),
            layers.BatchNorm(hidden, dtype=dtype),
            None,
            layers.conv(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, dtype=dtype,
                        rngs=rngs),
            layers.BatchNorm(hidden, dtype=dtype),
            None,
            layers.conv(hidden, oup, 1, dtype=dtype, rngs=rngs),
            layers.BatchNorm(oup, dtype=dtype),
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.conv
        y = layers.relu(c[1](c[0](x)))
        y = layers.relu(c[4](c[3](y)))
        y = c[7](c[6](y))
        return x + y if self.use_res_connect else y


class MobileNetV2(nnx.Module):
    """CIFAR MobileNetV2; `logits, features = model(x)` with x (B, H, W, 3)."""

    def __init__(self, num_classes: int, *, expansion: int = 6, width_mult: float = 0.5,
                 setting: tuple[tuple[int, int, int, int], ...] = SETTING, stem: str = "cifar",
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if len(setting) != len(SETTING):
            raise ValueError(f"setting needs {len(SETTING)} groups (t, c, n, s), "
                             f"got {len(setting)}")
        self.dtype = dtype
        self.stem = stem
        width = int(32 * width_mult)
        if stem == "cifar":
            self.conv1 = _conv_bn_relu(3, width, 3, 2, 1, dtype=dtype, rngs=rngs)
        else:
            # SDD's CUB stem: conv7x7/2 + BN + ReLU + MaxPool2d(2) (slot 3, no parameters).
            self.conv1 = _conv_bn_relu(3, width, 7, 2, 3,
                                       kernel_init=layers.torch_default_kernel_init,
                                       extra_slots=1, dtype=dtype, rngs=rngs)
        groups = []
        cin = width
        for t, c, n, s in setting:
            cout = int(c * width_mult)
            units = []
            for i in range(n):
                units.append(InvertedResidual(cin, cout, s if i == 0 else 1, t or expansion,
                                              dtype=dtype, rngs=rngs))
                cin = cout
            groups.append(nnx.List(units))
        self.blocks = nnx.List(groups)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1, 0, dtype=dtype, rngs=rngs)
        self.classifier = nnx.List([
            layers.linear(last, num_classes, kernel_init=layers.normal_init(0.01),
                          bias_init=nnx.initializers.zeros_init(), rngs=rngs),
        ])

    @property
    def head(self) -> nnx.Linear:
        return self.classifier[0]

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict]:
        c1 = self.conv1
        out = layers.relu(c1[1](c1[0](x.astype(self.dtype))))
        if self.stem == "cub":
            out = layers.max_pool(out, 2)
        stages = [out]
        for i, group in enumerate(self.blocks):
            for unit in group:
                out = unit(out)
            if i in _FEATURE_GROUPS:
                stages.append(out)
        c2 = self.conv2
        pre_pool = layers.relu(c2[1](c2[0](out)))
        return layers.pool_and_classify(self.head, pre_pool, stages, None)


@register("MobileNetV2")
def mobilenetv2(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> MobileNetV2:
    return MobileNetV2(num_classes, dtype=dtype, rngs=rngs)
