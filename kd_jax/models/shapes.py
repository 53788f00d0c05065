"""Shapes of a model's outputs without building it for real (abstract init, no FLOPs).

    pre_pool_shape("resnet32x4", 100, 32)   # (8, 8, 256)
    pre_pool_shape("MobileNetV2", 100, 32)  # (2, 2, 1280)

Used where a value depends on a model's feature-map size before anything is initialised,
e.g. MSDCRD's window sizes when a config is built (kd_jax.methods.msdcrd).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models.registry import create


@functools.lru_cache(maxsize=None)
def pre_pool_shape(arch: str, num_classes: int, image_size: int) -> tuple[int, int, int]:
    """(H, W, C) of `features["pre_pool"]` of model `arch` on (image_size, image_size) inputs.

    The model is created and run under `jax.eval_shape`: initialisers and the forward pass
    are traced, never executed, so no parameter is materialised (about 0.1-1.5 s of tracing
    per model on CPU). Cached per (arch, num_classes, image_size).
    """

    def forward(images):
        model = create(arch, num_classes, rngs=nnx.Rngs(0))
        model.eval()
        _, features = model(images)
        return features["pre_pool"]

    out = jax.eval_shape(forward,
                         jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
    _, height, width, channels = out.shape
    return int(height), int(width), int(channels)


class ConvShape(NamedTuple):
    """One convolution as a model runs it: square kernel, symmetric padding, input map."""
    kernel: int
    stride: int
    padding: int
    groups: int
    in_channels: int
    out_channels: int
    height: int   # of the input map
    width: int

    def label(self) -> str:
        """'3x3/2 p1 g58 58->58 @32x32' (g only for grouped convolutions)."""
        g = f" g{self.groups}" if self.groups > 1 else ""
        return (f"{self.kernel}x{self.kernel}/{self.stride} p{self.padding}{g} "
                f"{self.in_channels}->{self.out_channels} @{self.height}x{self.width}")


@functools.lru_cache(maxsize=None)
def conv_shapes(arch: str, num_classes: int = 100, image_size: int = 32) -> tuple[ConvShape, ...]:
    """The distinct convolutions of model `arch` on (image_size, image_size) RGB inputs, in
    the order the forward pass (eval mode, abstract as in `pre_pool_shape`) first runs them.

    Used by the tests and the benchmark of the convolution formulations
    (kd_jax.models.layers, benchmarks/conv_formulations.py).
    """
    found: dict[ConvShape, None] = {}

    def record(lhs, rhs, strides, padding, *args, feature_group_count=1, **kwargs):
        (pad, _), _ = padding
        found[ConvShape(rhs.shape[0], strides[0], pad, feature_group_count, lhs.shape[-1],
                        rhs.shape[-1], lhs.shape[1], lhs.shape[2])] = None
        return jax.lax.conv_general_dilated(lhs, rhs, strides, padding, *args,
                                            feature_group_count=feature_group_count, **kwargs)

    def forward(images):
        model = create(arch, num_classes, rngs=nnx.Rngs(0))
        model.eval()
        for _, module in nnx.iter_graph(model):
            if isinstance(module, nnx.Conv):
                module.conv_general_dilated = record
        logits, _ = model(images)
        return logits

    jax.eval_shape(forward, jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
    return tuple(found)
