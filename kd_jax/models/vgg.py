"""CIFAR VGGs with BatchNorm of RepDistiller / mdistiller: vgg8, vgg11, vgg13, vgg16, vgg19.

Five blocks (block0..4) of [conv3x3(bias) -> BN -> ReLU] with widths 64, 128, 256, 512, 512,
each block WITHOUT its final ReLU (the forward applies it, keeping the pre-activation).
Max-pool 2/2 after blocks 0, 1, 2; after block 3 only for 64x64 inputs (so on 32x32 inputs
blocks 3 and 4 both run at 4x4). Head: global average -> `classifier` linear 512 -> K.

Attribute names follow the PyTorch nn.Sequential indices: in block j, the i-th conv is
`blockj.{3i}` and its BN `blockj.{3i+1}`; slot 3i+2 (ReLU) holds None.

Initialisation (reference): conv weight normal(0, sqrt(2 / (k*k*out))) with zero bias,
BN weight 1 / bias 0, classifier weight normal(0, 0.01) with zero bias.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers
from kd_jax.models.registry import register

Features = dict[str, Any]


def _block(in_channels: int, widths: Sequence[int], *, dtype: Any, rngs: nnx.Rngs) -> nnx.List:
    """[conv, BN, None(ReLU)] per width, minus the trailing ReLU slot."""
    slots: list[nnx.Module | None] = []
    for width in widths:
        slots += [
            layers.conv(in_channels, width, 3, padding=1, use_bias=True,
                        bias_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs),
            layers.BatchNorm(width, dtype=dtype),
            None,
        ]
        in_channels = width
    return nnx.List(slots[:-1])


def _run_block(block: nnx.List, x: jax.Array) -> jax.Array:
    """Applies conv/BN slots with ReLU in the None slots (no ReLU after the last BN)."""
    for slot in block:
        x = layers.relu(x) if slot is None else slot(x)
    return x


class VGG(nnx.Module):
    """VGG-BN for 32x32 (or 64x64) inputs; `config` lists the conv widths of the 5 blocks.

    Features: stages = the 5 block outputs after ReLU; preact_stages = [stage 0 (after ReLU,
    as the reference), blocks 1..4 before ReLU]; pre_pool = stage 4; pooled its mean.
    """

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int, *,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if len(config) != 5:
            raise ValueError(f"VGG config needs 5 blocks, got {len(config)}")
        self.dtype = dtype
        in_channels = 3
        for j, widths in enumerate(config):
            setattr(self, f"block{j}", _block(in_channels, widths, dtype=dtype, rngs=rngs))
            in_channels = widths[-1]
        self.classifier = layers.linear(in_channels, num_classes,
                                        kernel_init=layers.normal_init(0.01),
                                        bias_init=nnx.initializers.zeros, rngs=rngs)

    @property
    def head(self) -> nnx.Linear:
        return self.classifier

    def __call__(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """x (B, H, W, 3), H = W = 32 (or 64) -> logits (B, K) float32, features."""
        height = x.shape[1]
        blocks = (self.block0, self.block1, self.block2, self.block3, self.block4)
        stages, preacts = [], []
        for j, block in enumerate(blocks):
            # The reference pools before blocks 1, 2, 3 and, for 64x64 inputs only, block 4.
            if j in (1, 2, 3) or (j == 4 and height == 64):
                x = layers.max_pool(x, 2)
            preact = _run_block(block, x)
            x = layers.relu(preact)
            stages.append(x)
            # The reference's first pre-activation feature is the activated block0 output.
            preacts.append(x if j == 0 else preact)
        return layers.pool_and_classify(self.classifier, x, stages, preacts)


CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _register(name: str, config: tuple[tuple[int, ...], ...]) -> None:
    @register(name)
    def build(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> VGG:
        return VGG(config, num_classes, dtype=dtype, rngs=rngs)

    build.__name__ = name
    build.__doc__ = f"CIFAR {name} with BatchNorm, conv widths {config}."


for _name, _config in CONFIGS.items():
    _register(_name, _config)
