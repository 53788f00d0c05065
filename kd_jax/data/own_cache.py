"""The decoded form of a user's dataset, cached on disk and rebuilt when its source changes.

    entry = own_cache.load_or_build(directory, fingerprint, build)

`directory` (kd_jax.data.own chooses it under ``cache_dir("own_data")``) holds
``manifest.json`` (the fingerprint's sha256, classes, counts, mean/std, notes) and, where the
set is held in memory, the decoded arrays ``{train,test}_{images,labels}.npy``. `fingerprint`
is any JSON value that changes whenever the decoded result would: the settings (image size,
split, limits) and each source file's (relative path, size, mtime_ns). A manifest whose
fingerprint differs is stale: `build` runs again and replaces the entry.

Writing: into a temporary sibling directory, renamed into place, so a killed build leaves no
entry that looks complete. Concurrency: an exclusive lock file (``<directory>.lock``, flock)
is held while checking and building, so of several processes (the hosts of one run on a
shared filesystem, or two runs) one builds and the others wait and then read its result. A
cache that cannot be written (the lock file included: read-only, full) is built in memory for
this run, with a "not_cached" note.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
from typing import Any, Callable, Iterator, Optional

import numpy as np

MANIFEST = "manifest.json"
FORMAT = 1                      # bump when the layout of an entry changes
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclasses.dataclass
class Entry:
    """A cache entry: the manifest, and the arrays (None for a streamed set)."""

    manifest: dict
    arrays: Optional[dict[str, np.ndarray]] = None
    built: bool = False          # True when this call built it (False: read from disk)


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of `value`."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_fingerprint(paths, root: str) -> list:
    """[(path relative to root, size, mtime_ns)] of each file: changes when a file is
    replaced, edited, added, removed or renamed (no read of the contents)."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
    return out


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[Optional[OSError]]:
    """Holds `directory`.lock for the block; yields None, or the OSError that kept the lock
    file from being created (a read-only or full cache: the block then runs unlocked, and
    must not write)."""
    import fcntl
    try:
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        f = open(directory + ".lock", "a+")
    except OSError as e:
        yield e
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield None
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(directory: str, key: str) -> Optional[Entry]:
    """The entry in `directory` if its manifest matches `key` and its files are present."""
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("fingerprint") != key:
        return None
    arrays = None
    if manifest.get("arrays"):
        try:
            arrays = {name: np.load(os.path.join(directory, name + ".npy")) for name in ARRAYS}
        except (OSError, ValueError):
            return None
    return Entry(manifest, arrays)


def _write(directory: str, manifest: dict, arrays: Optional[dict]) -> None:
    """Writes the entry into a temporary sibling renamed into place (under the lock: a
    sibling left by a killed writer is removed first)."""
    parent, name = os.path.split(directory)
    for leftover in os.listdir(parent):
        if re.fullmatch(re.escape(name) + r"\.(tmp|old)\d+", leftover):
            shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
    tmp = f"{directory}.tmp{os.getpid()}"
    os.makedirs(tmp)
    try:
        if arrays is not None:
            for name in ARRAYS:
                np.save(os.path.join(tmp, name + ".npy"), arrays[name])
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        old = f"{directory}.old{os.getpid()}"
        if os.path.exists(directory):
            os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_or_build(directory: str, fingerprint: Any,
                  build: Callable[[], tuple[dict, Optional[dict]]]) -> Entry:
    """The entry of `fingerprint` in `directory`, built by `build()` -> (manifest fields,
    arrays or None) when missing or stale. A cache that cannot be written (read-only, full
    disk) still returns the built entry, with a "not_cached" note."""
    key = digest(fingerprint)
    with _locked(directory) as unlockable:
        found = _read(directory, key)
        if found is not None:
            return found
        fields, arrays = build()
        manifest = {"format": FORMAT, "fingerprint": key, **fields, "arrays": arrays is not None}
        try:
            if unlockable is not None:
                raise unlockable
            _write(directory, manifest, arrays)
        except OSError as e:
            manifest["not_cached"] = f"{directory}: {type(e).__name__}: {e}"
        return Entry(manifest, arrays, built=True)


def mean_std(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images (N, H, W, C) on [0, 1], over
    every pixel: exact integer sums of x and x^2, chunk by chunk (no float copy of the set)."""
    channels = images.shape[-1]
    total = np.zeros(channels, np.float64)
    squares = np.zeros(channels, np.float64)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].reshape(-1, channels).astype(np.int64)
        total += block.sum(0)
        squares += (block * block).sum(0)
    count = images.size // channels
    mean = total / count / 255.0
    var = np.maximum(squares / count / 255.0 ** 2 - mean * mean, 0.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(var))
