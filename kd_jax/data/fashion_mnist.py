"""Fashion-MNIST from the original IDX files (or tfds), reshaped for the CIFAR model zoo.

Sources, in order:
1. data_dir given: the four IDX files in data_dir (``.gz`` or uncompressed), else a tfds
   ``fashion_mnist`` already prepared in data_dir. Never downloads: an explicit directory
   without the data is an error.
2. data_dir None: Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist),
   else tfds (default data dir; downloaded if needed, with bounded retries).

Preprocessing: 28x28 -> 32x32 by 2 zero pixels on each side and the grey channel repeated to
3, so that every CIFAR architecture applies unchanged (uint8 (N, 32, 32, 3)).
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from kd_jax.data.base import DataFileError, DataNotFoundError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO = ("Install the Debian/Ubuntu package dataset-fashion-mnist "
          "(`sudo apt-get install dataset-fashion-mnist`, files in " + DEBIAN_DIR + "), or set "
          "--config.dataset.data_dir to a directory holding the four IDX files "
          "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
          "t10k-labels-idx1-ubyte (each optionally .gz).")

# IDX magic: two zero bytes, a type code, the number of dimensions; big-endian dims follow.
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str, limit: int = 0) -> np.ndarray:
    """Reads an IDX file (gzip-compressed if the name ends in .gz) into a native-order array.

    Images have magic 2051 (uint8, 3 dims: N, rows, cols), labels 2049 (uint8, 1 dim: N).
    limit > 0 reads only the first `limit` records (cheap even from a .gz file).
    """
    try:
        return _read_idx(path, limit)
    except (EOFError, OSError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
        raise DataFileError(f"{path}: cannot be read ({type(e).__name__}: {e}); the file is "
                            "truncated or damaged: download it again") from None


def _read_idx(path: str, limit: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
            raise DataFileError(f"{path}: not an IDX file (magic bytes {magic.hex()})")
        dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
        dims = f.read(4 * ndim)
        if len(dims) != 4 * ndim:
            raise DataFileError(f"{path}: truncated header")
        shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
        if limit and ndim and limit < shape[0]:
            shape = (limit,) + shape[1:]
            body = f.read(int(np.prod(shape)) * dtype.itemsize)
        else:
            body = f.read()
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise DataFileError(f"{path}: {len(body)} data bytes, expected {expected} for shape {shape}")
    return np.frombuffer(body, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_files(directory: str) -> dict[str, tuple[str, str]] | None:
    """Paths of the four IDX files in `directory` (plain name or .gz), or None if any is missing."""
    found = {}
    for split, names in IDX_FILES.items():
        paths = []
        for name in names:
            candidates = [os.path.join(directory, name + ext) for ext in ("", ".gz")]
            existing = [p for p in candidates if os.path.isfile(p)]
            if not existing:
                return None
            paths.append(existing[0])
        found[split] = tuple(paths)
    return found


def _read_split(images_path: str, labels_path: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path, limit), read_idx(labels_path, limit)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{images_path} {images.shape} and {labels_path} {labels.shape} "
                         "are not a matching (N, 28, 28) / (N,) pair")
    return images.astype(np.uint8), labels.astype(np.int32)


def to_cifar_layout(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) or (N, 28, 28, 1) -> (N, 32, 32, 3): 2 px zero border, channel x3."""
    images = images.reshape(images.shape[:3])
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=-1)


def load(data_dir: str | None, limit_train: int = 0, limit_test: int = 0):
    """Returns ((train_images, train_labels), (test_images, test_labels)) in CIFAR layout."""
    directory = data_dir if data_dir else DEBIAN_DIR
    files = find_idx_files(directory) if os.path.isdir(directory) else None
    if files is not None:
        train = _read_split(*files["train"], limit_train)
        test = _read_split(*files["test"], limit_test)
    else:
        train, test = _load_tfds(data_dir, limit_train, limit_test)
    return ((to_cifar_layout(train[0]), train[1]), (to_cifar_layout(test[0]), test[1]))


def _load_tfds(data_dir, limit_train, limit_test):
    looked = data_dir if data_dir else DEBIAN_DIR
    if data_dir and not os.path.isdir(os.path.join(data_dir, "fashion_mnist")):
        # Nothing tfds could read either: fail before importing TensorFlow (seconds).
        raise DataNotFoundError(f"Fashion-MNIST not found: no IDX files and no prepared tfds "
                                f"'fashion_mnist' in {data_dir}. {HOW_TO}")
    try:
        from kd_jax.data import tfds_io
        # An explicit data_dir is never downloaded into: a wrong path should fail, not fetch.
        builder = tfds_io.prepared_builder("fashion_mnist", data_dir,
                                           allow_download=not data_dir, how_to="")
    except (ImportError, DataNotFoundError) as error:
        raise DataNotFoundError(f"Fashion-MNIST not found: no IDX files in {looked}, and "
                                f"{str(error).strip()} {HOW_TO}") from error
    return (tfds_io.split_to_numpy(builder, "train", limit_train),
            tfds_io.split_to_numpy(builder, "test", limit_test))
