"""Shapes of a model's outputs without building it for real (abstract init, no FLOPs).

    pre_pool_shape("resnet32x4", 100, 32)   # (8, 8, 256)
    pre_pool_shape("MobileNetV2", 100, 32)  # (2, 2, 1280)

Used where a value depends on a model's feature-map size before anything is initialised,
e.g. MSDCRD's window sizes when a config is built (kd_jax.methods.msdcrd).
"""

from __future__ import annotations

import functools

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
