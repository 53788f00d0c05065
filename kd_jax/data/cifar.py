"""CIFAR-10 and CIFAR-100 from the original archives, read with numpy (no TensorFlow, no tfds).

Accepted, in this order of preference, each as the archive or as its extracted folder:

=========  ==================================  ========================  =====================
dataset    python format (torchvision, Keras)  its folder                binary format (+ folder)
=========  ==================================  ========================  =====================
cifar10    cifar-10-python.tar.gz              cifar-10-batches-py/      cifar-10-binary.tar.gz
                                                                         (cifar-10-batches-bin/)
cifar100   cifar-100-python.tar.gz             cifar-100-python/         cifar-100-binary.tar.gz
                                                                         (cifar-100-binary/)
=========  ==================================  ========================  =====================

Where: `dataset.data_dir` if set, then the cache (kd_jax.cache.cache_dir("cifar")). With none
found and a network, the python archive is downloaded from its original source (progress bar),
its published md5 checked before use (the one torchvision checks), and kept in data_dir (if
set: the place the user chose, e.g. Google Drive) or the cache. KD_JAX_OFFLINE=1: never
download.

Layouts: python format: pickled dicts {"data": uint8 (N, 3072), "labels" (CIFAR-10) or
"fine_labels" (CIFAR-100)}, train in data_batch_1..5 (CIFAR-10) or train (CIFAR-100), test in
test_batch or test. Binary format: records of [label] (CIFAR-10) or [coarse, fine] (CIFAR-100)
then 3072 pixel bytes. Pixels are channel-major (3, 32, 32) in both; images come out uint8
(N, 32, 32, 3) in file order (torchvision's order), labels int32 (N,) (CIFAR-100: fine labels).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile

import numpy as np

from kd_jax.cache import cache_dir
from kd_jax.data.base import DataNotFoundError

PIXELS = 3 * 32 * 32
SOURCE_HOST = "www.cs.toronto.edu"


@dataclasses.dataclass(frozen=True)
class Spec:
    """The files of one CIFAR dataset in both formats (names as published)."""

    num_classes: int
    python_archive: str
    python_folder: str
    python_train: tuple[str, ...]
    python_test: str
    label_key: str
    md5: str                    # of python_archive, as published (and checked by torchvision)
    binary_archive: str
    binary_folder: str
    binary_train: tuple[str, ...]
    binary_test: str
    label_bytes: int            # binary records: bytes before the pixels; the last is the label

    @property
    def url(self) -> str:
        return f"https://{SOURCE_HOST}/~kriz/{self.python_archive}"


SPECS = {
    "cifar10": Spec(10, "cifar-10-python.tar.gz", "cifar-10-batches-py",
                    tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "labels",
                    "c58f30108f718f92721af3b95e74349a",
                    "cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                    tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", 1),
    "cifar100": Spec(100, "cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test",
                     "fine_labels", "eb9058c3a382ffc7106e4002c42a8d85",
                     "cifar-100-binary.tar.gz", "cifar-100-binary", ("train.bin",), "test.bin",
                     2),
}


def how_to(name: str) -> str:
    spec = SPECS[name]
    return (f"Place {spec.python_archive} (torchvision's or Keras's download, {spec.url}) or "
            f"{spec.binary_archive} (or their extracted folders) in --config.dataset.data_dir "
            f"or {cache_dir('cifar')}, or give the trainer network access to download it "
            f"once (about {170 if name == 'cifar10' else 169} MB).")


def candidates(name: str, data_dir: str | None) -> list[str]:
    """Every path that could hold the dataset, in order of preference."""
    spec = SPECS[name]
    roots = [os.path.expanduser(data_dir)] if data_dir else []
    roots.append(cache_dir("cifar"))
    return [os.path.join(root, entry) for root in roots
            for entry in (spec.python_folder, spec.python_archive, spec.binary_folder,
                          spec.binary_archive)]


def find(name: str, data_dir: str | None) -> str | None:
    """The first existing candidate (archive or folder), or None."""
    return next((p for p in candidates(name, data_dir) if os.path.exists(p)), None)


def load(name: str, data_dir: str | None, limit_train: int = 0, limit_test: int = 0):
    """Returns ((train_images, train_labels), (test_images, test_labels)) of cifar10/cifar100.

    Images uint8 (N, 32, 32, 3), labels int32 (N,); limit > 0 keeps the first examples.
    Downloads the python archive if nothing is found (see the module docstring).
    """
    if name not in SPECS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; allowed: {', '.join(SPECS)}")
    path = find(name, data_dir) or fetch(name, data_dir)
    try:
        train, test = read(name, path)
    except (OSError, EOFError, tarfile.TarError, pickle.UnpicklingError, KeyError,
            ValueError) as error:
        raise DataNotFoundError(f"{path}: not a readable {name} archive ({type(error).__name__}:"
                                f" {error}). {how_to(name)}") from error
    if limit_train:
        train = (train[0][:limit_train], train[1][:limit_train])
    if limit_test:
        test = (test[0][:limit_test], test[1][:limit_test])
    return train, test


def fetch(name: str, data_dir: str | None) -> str:
    """Downloads the python archive into data_dir (if set) or the cache; returns its path.
    Without a network (or with KD_JAX_OFFLINE=1) raises DataNotFoundError at once."""
    from kd_jax.data import download, tfds_io   # tfds_io: its network probe (no tfds import)

    spec = SPECS[name]
    target = os.path.join(os.path.expanduser(data_dir) if data_dir else cache_dir("cifar"),
                          spec.python_archive)
    looked = ", ".join(dict.fromkeys(os.path.dirname(p) for p in candidates(name, data_dir)))
    if not tfds_io.network_reachable(SOURCE_HOST):
        why = (f"downloads are off ({tfds_io.OFFLINE_ENV} is set)"
               if os.environ.get(tfds_io.OFFLINE_ENV) else f"{SOURCE_HOST} cannot be reached")
        raise DataNotFoundError(f"{name} not found in {looked} and {why}. {how_to(name)}")
    return download.download(spec.url, target, spec.md5)


def read(name: str, path: str):
    """Reads an archive or extracted folder at `path` (either format, told by its name)."""
    spec = SPECS[name]
    base = os.path.basename(os.path.normpath(path))
    binary = base in (spec.binary_archive, spec.binary_folder)
    folder = spec.binary_folder if binary else spec.python_folder
    train_files = spec.binary_train if binary else spec.python_train
    test_file = spec.binary_test if binary else spec.python_test
    members = _read_members(path, folder, (*train_files, test_file))
    parse = _parse_binary if binary else _parse_python
    splits = []
    for files in (train_files, (test_file,)):
        parts = [parse(spec, members[f], f"{path}:{f}") for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= spec.num_classes:
            raise ValueError(f"labels outside [0, {spec.num_classes})")
        splits.append((images, labels))
    return tuple(splits)


def _read_members(path: str, folder: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """{name: bytes} of <folder>/<name> in a .tar.gz, or of the files in an extracted folder."""
    if os.path.isdir(path):
        out = {}
        for name in names:
            with open(os.path.join(path, name), "rb") as fh:
                out[name] = fh.read()
        return out
    wanted = {f"{folder}/{name}": name for name in names}
    out = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            key = wanted.get(member.name.removeprefix("./"))
            if key is not None and member.isfile():
                out[key] = tar.extractfile(member).read()
    missing = [f"{folder}/{n}" for n in names if n not in out]
    if missing:
        raise KeyError(f"missing {', '.join(missing)}")
    return out


def _to_nhwc(flat: np.ndarray) -> np.ndarray:
    """uint8 (N, 3072) channel-major -> (N, 32, 32, 3)."""
    return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays only: a crafted file cannot run code."""

    # The published files (Python 2, numpy 1) name numpy.core; numpy 2 pickles numpy._core.
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                              "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}   # bytes in protocol-2 pickles written by Python 3

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _parse_python(spec: Spec, raw: bytes, where: str):
    # latin1: the published files are Python 2 pickles (str keys; numpy's recommended setting).
    batch = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
    if not isinstance(batch, dict) or "data" not in batch or spec.label_key not in batch:
        raise ValueError(f"{where}: expected a dict with 'data' and {spec.label_key!r}")
    data = np.asarray(batch["data"], np.uint8)
    labels = np.asarray(batch[spec.label_key], np.int32)
    if data.ndim != 2 or data.shape[1] != PIXELS or labels.shape != (data.shape[0],):
        raise ValueError(f"{where}: data {data.shape}, labels {labels.shape}; expected "
                         f"(N, {PIXELS}) and (N,)")
    return _to_nhwc(data), labels


def _parse_binary(spec: Spec, raw: bytes, where: str):
    record = spec.label_bytes + PIXELS
    if len(raw) % record:
        raise ValueError(f"{where}: {len(raw)} bytes is not a whole number of {record}-byte "
                         "records")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    return _to_nhwc(rows[:, spec.label_bytes:]), rows[:, spec.label_bytes - 1].astype(np.int32)
