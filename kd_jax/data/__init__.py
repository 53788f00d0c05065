"""Input pipelines: datasets sharded by host, batch augmentation, prefetch onto the mesh.

``get_dataset(config.dataset, process_index=jax.process_index(),
process_count=jax.process_count())`` returns a `Dataset`; ``prefetch_to_mesh`` turns its
host batches into global arrays sharded along the batch axis.

Config keys (the trainer's ``config.dataset`` subtree):

- ``name``: ``cifar10`` | ``cifar100`` | ``imagenet2012`` | ``caltech_birds2011`` |
  ``fashion_mnist`` | ``synthetic``, or the user's own data: ``image_folder`` | ``npz`` |
  ``tfds:<name>`` (their keys and cache: kd_jax.data.own).
- ``data_dir`` (str or None):
    - cifar10, cifar100: a directory holding the original archive, python format
      (``cifar-{10,100}-python.tar.gz``, torchvision's and Keras's) or binary
      (``cifar-{10,100}-binary.tar.gz``), or its extracted folder. None: the cache
      (kd_jax.cache.cache_dir("cifar")). Not found: downloaded there (md5 checked); read with
      numpy, no TensorFlow (see kd_jax.data.cifar).
    - caltech_birds2011: tfds data directory (default ~/tensorflow_datasets).
    - imagenet2012: the manual download directory holding ILSVRC2012_img_{train,val}.tar;
      tfds prepares its records there on the first run.
    - fashion_mnist: a directory with the four original IDX files
      (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
      ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) or a tfds data dir
      with fashion_mnist prepared; never downloaded into. None: Debian's
      dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), else tfds.
    - synthetic: unused.
- ``limit_train`` / ``limit_test`` (int, optional, 0 = all): keep only the first examples.
- ``on_device`` (bool or None, read by the trainer): None (auto) puts the uint8 train set of
  an in-memory dataset on the devices when it fits ``on_device.DEVICE_BUDGET_BYTES`` and
  augments it inside the jitted step (kd_jax.data.on_device), and its uint8 test set too,
  normalised inside the eval step (kd_jax.data.device_test_set); False keeps the host path.
- ``input_threads`` (int, imagenet2012 and caltech_birds2011): tf.data's threads per process;
  0 (default): this process's share of the host's cores (kd_jax.data.imagenet.auto_threads).
- synthetic only: ``num_train``, ``num_test``, ``image_size``, ``num_classes``, optional ``seed``
  (default 0) fixing the random images and labels.

Dataset contract:

- ``info``: `DatasetInfo` (name, num_classes, image_shape (H, W, 3), num_train, num_test).
- ``steps_per_epoch(G) = num_train // G``: the remainder batch is dropped (fixed shapes).
- ``train_batches(epoch, G, seed, start_step=0)``: this host's slice of each global batch,
  ``{"image": float32 (b, H, W, 3), "label": int32 (b,)}`` with ``b = G // process_count``
  (uint8 images and a ``"flip"`` where the dataset has a ``device_normalization``, below).
  Order and augmentation are functions of (seed, epoch, step) only, so ``start_step=k`` yields
  exactly batches k, k+1, ... of the uninterrupted epoch. Epochs count from 1.
- ``eval_batches(G)``: the full test set once, in order, last batch zero-padded;
  ``{"image", "label", "mask": float32 (b,)}`` with mask 1 for real examples, 0 for padding.

Augmentation: cifar10, cifar100, fashion_mnist and synthetic use the CIFAR recipe on uint8 batches in
numpy (zero-pad 4, random crop, horizontal flip, then normalise; test: normalise only);
imagenet2012 runs in tf.data (see kd_jax.data.imagenet), caltech_birds2011 crops its resized
cache in numpy (kd_jax.data.cub). The same CIFAR recipe runs inside the jitted step on the
on-device path (``InMemoryDataset.train_draws`` gives the host's random choices,
kd_jax.data.on_device applies them). A dataset whose train batches are uint8 says so with
an attribute ``device_normalization = (mean, std)`` (imagenet2012, caltech_birds2011): its
batches carry ``"flip"`` (b,), and the jitted step mirrors and normalises them
(kd_jax.data.on_device.finish_host_batch).

Several processes (jax.distributed): the first process downloads or prepares the data and
the others wait for it, then read it (kd_jax.data.processes).
"""

from __future__ import annotations

import os
from typing import Any

from kd_jax.data import augment, catalog, processes
from kd_jax.data.catalog import (CIFAR10, CIFAR100, CUB, DATASETS, FASHION_MNIST, IMAGENET,
                                 SYNTHETIC, facts)
from kd_jax.data.base import DataFileError, DataNotFoundError, Dataset, DatasetInfo
from kd_jax.data.in_memory import InMemoryDataset

__all__ = ["CIFAR10", "CIFAR100", "CUB", "DATASETS", "FASHION_MNIST", "IMAGENET", "SYNTHETIC",
           "facts", "DataFileError", "DataNotFoundError", "Dataset", "DatasetInfo",
           "InMemoryDataset", "get_dataset", "prefetch_to_mesh", "to_global_array"]


