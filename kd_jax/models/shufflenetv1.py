"""ShuffleNet V1 of the CIFAR zoo ("ShuffleV1": groups 3, widths 240/480/960, units 4/8/4), NHWC.

Mirrors mdistiller's `mdistiller/models/cifar/ShuffleNetv1.py`:
  conv1, bn1   conv1x1 (3 -> 24) + BN + ReLU, no pooling
  layerS.i     unit: grouped 1x1 (groups 1 when the input has 24 channels, else 3) + BN + ReLU
               -> channel shuffle (same groups) -> depthwise 3x3 (stride) + BN + ReLU
               -> grouped 1x1 (groups 3) + BN -> merge -> ReLU.
               The first unit of each stage has stride 2 and merges by concatenating
               [branch, AvgPool(3, stride 2, pad 1, padding counted)(x)] (its branch then
               produces width - input width channels); the others add x.
  linear       global average (the reference's AvgPool(4) on the 4x4 map) -> 960 -> K
All layers use PyTorch's default initialisation (the reference sets none).
Features: "stages" = [stem, layer1, layer2, layer3] outputs, "preact_stages" = the same
with each stage's last merge before its ReLU, "pre_pool" = layer3 output.

The CUB-200 variant (kd_jax/models/cub.py) swaps conv1 for a conv7x7 stride 2 pad 3.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers
from kd_jax.models.registry import register


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """PyTorch's NCHW shuffle (view (g, C/g), transpose, flatten) on the last axis of NHWC.

    Output channel j * g + i is input channel i * (C / g) + j.
    """
    *lead, c = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels not divisible by {groups} groups")
    x = x.reshape(*lead, groups, c // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


def _conv(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0,
          groups: int = 1, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    return layers.conv(cin, cout, kernel, stride=stride, padding=padding, groups=groups,
                       kernel_init=layers.torch_default_kernel_init, dtype=dtype, rngs=rngs)


class Bottleneck(nnx.Module):
    """ShuffleNet V1 unit; returns (output, pre-activation merge)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, *,
                 dtype: Any, rngs: nnx.Rngs):
        mid = int(out_planes / 4)
        # The first unit after the 24-channel stem has too few inputs for 3 groups.
        g = 1 if in_planes == 24 else groups
        self.stride = stride
        self.shuffle_groups = g
        self.conv1 = _conv(in_planes, mid, 1, groups=g, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(mid, dtype=dtype)
        self.conv2 = _conv(mid, mid, 3, stride=stride, padding=1, groups=mid, dtype=dtype,
                           rngs=rngs)
        self.bn2 = layers.BatchNorm(mid, dtype=dtype)
        self.conv3 = _conv(mid, out_planes, 1, groups=groups, dtype=dtype, rngs=rngs)
        self.bn3 = layers.BatchNorm(out_planes, dtype=dtype)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = layers.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.shuffle_groups)
        out = layers.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            shortcut = layers.avg_pool(x, 3, 2, 1, count_include_pad=True)
            preact = jnp.concatenate([out, shortcut], axis=-1)
        else:
            preact = out + x
        return layers.relu(preact), preact


class ShuffleNetV1(nnx.Module):
    """CIFAR ShuffleNet V1; `logits, features = model(x)` with x (B, H, W, 3)."""

    def __init__(self, num_classes: int, *, out_planes=(240, 480, 960), num_blocks=(4, 8, 4),
                 groups: int = 3, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.conv1 = _conv(3, 24, 1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(24, dtype=dtype)
        cin = 24
        stages = []
        for width, n in zip(out_planes, num_blocks):
            units = []
            for i in range(n):
                # The stride-2 unit concatenates its input, so its branch makes the rest.
                units.append(Bottleneck(cin, width - cin if i == 0 else width, 2 if i == 0 else 1,
                                        groups, dtype=dtype, rngs=rngs))
                cin = width
            stages.append(nnx.List(units))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = layers.linear(cin, num_classes, rngs=rngs)

    @property
    def head(self) -> nnx.Linear:
        return self.linear

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict]:
        out = layers.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        stages, preacts = [out], [out]
        for layer in (self.layer1, self.layer2, self.layer3):
            out, preact = layers.run_stage(layer, out)
            stages.append(out)
            preacts.append(preact)
        return layers.pool_and_classify(self.head, out, stages, preacts)


@register("ShuffleV1")
def shufflev1(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, dtype=dtype, rngs=rngs)
