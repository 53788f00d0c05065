"""The training set on the devices: the host sends indices and crop/flip draws, the jitted step
builds the batch.

The host path (`InMemoryDataset.train_batches`) gathers, pads, crops, flips and normalises
every batch in numpy and copies float32 images to the devices; at batch 64 that costs the host
more than a whole step of a small model on an accelerator. Here the uint8 train set and its
labels are put on the devices once (replicated: CIFAR-100 is 150 MB), and each step's input
is one int32 array of draws (B, 4) = (example index, crop offset y, crop offset x, flip) taken
from the SAME (seed, epoch, step) numpy streams as the host path (`train_draws`). The step
gathers the B rows of its batch from the set, then reshapes, pads, crops, flips and
normalises that small batch, so:

- the batch a step sees equals the host path's bit for bit, normalisation included: a uint8
  value is normalised by looking it up in a float32 table that the host path's own numpy
  `augment.normalize` computed (`normalize_table`), so no compiler's fusion of
  ``x * scale - shift`` into one multiply-add (XLA's CPU backend does it) can change a bit;
- resumption stays exact (draws are a function of (seed, epoch, step) only), and each host
  sends only its own slice of the global batch.

`dispatches` groups the draws of up to k consecutive steps of one epoch into (k, b, 4), the
input of kd_jax.train.step.make_multi_train_step (k steps per call).

The set is stored as rows, uint8 (N, H*W*C), not as (N, H, W, C) images: a device holds an
array in its own layout, and a TPU tiles the two minor dimensions of every array (XLA's tiled
layout, https://openxla.org/xla/tiled_layout; `device_bytes`). Images with C = 3 in the
minor dimension would take 128 lanes per pixel, about 43 times their bytes (CIFAR-100's
154 MB about 6.5 GB: tests/test_on_device.py -k tpu_tiling prints both); rows of 3072 bytes
take no lane padding. The budget
(`DEVICE_BUDGET_BYTES`) counts what the device will hold (`device_bytes`), and
`held_bytes` reads back what it does hold once the set is there.

The batches of host pipelines that end in uint8 (imagenet2012, caltech_birds2011: their
resize and crop run on the host) are finished in the step as well: `finish_host_batch` flips
and normalises them, so the host sends a quarter of the bytes of float32 images.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.data import augment
from kd_jax.data.in_memory import InMemoryDataset

# dataset.on_device=None (auto) puts the train set on the devices when its uint8 rows and
# labels take at most this many bytes per device (replicated), as the device lays them out
# (`device_bytes`). CIFAR-100: 154 MB on every platform.
DEVICE_BUDGET_BYTES = 1 << 30

LEVELS = 256   # the values of a uint8 pixel

# TPU tiling (XLA's tiled layout; Pallas TPU docs): the minor dimension of an array is padded
# to a multiple of 128 lanes and the second-minor to whole (8 sublanes x 32 bits) tiles,
# i.e. 8 rows of 4-byte elements, 16 of 2-byte, 32 of 1-byte (narrow types are packed into
# 32-bit sublanes); a rank-1 array to whole 1024-element tiles. An estimate made before the
# set is placed (the TPU compiler chooses the layout); `held_bytes` reads back the real size
# afterwards. CPU and GPU: dense buffers, the logical bytes.
TPU_LANES = 128
TPU_SUBLANE_BYTES = 8 * 4
TPU_RANK1_TILE = 1024

# steps_per_dispatch=0 (auto): steps per call by platform. CPU: 1, measured
# (benchmarks/host_cost.py; docs/data.md, "Several steps per call"): there the host's share
# of a step is small already at k = 1, a step in XLA's rolled loop ran several times slower, and an
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

    images: jax.Array     # uint8 (N, H*W*C): one row per image, (H, W, C) row-major
    labels: jax.Array     # int32 (N,)
    table: jax.Array      # float32 (C * 256,): normalize_table(mean, std)
    image_shape: tuple = flax.struct.field(pytree_node=False, default=())   # (H, W, C)
    pad: int = flax.struct.field(pytree_node=False, default=4)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def device_bytes(shape: Sequence[int], dtype, platform: str) -> int:
    """Bytes one device holds for an array of `shape` and `dtype` on `platform` ("cpu",
    "gpu", "tpu"): the logical bytes, except on TPU, where the two minor dimensions are
    padded to whole tiles (TPU_LANES, TPU_SUBLANE_BYTES): (..., S, M) -> (..., S', M'),
    M' = M rounded up to 128, S' = S rounded up to 32 / itemsize rows (at least 8)."""
    itemsize = np.dtype(dtype).itemsize
    shape = tuple(int(d) for d in shape)
    if platform != "tpu" or not shape:
        return math.prod(shape) * itemsize
    if len(shape) == 1:
        return _round_up(shape[0], TPU_RANK1_TILE) * itemsize
    *major, second, minor = shape
    rows = _round_up(second, max(TPU_SUBLANE_BYTES // itemsize, 8))
    return math.prod(major) * rows * _round_up(minor, TPU_LANES) * itemsize


def _platform() -> str:
    return jax.devices()[0].platform


def train_set_bytes(ds: InMemoryDataset, platform: str | None = None) -> int:
    """Bytes per device of `ds`'s train set on the devices (rows and labels), as `platform`
    (default: JAX's devices) lays them out."""
    platform = platform or _platform()
    images, labels = ds.train_arrays
    return (device_bytes((len(images), math.prod(images.shape[1:])), images.dtype, platform)
            + device_bytes(labels.shape, np.int32, platform))


def fits(ds, platform: str | None = None) -> bool:
    """True where `ds` can take the on-device path by default: an in-memory dataset whose
    train set takes at most DEVICE_BUDGET_BYTES per device."""
    return (isinstance(ds, InMemoryDataset)
            and train_set_bytes(ds, platform) <= DEVICE_BUDGET_BYTES)


def held_bytes(train_set: DeviceTrainSet) -> int:
    """Bytes the first device holds for `train_set`'s rows and labels, as its runtime reports
    them (jax.Array.on_device_size_in_bytes of the device's shard: the padded size on TPU),
    to set beside `train_set_bytes`' estimate."""
    return sum(x.addressable_shards[0].data.on_device_size_in_bytes()
               for x in (train_set.images, train_set.labels))


def put_on_mesh(ds: InMemoryDataset, mesh: Mesh) -> DeviceTrainSet:
    """Copies the uint8 train set (as rows (N, H*W*C)) and labels to every device of `mesh`
    (all hosts: each holds the whole set, see InMemoryDataset), once."""
    if not isinstance(ds, InMemoryDataset):
        raise ValueError(f"dataset {ds.info.name!r} is not held in memory: it cannot be put on "
                         "the devices (set dataset.on_device=False)")
    replicated = NamedSharding(mesh, P())

    def put(x: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])

    images, labels = ds.train_arrays
    mean, std, pad = ds.augmentation
    rows = images.reshape(len(images), -1)    # a view: the host keeps one copy
    return DeviceTrainSet(put(rows), put(labels.astype(np.int32)),
                          put(normalize_table(mean, std)),
                          image_shape=tuple(images.shape[1:]), pad=pad)


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


