"""The training set on the devices: the host sends indices and crop/flip draws, the jitted step
builds the batch.

The host path (`InMemoryDataset.train_batches`) gathers, pads, crops, flips and normalises
every batch in numpy and copies float32 images to the devices; at batch 64 that costs the host
more than a whole step of a small model on an accelerator. Here the uint8 train set and its
labels are put on the devices once (replicated: CIFAR-100 is 150 MB), and each step's input
is one int32 array of draws (B, 4) = (example index, crop offset y, crop offset x, flip) taken
from the SAME (seed, epoch, step) numpy streams as the host path (`train_draws`), so:

- the batch a step sees equals the host path's bit for bit on the uint8 geometry, and to
  1 ulp after normalisation (the same float32 ``x * scale - shift``; XLA may fuse it into one
  multiply-add where numpy rounds twice);
- resumption stays exact (draws are a function of (seed, epoch, step) only), and each host
  sends only its own slice of the global batch.

`dispatches` groups the draws of up to k consecutive steps of one epoch into (k, b, 4), the
input of kd_jax.train.step.make_multi_train_step (k steps per call).
"""

from __future__ import annotations

from typing import Iterator

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.data import augment
from kd_jax.data.in_memory import InMemoryDataset

# dataset.on_device=None (auto) puts the train set on the devices when its uint8 images and
# labels take at most this many bytes per device (replicated). CIFAR-100: 154 MB.
DEVICE_BUDGET_BYTES = 1 << 30

# steps_per_dispatch=0 (auto): steps per call by platform. CPU: 1, measured
# (benchmarks/host_cost.py; README "Input on the devices"): there the host's share of a step
# is small already at k = 1, a step in XLA's rolled loop ran several times slower, and an
# unrolled k-step program compiles ~k times longer (minutes for the quickstart's lockstep step).
# Accelerators: 8, the CIFAR speed-run practice, not yet measured here.
AUTO_STEPS_PER_DISPATCH = {"cpu": 1}
AUTO_STEPS_PER_DISPATCH_ACCELERATOR = 8


def steps_per_dispatch(requested: int, platform: str) -> int:
    """config.steps_per_dispatch, 0 resolved for `platform` ("cpu", "gpu", "tpu")."""
    if requested < 0:
        raise ValueError(f"steps_per_dispatch={requested} must be >= 0 (0: by platform)")
    return requested or AUTO_STEPS_PER_DISPATCH.get(platform,
                                                    AUTO_STEPS_PER_DISPATCH_ACCELERATOR)


# Columns of a draws array (..., 4).
INDEX, OFFSET_Y, OFFSET_X, FLIP = range(4)


@flax.struct.dataclass
class DeviceTrainSet:
    """The train set as device arrays (replicated over the mesh) and its normalisation.

    Passed to the jitted step as an argument (never donated, never a compile-time constant).
    """

    images: jax.Array     # uint8 (N, H, W, C)
    labels: jax.Array     # int32 (N,)
    scale: jax.Array      # float32 (C,): 1 / (255 std)
    shift: jax.Array      # float32 (C,): mean / std
    pad: int = flax.struct.field(pytree_node=False, default=4)


def train_set_bytes(ds: InMemoryDataset) -> int:
    images, labels = ds.train_arrays
    return images.nbytes + labels.nbytes


def fits(ds) -> bool:
    """True where `ds` can take the on-device path by default: an in-memory dataset whose
    train set fits DEVICE_BUDGET_BYTES."""
    return isinstance(ds, InMemoryDataset) and train_set_bytes(ds) <= DEVICE_BUDGET_BYTES


def put_on_mesh(ds: InMemoryDataset, mesh: Mesh) -> DeviceTrainSet:
    """Copies the uint8 train set and labels to every device of `mesh` (all hosts: each holds
    the whole set, see InMemoryDataset), once."""
    if not isinstance(ds, InMemoryDataset):
        raise ValueError(f"dataset {ds.info.name!r} is not held in memory: it cannot be put on "
                         "the devices (set dataset.on_device=False)")
    replicated = NamedSharding(mesh, P())

    def put(x: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])

    images, labels = ds.train_arrays
    mean, std, pad = ds.augmentation
    scale, shift = augment.normalize_affine(mean, std)
    return DeviceTrainSet(put(images), put(labels.astype(np.int32)), put(scale), put(shift),
                          pad=pad)


def pack_draws(draws) -> np.ndarray:
    """[TrainDraw] of k steps -> int32 (k, b, 4): index, offset_y, offset_x, flip."""
    return np.stack([np.stack([d.index, d.params.offset_y, d.params.offset_x, d.params.flip],
                              axis=-1) for d in draws]).astype(np.int32)


def dispatches(ds: InMemoryDataset, epoch: int, global_batch_size: int, seed: int,
               start_step: int, stop_step: int, steps_per_dispatch: int
               ) -> Iterator[np.ndarray]:
    """Draws of steps [start_step, stop_step) of `epoch` (steps counted within the epoch),
    in chunks of `steps_per_dispatch`; the last chunk holds the remainder.

    Yields this host's int32 (k, b, 4) arrays, b = global batch / process count.
    """
    if steps_per_dispatch < 1:
        raise ValueError(f"steps_per_dispatch={steps_per_dispatch} must be >= 1")
    draws = ds.train_draws(epoch, global_batch_size, seed, start_step)
    step = start_step
    while step < stop_step:
        k = min(steps_per_dispatch, stop_step - step)
        yield pack_draws([next(draws) for _ in range(k)])
        step += k


def draws_sharding(mesh: Mesh) -> NamedSharding:
    """(k, B, 4) draws: the batch axis split over 'data', like the host path's batches."""
    return NamedSharding(mesh, P(None, "data"))


def crop_flip_gather(images: jax.Array, draws: jax.Array, pad: int) -> jax.Array:
    """uint8 (B, H, W, C) pad-crop-flip of rows draws[:, INDEX] of `images` (N, H, W, C).

    Equals augment.pad_crop_flip(images[index], ...) bit for bit, in ONE gather from the
    train set: the padded image is never built; source pixels outside the image read 0.
    """
    _, height, width, _ = images.shape
    index, flip = draws[:, INDEX], draws[:, FLIP].astype(bool)
    rows = draws[:, OFFSET_Y, None] + jnp.arange(height) - pad          # (B, H)
    cols = draws[:, OFFSET_X, None] + jnp.arange(width) - pad           # (B, W)
    cols = jnp.where(flip[:, None], cols[:, ::-1], cols)
    valid = (((rows >= 0) & (rows < height))[:, :, None]
             & ((cols >= 0) & (cols < width))[:, None, :])              # (B, H, W)
    pixels = images[index[:, None, None], jnp.clip(rows, 0, height - 1)[:, :, None],
                    jnp.clip(cols, 0, width - 1)[:, None, :]]           # (B, H, W, C)
    return jnp.where(valid[..., None], pixels, jnp.zeros((), images.dtype))


def train_batch(train_set: DeviceTrainSet, draws: jax.Array) -> dict:
    """draws int32 (B, 4) -> {"image": float32 (B, H, W, C), "label": int32 (B,)}: the host
    path's CIFAR train transform (pad, crop, flip, normalise) inside the jitted step."""
    geometry = crop_flip_gather(train_set.images, draws, train_set.pad)
    image = geometry.astype(jnp.float32) * train_set.scale - train_set.shift
    return {"image": image, "label": train_set.labels[draws[:, INDEX]]}
