"""Helpers for tests, smoke runs and benchmarks: a tiny CNN, a fixed random batch, a tiny
published table, and the programs JAX compiles in a block.

Outside the training path: no module of kd_jax imports it (tests/test_architecture.py
checks), so the tiny models exist in the registry only where a test or benchmark asks.

Importing this module registers "tiny_cnn" (width 8) and "tiny_cnn_wide" (width 16):
conv3x3 -> BN -> ReLU -> conv3x3/s2 -> BN -> ReLU -> global average pool -> fc. Attribute
names follow a torch module tree (conv1, bn1, conv2, bn2, fc), so a torch twin can share
weights in parity tests.

It also registers the table "tiny" (`python -m kd_jax.reproduce`): 2 pairs of the tiny CNNs
x KD and DKD on synthetic data, with CIFAR-100's recipes and made-up published numbers.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.data import catalog
from kd_jax.models import layers, registry
from kd_jax.reference import published
from kd_jax.reference import table as ref_table


class TinyCNN(nnx.Module):
    def __init__(self, width: int, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        kw = {} if dtype is None else {"dtype": dtype}
        self.conv1 = layers.conv(3, width, 3, padding=1, rngs=rngs, **kw)
        self.bn1 = layers.BatchNorm(width, **kw)
        self.conv2 = layers.conv(width, 2 * width, 3, stride=2, padding=1, rngs=rngs, **kw)
        self.bn2 = layers.BatchNorm(2 * width, **kw)
        self.fc = layers.linear(2 * width, num_classes, rngs=rngs)

    @property
    def head(self) -> nnx.Linear:
        return self.fc

    def __call__(self, x: jax.Array):
        """x: (B, H, W, 3) -> logits (B, K) float32, features (pre_pool (B, H/2, W/2, 2*width))."""
        f1 = layers.relu(self.bn1(self.conv1(x)))
        pre = self.bn2(self.conv2(f1))
        f2 = layers.relu(pre)
        pooled = layers.global_avg_pool(f2)
        feats = {"stages": [f1, f2], "preact_stages": None, "pooled": pooled, "pre_pool": f2}
        return self.fc(pooled).astype(jnp.float32), feats


def _register(name: str, width: int) -> None:
    if name not in registry.names():
        registry.register(name, reference=False)(
            lambda num_classes, dtype, rngs: TinyCNN(width, num_classes, dtype=dtype, rngs=rngs))


_register("tiny_cnn", 8)
_register("tiny_cnn_wide", 16)


# The tiny table: its pairs get recipes on the synthetic dataset (the solver and methods of
# CIFAR-100; DKD beta 8), its runs a random teacher, 24 training images and 2 epochs of 3 steps.
TINY_PAIRS = (("tiny_cnn_wide", "tiny_cnn"), ("tiny_cnn", "tiny_cnn_wide"))
for _pair in TINY_PAIRS:
    ref_table.PAIRS.setdefault(catalog.SYNTHETIC, {}).setdefault(_pair, ref_table.Pair(0.05, 8.0))
TINY_TABLE = published.Table(
    "tiny", "kd_jax.testing: tiny CNNs on synthetic data (made-up published numbers)",
    catalog.SYNTHETIC, ("kd", "dkd"),
    {TINY_PAIRS[0]: (40.0, 45.0), TINY_PAIRS[1]: (41.0, 46.0)},
    {"tiny_cnn": 30.0, "tiny_cnn_wide": 35.0},
    overrides={"dataset.num_train": 24, "dataset.num_test": 10, "dataset.num_classes": 10,
               "dataset.image_size": 16, "batch_size": 8, "num_epochs": 2,
               "optimizer.milestones": (1,), "log_every_steps": 1, "tensorboard": False,
               "progress_bar": False, "export_model": False, "teacher.checkpoint": "random"})
published.register_table(TINY_TABLE)


def random_batch(mesh: Mesh, batch_size: int, num_classes: int, image_size: int = 32,
                 seed: int = 0) -> dict:
    """{"image": (B, H, W, 3) f32 N(0, 1), "label": (B,) i32} already on `mesh`, sharded over
    'data' as the trainer's batches are: a step's input without the input pipeline."""
    rng = np.random.default_rng(seed)
    batch = {"image": rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
             "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}
    return jax.device_put(batch, NamedSharding(mesh, P("data")))


@contextlib.contextmanager
def compiled_programs() -> Iterator[list]:
    """The names of the programs JAX compiles in the block, e.g. ["jit(multi_step)"], from
    its compile log (one "Compiling <name> ..." record per compilation, persistent-cache hits
    included); the records are counted, not printed."""
    names = []

    class Names(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Compiling "):
                names.append(message.split()[1])

    handler, logger = Names(), logging.getLogger("jax")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        with jax.log_compiles(True):
            yield names
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