def gather_images(train_set: DeviceTrainSet, index: jax.Array) -> jax.Array:
    """uint8 (B, H, W, C): rows `index` (B,) of the set, one row (H*W*C bytes) each."""
    return train_set.images[index].reshape((-1, *train_set.image_shape))


def pad_crop_flip(images: jax.Array, draws: jax.Array, pad: int) -> jax.Array:
    """augment.pad_crop_flip on the device: zero-pad (B, H, W, C) by `pad`, take each image's
    (H, W) crop at (draws[:, OFFSET_Y], draws[:, OFFSET_X]), mirror it where draws[:, FLIP]."""
    _, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    crop = jax.vmap(lambda image, y, x: jax.lax.dynamic_slice(
        image, (y, x, 0), (height, width, channels)))(
            padded, draws[:, OFFSET_Y], draws[:, OFFSET_X])
    return jnp.where(draws[:, FLIP, None, None, None] != 0, crop[:, :, ::-1], crop)


def crop_flip_gather(train_set: DeviceTrainSet, draws: jax.Array) -> jax.Array:
    """uint8 (B, H, W, C) pad-crop-flip of rows draws[:, INDEX] of the set.

    Equals augment.pad_crop_flip(images[index], ...) bit for bit: B rows gathered from the
    set (one slice of H*W*C bytes each), the geometry on the small batch.
    """
    return pad_crop_flip(gather_images(train_set, draws[:, INDEX]), draws, train_set.pad)


def normalize_table(mean, std) -> np.ndarray:
    """float32 (C * 256,): entry c * 256 + v is augment.normalize of the value v in channel c,
    the host path's numbers bit for bit (`normalize` looks pixels up in it)."""
    channels = len(mean)
    levels = np.broadcast_to(np.arange(LEVELS, dtype=np.uint8)[:, None], (LEVELS, channels))
    return np.ascontiguousarray(augment.normalize(levels, mean, std).T).reshape(-1)


def normalize(images: jax.Array, table: jax.Array) -> jax.Array:
    """uint8 (..., C) -> float32 ``(x / 255 - mean) / std``, by lookup in `table`
    (`normalize_table`): equal to numpy's augment.normalize bit for bit on every backend.
    Arithmetic in the step would not be: XLA's CPU backend fuses ``x * scale - shift`` into
    one multiply-add, 128 ulp from numpy's two roundings at worst (benchmarks/device_check.py
    printed it on an AMD EPYC). The table has 256 C entries; the lookup is one gather of
    the batch's B H W C elements, small beside a convolution."""
    channel = jnp.arange(images.shape[-1], dtype=jnp.int32)
    return table[images.astype(jnp.int32) + LEVELS * channel]


def train_batch(train_set: DeviceTrainSet, draws: jax.Array) -> dict:
    """draws int32 (B, 4) -> {"image": float32 (B, H, W, C), "label": int32 (B,)}: the host
    path's CIFAR train transform (pad, crop, flip, normalise) inside the jitted step."""
    image = normalize(crop_flip_gather(train_set, draws), train_set.table)
    return {"image": image, "label": train_set.labels[draws[:, INDEX]]}


def finish_host_batch(batch: dict, table) -> dict:
    """A host batch of uint8 images -> the step's batch: {"image": uint8 (B, H, W, C),
    "label", optional "flip" (B,) bool, ...} -> "image" float32, mirrored where "flip",
    normalised by `table` (`normalize_table`); "flip" dropped, the other entries kept. Inside
    the jitted step (kd_jax.train.step.make_train_step's `prepare`)."""
    batch = dict(batch)
    image = batch.pop("image")
    flip = batch.pop("flip", None)
    if flip is not None:
        image = jnp.where(flip[:, None, None, None], image[:, :, ::-1], image)
    return {"image": normalize(image, table), **batch}


def host_batch_finisher(ds):
    """The `prepare` of the host path's train step for `ds`: `finish_host_batch` with its
    normalisation where its train batches are uint8 (``ds.device_normalization``: mean,
    std), else None (float32 batches, normalised on the host)."""
    stats = getattr(ds, "device_normalization", None)
    if stats is None:
        return None
    return functools.partial(finish_host_batch, table=jnp.asarray(normalize_table(*stats)))
