"""The test set on the devices: uint8 rows, normalised inside the eval step by table lookup.

The host path (`InMemoryDataset.eval_batches`) normalises every test image in numpy and
copies float32 to the devices at every evaluation (CIFAR's 10k images: 123 MB each time).
Here the uint8 images go to the devices once, as rows (num_batches, EB, H*W*C) split over
'data' along EB (the minor dimension is a whole image, H*W*C, not C = 3, which TPU memory
is expected to pad to 128 lanes), and the eval step of batch i builds its float32 batch
itself (`eval_batch`):

- normalised as the train set is (kd_jax.data.on_device.normalize: a lookup in a table the
  host path's own `augment.normalize` computed), so the images equal the host's bit for bit
  on every backend;
- the test set is padded to num_batches * EB with zero images, label 0 and mask 0, as the
  host path's last batch.

Every host holds the whole test set (InMemoryDataset), so each puts its own shards.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.data.in_memory import InMemoryDataset
from kd_jax.data.on_device import normalize, normalize_table


@flax.struct.dataclass
class DeviceTestSet:
    """The test set as device arrays, in evaluation batches of `batch_size`."""

    rows: jax.Array        # uint8 (num_batches, EB, H*W*C), P(None, 'data'), zero-padded
    labels: jax.Array      # int32 (num_batches, EB), P(None, 'data'), zero-padded
    table: jax.Array       # float32 (C * 256,): table[c * 256 + v] = normalize(v) of channel c
    count: int = flax.struct.field(pytree_node=False)          # the real images
    image_shape: tuple = flax.struct.field(pytree_node=False)  # (H, W, C)

    @property
    def num_batches(self) -> int:
        return self.rows.shape[0]

    @property
    def batch_size(self) -> int:
        return self.rows.shape[1]


def put_on_mesh(ds: InMemoryDataset, mesh: Mesh, batch_size: int) -> DeviceTestSet:
    """Copies the uint8 test set to the devices of `mesh` once, in global batches of
    `batch_size` (a multiple of the device count), each split over 'data'."""
    images, labels = ds.test_arrays
    n, shape = len(images), images.shape[1:]
    num_batches = -(-n // batch_size)
    rows = np.zeros((num_batches * batch_size, int(np.prod(shape))), np.uint8)
    rows[:n] = images.reshape(n, -1)
    padded_labels = np.zeros((num_batches * batch_size,), np.int32)
    padded_labels[:n] = labels
    split = NamedSharding(mesh, P(None, "data"))

    def put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    mean, std, _ = ds.augmentation
    return DeviceTestSet(
        rows=put(rows.reshape(num_batches, batch_size, -1), split),
        labels=put(padded_labels.reshape(num_batches, batch_size), split),
        table=put(normalize_table(mean, std), NamedSharding(mesh, P())),
        count=n, image_shape=tuple(shape))


def eval_batch(test_set: DeviceTestSet, i: jax.Array) -> dict:
    """Batch i (int32 scalar) -> {"image": float32 (EB, H, W, C), "label": int32 (EB,),
    "mask": float32 (EB,) 1 for real images, 0 for the padding}: the host path's batch."""
    image = normalize(test_set.rows[i].reshape((-1,) + test_set.image_shape), test_set.table)
    real = i * test_set.batch_size + jnp.arange(test_set.batch_size) < test_set.count
    image = jnp.where(real[:, None, None, None], image, 0.0)   # padding: 0, as the host's
    return {"image": image,
            "label": test_set.labels[i], "mask": real.astype(jnp.float32)}
