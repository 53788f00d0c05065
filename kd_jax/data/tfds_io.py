"""Thin helpers around tensorflow-datasets: prepare a builder without long offline retries, and
read a small split into numpy.

A missing dataset fails in seconds and leaves nothing behind: before tfds is even imported,
`prepared_builder` looks on disk for the prepared data (a dataset_info.json under
<data_dir>/<name>/) or for files tfds can prepare it from (the manual downloads, a finished
download); with neither, it tries one TCP connection to the download host (2 s timeout, in a
thread so a hanging DNS lookup cannot stall it) and, if that fails, raises DataNotFoundError
saying how to get the data: no download attempt, no retries, no progress bars, no folders.
A download that starts and fails removes the temporary files and the empty folders it created.
Set KD_JAX_OFFLINE=1 to never download.

tensorflow_datasets is imported lazily: the cifar10/cifar100 (archives), fashion_mnist (IDX
files) and synthetic datasets work without it (and without TensorFlow).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import shutil
import socket
import sys
import threading
import urllib.parse
from typing import Iterator

import numpy as np

from kd_jax.data.base import DataNotFoundError, require_tensorflow

# tfds retries a failing download 10 times with exponential backoff (about 200 s offline);
# 3 retries keep real transient errors recoverable and fail in ~1.5 s without a network.
_DOWNLOAD_RETRIES = 3
OFFLINE_ENV = "KD_JAX_OFFLINE"   # "1": never download (as if no network were reachable)
PROBE_TIMEOUT_S = 2.0


@dataclasses.dataclass(frozen=True)
class Source:
    """Where tfds gets a dataset: its download host (None: manual download only) and the files
    that, placed in the manual dir, replace the download (names from tfds's url_checksums)."""

    host: str | None
    files: tuple[str, ...]
    port: int = 443


SOURCES = {
    "caltech_birds2011": Source("data.caltech.edu", ("CUB_200_2011.tgz", "segmentations.tgz")),
    "fashion_mnist": Source("fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                            ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"), port=80),
    "imagenet2012": Source(None, ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")),
}


def default_data_dir() -> str:
    """tfds's default data directory ($TFDS_DATA_DIR, else ~/tensorflow_datasets)."""
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"),
                                                         "tensorflow_datasets"))


def prepared_on_disk(root: str, name: str) -> bool:
    """Whether some version of `name` was prepared in tfds data dir `root` (cheap, no tfds)."""
    return bool(glob.glob(os.path.join(glob.escape(root), glob.escape(name), "*",
                                       "dataset_info.json"))
                or glob.glob(os.path.join(glob.escape(root), glob.escape(name), "*", "*",
                                          "dataset_info.json")))


def _has_local_files(source: Source, root: str, manual_dir: str) -> bool:
    """Every source file is in manual_dir, or already downloaded into <root>/downloads."""
    downloaded = []
    for d in (os.path.join(root, "downloads"), *glob.glob(os.path.join(glob.escape(root),
                                                                      "downloads", "*"))):
        if os.path.isdir(d):
            downloaded += [e for e in os.listdir(d) if ".tmp." not in e and "incomplete" not in e]
    return all(os.path.exists(os.path.join(manual_dir, f))
               or any(f.split(".", 1)[0] in e for e in downloaded) for f in source.files)


def network_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to host (or to the https/http proxy, if one is set) within timeout."""
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return False
    proxy = ((os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")) if port == 443
             else (os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY")))
    proxy = proxy or os.environ.get("all_proxy") or os.environ.get("ALL_PROXY")
    if proxy:
        parsed = urllib.parse.urlparse(proxy if "://" in proxy else "http://" + proxy)
        host, port = parsed.hostname or host, parsed.port or 80
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:   # DNS failure, refused, unreachable, timeout
            pass

    # getaddrinfo ignores socket timeouts: a thread bounds a hanging DNS lookup as well.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result)


@contextlib.contextmanager
def _removed_on_failure(root: str, name: str) -> Iterator[None]:
    """On failure, deletes what a download attempt left in tfds's folders: new temporary
    entries (*.tmp.*, incomplete*), then new folders without files (e.g. <root>/<name>)."""
    watched = [root, os.path.join(root, name), os.path.join(root, "downloads"),
               os.path.join(root, "downloads", name), os.path.join(root, "downloads", "extracted"),
               os.path.join(root, "downloads", "manual")]
    before = {d: set(os.listdir(d)) if os.path.isdir(d) else None for d in watched}
    try:
        yield
    except BaseException:
        for d in sorted(watched, key=len, reverse=True):   # deepest first
            if not os.path.isdir(d):
                continue
            for entry in set(os.listdir(d)) - (before[d] or set()):
                path = os.path.join(d, entry)
                temporary = ".tmp." in entry or "incomplete" in entry
                if os.path.isdir(path) and (temporary or not _holds_files(path)):
                    shutil.rmtree(path, ignore_errors=True)
                elif temporary:
                    os.remove(path)
            if before[d] is None and not _holds_files(d):
                shutil.rmtree(d, ignore_errors=True)
        raise


def _holds_files(directory: str) -> bool:
    return any(files for _, _, files in os.walk(directory))


class _DropEmptyVariantWarning(logging.Filter):
    """tfds warns 'Variant folder <dir>/<version> has no dataset_info.json' about the folder
    it has just created for preparing: noise before the real outcome."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    logger, drop = logging.getLogger("absl"), _DropEmptyVariantWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


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
    Without the data, its files or a reachable download host, fails before importing tfds.
    """
    root = os.path.expanduser(data_dir or default_data_dir())
    where = f"tfds dataset {name!r} is not prepared in {root}"
    source = SOURCES.get(name)
    manual = os.path.expanduser(manual_dir or os.path.join(root, "downloads", "manual"))
    if source is not None and not prepared_on_disk(root, name) and not _has_local_files(
            source, root, manual):
        files = " and ".join(source.files) if len(source.files) < 3 else "its files"
        if not allow_download:
            raise DataNotFoundError(f"{where} and downloading is disabled. {how_to}")
        if source.host is None:
            raise DataNotFoundError(f"{where} and {files} are not in {manual} (tfds cannot "
                                    f"download {name}). {how_to}")
        if not network_reachable(source.host, source.port):
            offline = (f"downloads are off ({OFFLINE_ENV} is set)"
                       if os.environ.get(OFFLINE_ENV) else
                       f"{source.host} cannot be reached (no network?)")
            raise DataNotFoundError(f"{where}, {offline} and {files} "
                                    f"{'is' if len(source.files) == 1 else 'are'} not in "
                                    f"{manual}. {how_to}")

    require_tensorflow(f"preparing or reading tfds dataset {name!r}")
    import tensorflow_datasets as tfds
    hide_accelerators_from_tensorflow()
    with _removed_on_failure(root, name), _quiet_tfds():
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return builder
        if not allow_download:
            raise DataNotFoundError(f"{where} and downloading is disabled. {how_to}")
        if not sys.stderr.isatty():
            tfds.disable_progress_bar()   # a log file would get one \r-joined line per bar
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            with bounded_download_retries():
                builder.download_and_prepare(download_config=config)
        except Exception as error:  # network, missing manual files, disk: one clear message
            raise DataNotFoundError(f"{where} and preparing it failed ({type(error).__name__}: "
                                    f"{' '.join(str(error).split())[:300]}). {how_to}") from error
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
