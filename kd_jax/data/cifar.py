"""CIFAR-100 from tensorflow-datasets, loaded once into memory as uint8 numpy arrays."""

from __future__ import annotations

from kd_jax.data import tfds_io

HOW_TO = ("Give the trainer network access for tfds to download CIFAR-100 once, or place "
          "cifar-100-binary.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz) in "
          "--config.dataset.data_dir (used as tfds's data and manual directory).")


def load(data_dir: str | None, limit_train: int = 0, limit_test: int = 0):
    """Returns ((train_images, train_labels), (test_images, test_labels)).

    Images uint8 (N, 32, 32, 3), labels int32 (N,) fine labels in [0, 100). A
    cifar-100-binary.tar.gz in data_dir (or tfds's default manual dir) replaces the download.
    """
    builder = tfds_io.prepared_builder("cifar100", data_dir, allow_download=True, how_to=HOW_TO,
                                       manual_dir=data_dir)
    return (tfds_io.split_to_numpy(builder, "train", limit_train),
            tfds_io.split_to_numpy(builder, "test", limit_test))
