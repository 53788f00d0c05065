"""CIFAR ResNets of RepDistiller / mdistiller: resnet8 ... resnet110, resnet8x4, resnet32x4.

Depth 6n + 2: a 3x3 stem (conv1, bn1, ReLU) and three stages (layer1..3, strides 1, 2, 2)
of n BasicBlocks each, then ReLU'd features -> global average pool -> fc. Attribute names
follow the PyTorch module tree (conv1, bn1, layerS.i.{conv1,bn1,conv2,bn2,downsample.0/1},
fc), so converted state_dicts map key for key.

Initialisation (reference): convs kaiming_normal(fan_out, relu), BN weight 1 / bias 0,
fc PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

BasicBlock, Bottleneck and make_stage are shared with the CIFAR ResNet18/34/50
(resnet_cifar_large.py, shortcut_name="shortcut"); with the default "downsample" they have
the torchvision key layout too.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers
from kd_jax.models.registry import register

Features = dict[str, Any]


def _projection(in_planes: int, out_planes: int, stride: int, needed: bool, *,
                dtype: Any, rngs: nnx.Rngs) -> nnx.List | None:
    """The projection shortcut [conv1x1(stride), BN] when `needed`, else None (identity)."""
    if not needed:
        return None
    return nnx.List([
        layers.conv(in_planes, out_planes, 1, stride=stride, dtype=dtype, rngs=rngs),
        layers.BatchNorm(out_planes, dtype=dtype),
    ])


class _ResidualBlock(nnx.Module):
    """Shared shortcut handling: the projection lives under `shortcut_name`, as in PyTorch
    ("downsample" in resnet.py / torchvision, "shortcut" in the CIFAR ResNet18/34/50)."""

    shortcut_name: str

    def _add_shortcut(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        projection = getattr(self, self.shortcut_name)
        shortcut = x if projection is None else projection[1](projection[0](x))
        return residual + shortcut


class BasicBlock(_ResidualBlock):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut, then ReLU (post-activation ResNet).

    The shortcut is a projection [conv1x1(stride), BN] whenever the stride is not 1 or the
    width changes, else the identity.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *,
                 shortcut_name: str = "downsample", dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.shortcut_name = shortcut_name
        self.conv1 = layers.conv(in_planes, planes, 3, stride=stride, padding=1, dtype=dtype,
                                 rngs=rngs)
        self.bn1 = layers.BatchNorm(planes, dtype=dtype)
        self.conv2 = layers.conv(planes, planes, 3, padding=1, dtype=dtype, rngs=rngs)
        self.bn2 = layers.BatchNorm(planes, dtype=dtype)
        needed = stride != 1 or in_planes != planes
        setattr(self, shortcut_name,
                _projection(in_planes, planes, stride, needed, dtype=dtype, rngs=rngs))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, H, W, Cin) -> (relu(out), out): the block output and its pre-activation."""
        out = layers.relu(self.bn1(self.conv1(x)))
        preact = self._add_shortcut(x, self.bn2(self.conv2(out)))
        return layers.relu(preact), preact


class Bottleneck(_ResidualBlock):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN + shortcut, then ReLU.

    The stride sits on the 3x3 conv (torchvision >= 0.3 and the CIFAR ResNet50 alike).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *,
                 shortcut_name: str = "downsample", dtype: Any = jnp.float32, rngs: nnx.Rngs):
        out_planes = planes * self.expansion
        self.shortcut_name = shortcut_name
        self.conv1 = layers.conv(in_planes, planes, 1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(planes, dtype=dtype)
        self.conv2 = layers.conv(planes, planes, 3, stride=stride, padding=1, dtype=dtype,
                                 rngs=rngs)
        self.bn2 = layers.BatchNorm(planes, dtype=dtype)
        self.conv3 = layers.conv(planes, out_planes, 1, dtype=dtype, rngs=rngs)
        self.bn3 = layers.BatchNorm(out_planes, dtype=dtype)
        needed = stride != 1 or in_planes != out_planes
        setattr(self, shortcut_name,
                _projection(in_planes, out_planes, stride, needed, dtype=dtype, rngs=rngs))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, H, W, Cin) -> (relu(out), out): the block output and its pre-activation."""
        out = layers.relu(self.bn1(self.conv1(x)))
        out = layers.relu(self.bn2(self.conv2(out)))
        preact = self._add_shortcut(x, self.bn3(self.conv3(out)))
        return layers.relu(preact), preact


def make_stage(block: type[BasicBlock] | type[Bottleneck], in_planes: int, planes: int,
               num_blocks: int, stride: int, *, shortcut_name: str = "downsample",
               dtype: Any = jnp.float32, rngs: nnx.Rngs) -> tuple[nnx.List, int]:
    """num_blocks blocks, the first with `stride`; returns (nnx.List, output width)."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(block(in_planes, planes, stride if i == 0 else 1, shortcut_name=shortcut_name,
                            dtype=dtype, rngs=rngs))
        in_planes = planes * block.expansion
    return nnx.List(blocks), in_planes



class CifarResNet(nnx.Module):
    """ResNet for 32x32 inputs with widths (stem, stage1, stage2, stage3) and n blocks per stage.

    Features: stages = [stem, layer1, layer2, layer3] outputs (after ReLU); preact_stages =
    [stem, pre-ReLU sums of the last block of each stage]; pre_pool = layer3 output.
    """

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int, *,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be (stem, stage1, stage2, stage3), got {widths}")
        n = (depth - 2) // 6
        self.dtype = dtype
        self.conv1 = layers.conv(3, widths[0], 3, padding=1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(widths[0], dtype=dtype)
        in_planes = widths[0]
        for index, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            stage, in_planes = make_stage(BasicBlock, in_planes, planes, n, stride, dtype=dtype,
                                          rngs=rngs)
            setattr(self, f"layer{index}", stage)
        self.fc = layers.linear(in_planes, num_classes, rngs=rngs)

    @property
    def head(self) -> nnx.Linear:
        return self.fc

    def __call__(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """x (B, 32, 32, 3) -> logits (B, K) float32, features."""
        x = layers.relu(self.bn1(self.conv1(x)))
        stages, preacts = [x], [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            x, preact = layers.run_stage(stage, x)
            stages.append(x)
            preacts.append(preact)
        # AvgPool2d(8) on the 8x8 map of a 32x32 input is the global average.
        return layers.pool_and_classify(self.fc, x, stages, preacts)


# name: (depth, widths)
CONFIGS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    @register(name)
    def build(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes, dtype=dtype, rngs=rngs)

    build.__name__ = name
    build.__doc__ = f"CIFAR {name}: depth {depth}, widths {widths}."


for _name, (_depth, _widths) in CONFIGS.items():
    _register(_name, _depth, _widths)
