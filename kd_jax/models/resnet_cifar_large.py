"""CIFAR variants of ResNet18 / ResNet34 / ResNet50 (mdistiller resnetv2.py).

Stem conv3x3 stride 1 (64) -> BN -> ReLU, no max-pool; four stages layer1..4 of widths
64, 128, 256, 512 (x4 for Bottleneck) with strides 1, 2, 2, 2; global average pool ->
`linear`. The projection shortcut is stored as `shortcut.0/1` (conv1x1, BN), as in PyTorch.

Initialisation (reference): convs kaiming_normal(fan_out, relu), BN weight 1 / bias 0,
linear PyTorch's default uniform.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers
from kd_jax.models.registry import register
from kd_jax.models.resnet_cifar import BasicBlock, Bottleneck, make_stage

Features = dict[str, Any]


class CifarResNetLarge(nnx.Module):
    """ResNet18/34/50 for 32x32 inputs.

    Features: stages = [stem, layer1..4 outputs] (after ReLU); preact_stages = [stem,
    pre-ReLU sums of the last block of each stage]; pre_pool = layer4 output (B, 4, 4, C).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: Sequence[int],
                 num_classes: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks needs 4 stages, got {num_blocks}")
        self.dtype = dtype
        self.conv1 = layers.conv(3, 64, 3, padding=1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(64, dtype=dtype)
        in_planes = 64
        stage_specs = zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2))
        for index, (planes, n, stride) in enumerate(stage_specs, start=1):
            stage, in_planes = make_stage(block, in_planes, planes, n, stride,
                                          shortcut_name="shortcut", dtype=dtype, rngs=rngs)
            setattr(self, f"layer{index}", stage)
        self.linear = layers.linear(in_planes, num_classes, rngs=rngs)

    @property
    def head(self) -> nnx.Linear:
        return self.linear

    def __call__(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """x (B, 32, 32, 3) -> logits (B, K) float32, features."""
        x = layers.relu(self.bn1(self.conv1(x)))
        stages, preacts = [x], [x]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x, preact = layers.run_stage(stage, x)
            stages.append(x)
            preacts.append(preact)
        return layers.pool_and_classify(self.linear, x, stages, preacts)


CONFIGS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "ResNet18": (BasicBlock, (2, 2, 2, 2)),
    "ResNet34": (BasicBlock, (3, 4, 6, 3)),
    "ResNet50": (Bottleneck, (3, 4, 6, 3)),
}


def _register(name: str, block: type[BasicBlock] | type[Bottleneck],
              num_blocks: tuple[int, ...]) -> None:
    @register(name)
    def build(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> CifarResNetLarge:
        return CifarResNetLarge(block, num_blocks, num_classes, dtype=dtype, rngs=rngs)

    build.__name__ = name
    build.__doc__ = f"CIFAR {name}: {block.__name__} x {num_blocks}."


for _name, (_block, _num_blocks) in CONFIGS.items():
    _register(_name, _block, _num_blocks)