def __getattr__(name: str):
    """prefetch_to_mesh and to_global_array (kd_jax.data.prefetch) on first use: they import
    JAX, which the decoding worker processes of own data (kd_jax.data.own_dataset) should
    not pay for (seconds and ~150 MB each)."""
    if name in ("prefetch_to_mesh", "to_global_array"):
        from kd_jax.data import prefetch
        return getattr(prefetch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

def _how_to(name: str) -> str:
    """How to provide dataset `name` (each loader's own sentence)."""
    if name in ("cifar10", "cifar100"):
        from kd_jax.data import cifar
        return cifar.how_to(name)
    if name == "fashion_mnist":
        from kd_jax.data import fashion_mnist
        return fashion_mnist.HOW_TO
    from kd_jax.data import imagenet
    return imagenet.SPECS[name].how_to


# name -> (num_classes, mean, std) of the in-memory datasets.
_IN_MEMORY = {
    "cifar10": (10, augment.CIFAR10_MEAN, augment.CIFAR10_STD),
    "cifar100": (100, augment.CIFAR100_MEAN, augment.CIFAR100_STD),
    "fashion_mnist": (10, augment.FASHION_MNIST_MEAN, augment.FASHION_MNIST_STD),
    # Random pixels have no statistics of their own; CIFAR's keep the path identical.
    "synthetic": (None, augment.CIFAR100_MEAN, augment.CIFAR100_STD),
}


def _get(config: Any, key: str, default: Any = None) -> Any:
    """config[key] for a ConfigDict or a dict, `default` when absent or None."""
    value = config.get(key, default)
    return default if value is None else value


def get_dataset(config: Any, *, process_index: int = 0, process_count: int = 1) -> Dataset:
    """Builds the dataset named by config.name (keys in the module docstring)."""
    name = _get(config, "name")
    catalog.check_name(name)

    def once(load):
        """load() on one process first, then on the others (kd_jax.data.processes): one
        download or preparation, which the others find."""
        return processes.leader_first(name, load, process_index=process_index,
                                      process_count=process_count)

    if catalog.is_own(name):   # image_folder, npz, tfds:<name> (keys in kd_jax.data.own)
        from kd_jax.data import own
        return once(lambda: own.load(config, process_index=process_index,
                                     process_count=process_count))
    data_dir = _get(config, "data_dir") or None  # "" means unset, as on the command line
    if data_dir is not None and name != "synthetic" and not os.path.isdir(
            os.path.expanduser(data_dir)):
        create = {"caltech_birds2011": " (create it first to let tfds download into it)",
                  "cifar10": " (create it first to let kd_jax download into it)",
                  "cifar100": " (create it first to let kd_jax download into it)"}.get(name, "")
        raise DataNotFoundError(f"dataset.data_dir={data_dir!r}: no such directory{create}. "
                                f"{_how_to(name)}")
    limit_train = int(_get(config, "limit_train", 0))
    limit_test = int(_get(config, "limit_test", 0))
    if limit_train < 0 or limit_test < 0:
        raise ValueError(f"limit_train={limit_train}, limit_test={limit_test} must be >= 0")

    input_threads = int(_get(config, "input_threads", 0))
    if input_threads < 0:
        raise ValueError(f"input_threads={input_threads} must be >= 0 (0: automatic)")

    if name in ("imagenet2012", "caltech_birds2011"):
        from kd_jax.data import imagenet
        threads = input_threads or imagenet.auto_threads(processes.local_process_count(
            process_index=process_index, process_count=process_count))
        return once(lambda: imagenet.load(name, data_dir, process_index=process_index,
                                          process_count=process_count, limit_train=limit_train,
                                          limit_test=limit_test, threads=threads))

    num_classes, mean, std = _IN_MEMORY[name]
    if name in ("cifar10", "cifar100"):
        from kd_jax.data import cifar
        train, test = once(lambda: cifar.load(name, data_dir, limit_train, limit_test))
    elif name == "fashion_mnist":
        from kd_jax.data import fashion_mnist
        train, test = once(lambda: fashion_mnist.load(data_dir, limit_train, limit_test))
    else:
        from kd_jax.data import synthetic
        missing = [k for k in ("num_train", "num_test", "image_size", "num_classes")
                   if _get(config, k) is None]
        if missing:
            raise ValueError(f"synthetic dataset needs config keys {missing}")
        num_classes = int(_get(config, "num_classes"))
        train, test = synthetic.load(int(_get(config, "num_train")), int(_get(config, "num_test")),
                                     int(_get(config, "image_size")), num_classes,
                                     seed=int(_get(config, "seed", 0)))
        if limit_train:
            train = (train[0][:limit_train], train[1][:limit_train])
        if limit_test:
            test = (test[0][:limit_test], test[1][:limit_test])
    info = DatasetInfo(name=name, num_classes=num_classes,
                       image_shape=tuple(int(d) for d in train[0].shape[1:]),
                       num_train=len(train[1]), num_test=len(test[1]))
    return InMemoryDataset(info, *train, *test, mean=mean, std=std,
                           process_index=process_index, process_count=process_count)
