"""ShuffleNet V2 of the CIFAR zoo ("ShuffleV2": net size 1, widths 116/232/464, units 3/7/3,
last conv 1024), NHWC.

Mirrors mdistiller's `mdistiller/models/cifar/ShuffleNetv2.py`:
  conv1, bn1   conv1x1 (3 -> 24) + BN + ReLU, no pooling
  layerS.0     DownBlock, two stride-2 branches of width/2 each:
               left  dw3x3/2 + BN (conv1, bn1) -> 1x1 + BN + ReLU (conv2, bn2)
               right 1x1 + BN + ReLU (conv3, bn3) -> dw3x3/2 + BN (conv4, bn4)
                     -> 1x1 + BN + ReLU (conv5, bn5)
               output shuffle(concat(left, right), 2)
  layerS.i>0   BasicBlock: split channels in half (x1, x2); z = 1x1 + BN + ReLU -> dw3x3 + BN
               -> 1x1 + BN of x2; output shuffle(concat(x1, relu(z)), 2). The last block of
               a stage also returns its pre-activation concat(x1, z), WITHOUT the shuffle.
  conv2, bn2   conv1x1 (464 -> 1024) + BN + ReLU
  linear       global average (the reference's avg_pool2d(4) on the 4x4 map) -> 1024 -> K
All layers use PyTorch's default initialisation. "pre_pool" is the conv2 output
(B, 4, 4, 1024) on 32x32 inputs, NOT the last stage.

The CUB-200 variant (kd_jax/models/cub.py) swaps conv1 for a conv7x7 stride 2 pad 3.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers
from kd_jax.models.registry import register
from kd_jax.models.shufflenetv1 import channel_shuffle


def _conv(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0,
          groups: int = 1, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    return layers.conv(cin, cout, kernel, stride=stride, padding=padding, groups=groups,
                       kernel_init=layers.torch_default_kernel_init, dtype=dtype, rngs=rngs)


def _dw3x3(c: int, stride: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    return _conv(c, c, 3, stride=stride, padding=1, groups=c, dtype=dtype, rngs=rngs)


class BasicBlock(nnx.Module):
    """Split / transform half / concat / shuffle unit; returns (output, pre-activation)."""

    def __init__(self, in_channels: int, *, split_ratio: float = 0.5, dtype: Any,
                 rngs: nnx.Rngs):
        c = int(in_channels * split_ratio)
        self.split = c
        self.conv1 = _conv(c, c, 1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(c, dtype=dtype)
        self.conv2 = _dw3x3(c, 1, dtype=dtype, rngs=rngs)
        self.bn2 = layers.BatchNorm(c, dtype=dtype)
        self.conv3 = _conv(c, c, 1, dtype=dtype, rngs=rngs)
        self.bn3 = layers.BatchNorm(c, dtype=dtype)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x1, x2 = x[..., :self.split], x[..., self.split:]
        z = layers.relu(self.bn1(self.conv1(x2)))
        z = self.bn2(self.conv2(z))
        z = self.bn3(self.conv3(z))
        out = channel_shuffle(jnp.concatenate([x1, layers.relu(z)], axis=-1), 2)
        return out, jnp.concatenate([x1, z], axis=-1)


class DownBlock(nnx.Module):
    """Stride-2 unit with two branches of out_channels // 2 each, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int, *, dtype: Any, rngs: nnx.Rngs):
        mid = out_channels // 2
        self.conv1 = _dw3x3(in_channels, 2, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(in_channels, dtype=dtype)
        self.conv2 = _conv(in_channels, mid, 1, dtype=dtype, rngs=rngs)
        self.bn2 = layers.BatchNorm(mid, dtype=dtype)
        self.conv3 = _conv(in_channels, mid, 1, dtype=dtype, rngs=rngs)
        self.bn3 = layers.BatchNorm(mid, dtype=dtype)
        self.conv4 = _dw3x3(mid, 2, dtype=dtype, rngs=rngs)
        self.bn4 = layers.BatchNorm(mid, dtype=dtype)
        self.conv5 = _conv(mid, mid, 1, dtype=dtype, rngs=rngs)
        self.bn5 = layers.BatchNorm(mid, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        left = self.bn1(self.conv1(x))
        left = layers.relu(self.bn2(self.conv2(left)))
        right = layers.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = layers.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nnx.Module):
    """CIFAR ShuffleNet V2; `logits, features = model(x)` with x (B, H, W, 3)."""

    def __init__(self, num_classes: int, *, out_channels=(116, 232, 464, 1024),
                 num_blocks=(3, 7, 3), dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.conv1 = _conv(3, 24, 1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(24, dtype=dtype)
        cin = 24
        stages = []
        for width, n in zip(out_channels[:3], num_blocks):
            units = [DownBlock(cin, width, dtype=dtype, rngs=rngs)]
            units += [BasicBlock(width, dtype=dtype, rngs=rngs) for _ in range(n)]
            stages.append(nnx.List(units))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = _conv(cin, out_channels[3], 1, dtype=dtype, rngs=rngs)
        self.bn2 = layers.BatchNorm(out_channels[3], dtype=dtype)
        self.linear = layers.linear(out_channels[3], num_classes, rngs=rngs)

    @property
    def head(self) -> nnx.Linear:
        return self.linear

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict]:
        out = layers.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        stages, preacts = [out], [out]
        for layer in (self.layer1, self.layer2, self.layer3):
            out = layer[0](out)
            for unit in layer[1:]:
                out, preact = unit(out)
            stages.append(out)
            preacts.append(preact)
        pre_pool = layers.relu(self.bn2(self.conv2(out)))
        return layers.pool_and_classify(self.head, pre_pool, stages, preacts)


@register("ShuffleV2")
def shufflev2(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, dtype=dtype, rngs=rngs)
