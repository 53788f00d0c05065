"""ImageNet ResNet18/34/50 with torchvision's topology and state_dict keys, NHWC.

  conv1 (7x7 stride 2 pad 3, 3 -> 64), bn1, ReLU, max-pool 3 stride 2 pad 1
  layer1..layer4  widths 64, 128, 256, 512 (x4 for Bottleneck), strides 1, 2, 2, 2;
                  BasicBlock [2,2,2,2] / [3,4,6,3], Bottleneck [3,4,6,3] with the stride on
                  the 3x3 (torchvision v1.5); projection shortcut "downsample.{0,1}"
                  (conv1x1 stride + BN) when the stride or width changes
  avgpool (global; the reference's AvgPool(7) on the 7x7 map), fc 512*e -> K
Init as the reference (mdistiller/models/imagenet/resnet.py): convs normal(0, sqrt(2 / (k*k*out))),
BN weight 1 / bias 0, fc PyTorch default. Features as the reference: "preact_stages" =
[stem, the last residual sum of each layer before its ReLU], "stages" = their ReLUs (the
stem entry at 112x112, before the max-pool), "pre_pool" = relu(layer4) (B, 7, 7, C).

The stem entry is relu(bn1(conv1(x))) in BOTH lists: the reference keeps `stem = x` (an
alias of the bn1 output) and then applies its in-place `nn.ReLU(inplace=True)` to x, which
overwrites the stored tensor; its preact_feats[0] is therefore already activated (the dump
imagenet_ResNet18.txt shows min 0.000 there).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers
from kd_jax.models.registry import register
# The CIFAR blocks use torchvision's key layout ("downsample.{0,1}") and its v1.5 stride
# placement, with the same conv init (normal(0, sqrt(2 / (k*k*out))) = kaiming fan_out).
from kd_jax.models.resnet_cifar import BasicBlock, Bottleneck, make_stage


class ResNet(nnx.Module):
    """torchvision-topology ResNet; `logits, features = model(x)` with x (B, H, W, 3)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: tuple[int, ...],
                 num_classes: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.conv1 = layers.conv(3, 64, 7, stride=2, padding=3, dtype=dtype, rngs=rngs)
        self.bn1 = layers.BatchNorm(64, dtype=dtype)
        inplanes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            stage, inplanes = make_stage(block, inplanes, planes, n, 1 if i == 0 else 2,
                                         dtype=dtype, rngs=rngs)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = layers.linear(inplanes, num_classes, rngs=rngs)

    @property
    def head(self) -> nnx.Linear:
        return self.fc

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict]:
        # Activated: the reference's in-place ReLU also overwrites its stored stem feature.
        stem = layers.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        out = layers.max_pool(stem, 3, 2, 1)
        preacts = [stem]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out, preact = layers.run_stage(layer, out)
            preacts.append(preact)
        return layers.pool_and_classify(self.head, out, [layers.relu(p) for p in preacts],
                                        preacts)


@register("imagenet_ResNet18")
def imagenet_resnet18(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, dtype=dtype, rngs=rngs)


@register("imagenet_ResNet34")
def imagenet_resnet34(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, dtype=dtype, rngs=rngs)


@register("imagenet_ResNet50")
def imagenet_resnet50(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, dtype=dtype, rngs=rngs)
