"""Thin helpers around tensorflow-datasets: prepare a builder without long offline retries, and
read a small split into numpy.

tensorflow_datasets is imported lazily: the fashion_mnist (IDX files) and synthetic datasets
work without it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from kd_jax.data.base import DataNotFoundError

# tfds retries a failing download 10 times with exponential backoff (about 200 s offline);
# 3 retries keep real transient errors recoverable and fail in ~1.5 s without a network.
_DOWNLOAD_RETRIES = 3


def hide_accelerators_from_tensorflow() -> None:
    """Keeps TensorFlow (used only for input) off the GPUs/TPUs that JAX owns: a GPU build of
    TensorFlow would otherwise reserve most of their memory."""
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (RuntimeError, ValueError):  # runtime already initialised, or no such device type
        pass


@contextlib.contextmanager
def bounded_download_retries(retries: int = _DOWNLOAD_RETRIES) -> Iterator[None]:
    """Temporarily caps tfds's HTTP retries (tfds reads the module global at request time)."""
    from tensorflow_datasets.core.download import downloader
    saved = downloader.MAX_RETRIES
    downloader.MAX_RETRIES = retries
    try:
        yield
    finally:
        downloader.MAX_RETRIES = saved


def prepared_builder(name: str, data_dir: str | None, *, allow_download: bool, how_to: str,
                     manual_dir: str | None = None):
    """Returns tfds.builder(name, data_dir) with its data prepared, or raises DataNotFoundError.

    If the data is not prepared yet and allow_download, runs download_and_prepare (files placed
    in manual_dir are used instead of downloading them; tfds's default manual dir when None).
    how_to: the sentence telling the user how to provide the data, appended to the error.
    """
    import tensorflow_datasets as tfds
    hide_accelerators_from_tensorflow()
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    where = f"tfds dataset {name!r} is not prepared in {builder.data_dir}"
    if not allow_download:
        raise DataNotFoundError(f"{where} and downloading is disabled. {how_to}")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        with bounded_download_retries():
            builder.download_and_prepare(download_config=config)
    except Exception as error:  # network, missing manual files, disk: one actionable message
        raise DataNotFoundError(f"{where} and preparing it failed ({type(error).__name__}: "
                                f"{str(error).splitlines()[0][:300]}). {how_to}") from error
    return builder


def split_to_numpy(builder, split: str, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reads (image, label) pairs of a split into uint8 (N, H, W, C) and int32 (N,) arrays.

    limit > 0 keeps the first `limit` examples. Iterates batches of a tf.data pipeline rather
    than tfds.load(batch_size=-1), which aborts the interpreter under tfds.testing.mock_data.
    """
    import tensorflow_datasets as tfds
    ds = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
    if limit:
        ds = ds.take(limit)
    images, labels = [], []
    for image, label in tfds.as_numpy(ds.batch(4096)):
        images.append(image)
        labels.append(label)
    if not images:
        raise DataNotFoundError(f"tfds dataset {builder.name!r} split {split!r} is empty")
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)
