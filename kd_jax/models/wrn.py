"""Wide ResNets of RepDistiller / mdistiller: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Depth 6n + 4, widen factor k: a bare 3x3 conv1 (16 channels), three NetworkBlocks
(block1..3, widths 16k, 32k, 64k, strides 1, 2, 2) of n pre-activation blocks, then the
head bn1 -> ReLU -> global average pool -> fc. Dropout is 0 in every reference config and
is not implemented. Attribute names follow the PyTorch tree
(blockS.layer.i.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc).

Initialisation (reference): convs normal(0, sqrt(2 / (k*k*out))) (= kaiming fan_out),
BN weight 1 / bias 0, fc weight PyTorch's default uniform with the bias ZEROED.

Reference quirk, reproduced: the pre-activation features are built by calling
block2.layer.0.bn1, block3.layer.0.bn1 and the head bn1 a second time on the stage outputs
(the inputs they already normalised). In training mode each such call updates the running
statistics again, so these three BatchNorms take two momentum steps per training step:
running <- 0.9 * (0.9 * running + 0.1 * s) + 0.1 * s.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers
from kd_jax.models.registry import register

Features = dict[str, Any]


class WideBasicBlock(nnx.Module):
    """Pre-activation block: a = relu(bn1(x)); y = conv2(relu(bn2(conv1(a)))).

    Output x + y when the width is unchanged, else convShortcut(a) + y (1x1 conv with the
    block's stride, applied to the ACTIVATED input, as the reference does).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, *,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.bn1 = layers.BatchNorm(in_planes, dtype=dtype)
        self.conv1 = layers.conv(in_planes, out_planes, 3, stride=stride, padding=1, dtype=dtype,
                                 rngs=rngs)
        self.bn2 = layers.BatchNorm(out_planes, dtype=dtype)
        self.conv2 = layers.conv(out_planes, out_planes, 3, padding=1, dtype=dtype, rngs=rngs)
        # The reference projects iff the widths differ (its stride-2 blocks always widen).
        if in_planes != out_planes:
            self.convShortcut = layers.conv(in_planes, out_planes, 1, stride=stride, dtype=dtype,
                                            rngs=rngs)
        else:
            self.convShortcut = None

    def __call__(self, x: jax.Array) -> jax.Array:
        a = layers.relu(self.bn1(x))
        y = self.conv2(layers.relu(self.bn2(self.conv1(a))))
        return (x if self.convShortcut is None else self.convShortcut(a)) + y


class NetworkBlock(nnx.Module):
    """A stage: `layer` holds the blocks (the reference's nn.Sequential of the same name)."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, *,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.layer = nnx.List([
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                           dtype=dtype, rngs=rngs)
            for i in range(num_blocks)
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.layer:
            x = block(x)
        return x


class WideResNet(nnx.Module):
    """WRN-depth-k for 32x32 inputs.

    Features: stages = [conv1, block1, block2, block3] outputs (no activation: the blocks are
    pre-activation); preact_stages = [conv1, block2.layer.0.bn1(f1), block3.layer.0.bn1(f2),
    bn1(f3)] (BN, no ReLU); pooled = mean of relu(bn1(f3)); pre_pool = relu(bn1(f3)) (not
    the last stage output).
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int, *,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.dtype = dtype
        self.conv1 = layers.conv(3, widths[0], 3, padding=1, dtype=dtype, rngs=rngs)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dtype=dtype, rngs=rngs)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dtype=dtype, rngs=rngs)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(widths[3], dtype=dtype)
        self.fc = layers.linear(widths[3], num_classes, bias_init=nnx.initializers.zeros,
                                rngs=rngs)

    @property
    def head(self) -> nnx.Linear:
        return self.fc

    def __call__(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """x (B, 32, 32, 3) -> logits (B, K) float32, features."""
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pre_pool = layers.relu(self.bn1(f3))
        # Second calls, as in the reference: in training mode they update the running
        # statistics of these BatchNorms a second time (see the module docstring).
        preacts = [f0, self.block2.layer[0].bn1(f1), self.block3.layer[0].bn1(f2), self.bn1(f3)]
        # The global average pool = avg_pool2d(8) on the 8x8 map.
        return layers.pool_and_classify(self.fc, pre_pool, [f0, f1, f2, f3], preacts)


CONFIGS: dict[str, tuple[int, int]] = {  # name: (depth, widen factor)
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}


def _register(name: str, depth: int, widen_factor: int) -> None:
    @register(name)
    def build(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, dtype=dtype, rngs=rngs)

    build.__name__ = name
    build.__doc__ = f"WRN-{depth}-{widen_factor} for CIFAR."


for _name, (_depth, _k) in CONFIGS.items():
    _register(_name, _depth, _k)
