"""A user's own data: ``dataset.name`` = ``image_folder`` | ``npz`` | ``tfds:<name>``.

Sources (``dataset.data_dir``):

- ``image_folder``: a folder in torchvision's ImageFolder layout (kd_jax.data.image_files):
  ``DIR/train/<class>/<image>`` with ``DIR/val/...`` (else ``DIR/test/...``), or
  ``DIR/<class>/<image>`` split by ``val_fraction``. Classes: sorted folder names.
- ``npz``: a .npz file with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (images uint8
  (N, H, W, 3), or grey (N, H, W) / (N, H, W, 1), or RGBA (N, H, W, 4); labels integers
  from 0) and optionally ``classes`` (their names). Classes: max label + 1.
- ``tfds:<name>``: a tfds image-classification dataset in the tfds data dir ``data_dir``
  (preparing it needs kd_jax[tf]): its train split, and its test (else validation) split.

Config keys besides name, data_dir, limit_train, limit_test and on_device:

- ``image_size`` (32): side of the square images the models see; 0: the images' own size
  (they must all have it). Below 96 CIFAR-style augmentation, from 96 ImageNet-style
  (kd_jax.data.own_dataset).
- ``val_fraction`` (0.1), ``split_seed`` (0): the test split of a single folder.
- ``mean``, ``std`` (() = computed once from the training images, as stored, and cached).
- ``skip_unreadable`` (False): an unreadable image is an error naming it; True: left out.
- ``in_memory`` (None = auto): the decoded uint8 train + test set is held in memory (and
  cached) when it fits ``memory_budget_mb``, else image_folder streams from the files.
- ``workers`` (0 = auto: min(8, CPUs)): decoding processes.
- ``limit_train`` / ``limit_test``: a fixed seeded subset (split_seed) of that many examples
  (the listing is class by class, so "the first N" would be the first classes only).

Cache: ``kd_jax.cache.cache_dir("own_data")/<source>-<name>-<hash of source and settings>/``
holds the manifest (classes, counts, mean/std, notes, the fingerprint of the files) and, for
sets held in memory, the decoded arrays (kd_jax.data.own_cache). Each run lists and stats the
files (no read); any change of a file's size or mtime, or an added, removed or renamed file,
rebuilds the entry. The data folder itself is never written to (it may be read-only, and a
folder inside it would be one more class to torchvision).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Callable, Optional

import numpy as np

from kd_jax.cache import cache_dir
from kd_jax.data import catalog, image_files, own_cache
from kd_jax.data.base import DataFileError, DataNotFoundError, DatasetInfo
from kd_jax.data.in_memory import InMemoryDataset
from kd_jax.data.own_dataset import (ArrayReader, FileReader, OwnDataset, Style,
                                     check_not_in_worker, parallel_map, style_for)

# The defaults of the keys above: kd_jax.recipes.builder writes them into every config of own
# data (in_memory None: by size).
DEFAULTS = dict(val_fraction=0.1, split_seed=0, mean=(), std=(), skip_unreadable=False,
                in_memory=None, memory_budget_mb=4096, workers=0)
STATS_SAMPLE = 10_000    # a streamed set's mean/std: from this many training images at most
CHUNK = 256              # files per decoding job


@dataclasses.dataclass(frozen=True)
class Settings:
    """The config keys of own data, read and checked."""

    name: str
    data_dir: str
    image_size: int
    val_fraction: float
    split_seed: int
    limit_train: int
    limit_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skip_unreadable: bool
    in_memory: Optional[bool]
    memory_budget_mb: float
    workers: int

    def key(self) -> dict:
        """What the cache entry depends on (given mean/std and the worker count do not change
        it; whether the set is held in memory does)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("mean", "std", "workers")}


def settings(config: Any) -> Settings:
    """Settings of config.dataset (a ConfigDict or dict); ValueError naming a bad key."""
    def get(key, default=None):
        value = config.get(key, None)
        return DEFAULTS.get(key, default) if value is None else value

    name, data_dir = get("name"), get("data_dir", "")
    if not data_dir and name in (catalog.IMAGE_FOLDER, catalog.NPZ):
        what = "the image folder" if name == catalog.IMAGE_FOLDER else "the .npz file"
        raise ValueError(f"dataset.name={name!r} needs dataset.data_dir: {what} "
                         "(--config.dataset.data_dir=PATH)")
    fraction = float(get("val_fraction"))
    if not 0 < fraction < 1:
        raise ValueError(f"dataset.val_fraction={fraction!r}: expected a number in (0, 1)")
    mean, std = tuple(get("mean")), tuple(get("std"))
    if (mean or std) and not (len(mean) == len(std) == 3 and all(s > 0 for s in std)):
        raise ValueError(f"dataset.mean={mean!r}, dataset.std={std!r}: expected 3 values each "
                         "(RGB on [0, 1], std > 0), or both empty (computed from the data)")
    workers = int(get("workers"))
    if workers < 0:
        raise ValueError(f"dataset.workers={workers}: expected >= 0 (0: min(8, CPUs))")
    image_size = int(get("image_size", catalog.OWN_FACTS.image_size))
    if image_size < 0:
        raise ValueError(f"dataset.image_size={image_size}: expected >= 0 (0: the images' own)")
    return Settings(name=name,
                    data_dir=os.path.abspath(os.path.expanduser(data_dir)) if data_dir else "",
                    image_size=image_size, val_fraction=fraction,
                    split_seed=int(get("split_seed")), limit_train=int(get("limit_train", 0)),
                    limit_test=int(get("limit_test", 0)),
                    mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                    skip_unreadable=bool(get("skip_unreadable")), in_memory=get("in_memory"),
                    memory_budget_mb=float(get("memory_budget_mb")),
                    workers=workers or min(8, os.cpu_count() or 1))


def note(message: str, process_index: int = 0) -> None:
    """One `kd_jax: note:` line on stderr (process 0 only)."""
    if process_index == 0:
        print(f"kd_jax: note: {message}", file=sys.stderr, flush=True)


def entry_dir(s: Settings) -> str:
    """The cache directory of (source, settings)."""
    base = os.path.basename(os.path.normpath(s.data_dir)) or "data"
    if s.name.startswith(catalog.TFDS_PREFIX):
        base = s.name[len(catalog.TFDS_PREFIX):]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:40]
    kind = "tfds" if s.name.startswith(catalog.TFDS_PREFIX) else s.name
    return cache_dir("own_data", f"{kind}-{slug}-{own_cache.digest(s.key())[:16]}")


def _subset(n: int, limit: int, seed: int, stream: int) -> np.ndarray:
    """Indices of a fixed seeded subset of `limit` of n (all if limit is 0), in order."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, stream]).permutation(n)[:limit])


# --- image_folder ------------------------------------------------------------------------------

def _chunks(items: list, size: int = CHUNK) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _probe(paths: list[str], s: Settings) -> tuple[list[int], list[image_files.Probe], list[str]]:
    """(kept positions, their probes, notes): unreadable files are an error naming the first,
    or left out (skip_unreadable); non-RGB files are said to be converted."""
    probes = [p for part in parallel_map(image_files.inspect, _chunks(paths, 1024), s.workers)
              for p in part]
    bad = [(i, p) for i, p in enumerate(probes) if isinstance(p, str)]
    notes = []
    if bad and not s.skip_unreadable:
        raise DataFileError(f"{bad[0][1]}; {len(bad)} unreadable file(s): fix or remove them, "
                            "or set --config.dataset.skip_unreadable=True to leave them out")
    if bad:
        notes.append(f"{len(bad)} unreadable image file(s) left out (skip_unreadable), first: "
                     f"{bad[0][1]}")
    kept = [i for i, p in enumerate(probes) if not isinstance(p, str)]
    converted = [i for i in kept if probes[i].mode != "RGB"]
    if converted:
        modes = sorted({probes[i].mode for i in converted})
        notes.append(f"{len(converted)} image(s) are not RGB (modes {', '.join(modes)}: grey, "
                     f"alpha or palette) and are converted to RGB as torchvision's loader does "
                     f"(grey repeated, alpha dropped), first: {paths[converted[0]]} "
                     f"({probes[converted[0]].mode})")
    return kept, [probes[i] for i in kept], notes


def _native_size(paths: list[str], probes: list[image_files.Probe]) -> tuple[int, int]:
    """The one (H, W) of every image (image_size=0); DataFileError naming two that differ."""
    first = probes[0]
    for path, p in zip(paths, probes):
        if (p.height, p.width) != (first.height, first.width):
            raise DataFileError(
                f"mixed sizes: {paths[0]} is {first.width}x{first.height} but {path} is "
                f"{p.width}x{p.height}; set --config.dataset.image_size=N to resize every "
                "image to NxN (dataset.image_size=0 keeps the images' own size)")
    return first.height, first.width


def _fits(s: Settings, count: int, stored: tuple[int, int]) -> bool:
    """In memory: forced, or the decoded uint8 set within memory_budget_mb."""
    if s.in_memory is not None:
        return bool(s.in_memory)
    return count * stored[0] * stored[1] * 3 <= s.memory_budget_mb * 2 ** 20


def _folder_entry(s: Settings) -> own_cache.Entry:
    layout = image_files.scan(s.data_dir, s.val_fraction, s.split_seed)
    keep_train = _subset(len(layout.train.paths), s.limit_train, s.split_seed, 1)
    keep_test = _subset(len(layout.test.paths), s.limit_test, s.split_seed, 2)
    splits = {"train": ([layout.train.paths[i] for i in keep_train],
                        layout.train.labels[keep_train]),
              "test": ([layout.test.paths[i] for i in keep_test], layout.test.labels[keep_test])}
    fingerprint = {"settings": s.key(), "classes": layout.classes,
                   "files": own_cache.file_fingerprint(splits["train"][0] + splits["test"][0],
                                                       s.data_dir)}

    def build():
        fields = {"classes": list(layout.classes), "test_from": layout.test_from, "notes": []}
        kept = {}
        for split, (paths, labels) in splits.items():
            if not paths:
                raise DataFileError(f"{s.data_dir}: the {split} split holds no image (it is "
                                    f"{layout.test_from if split == 'test' else 'train/'}; a "
                                    "held-out fraction needs classes of >= 2 images)")
            positions, probes, notes = _probe(paths, s)
            fields["notes"] += [f"{split}: {n}" for n in notes]
            kept[split] = ([paths[i] for i in positions], labels[positions], probes)
        if s.image_size == 0:
            sizes = [_native_size(kept[k][0], kept[k][2]) for k in kept]
            if sizes[0] != sizes[1]:
                raise DataFileError(f"mixed sizes: the train images are {sizes[0][1]}x"
                                    f"{sizes[0][0]} but the test images {sizes[1][1]}x"
                                    f"{sizes[1][0]}; set --config.dataset.image_size=N")
        style = style_for(s.image_size, sizes[0] if s.image_size == 0 else None)
        fields["stored"] = list(style.stored)
        count = sum(len(k[0]) for k in kept.values())
        if not _fits(s, count, style.stored):
            return _stream_fields(s, fields, kept, style), None
        arrays = {}
        for split, (paths, labels, _) in kept.items():
            parts = parallel_map(image_files.decode_lenient, _chunks(paths), s.workers,
                                 style.stored)
            failed = [(j * CHUNK + i, msg) for j, (_, f) in enumerate(parts) for i, msg in f]
            if failed and not s.skip_unreadable:
                raise DataFileError(f"{failed[0][1]}: set --config.dataset.skip_unreadable=True "
                                    "to leave such files out")
            if failed:
                fields["notes"].append(f"{split}: {len(failed)} image(s) could not be decoded "
                                       f"and are left out, first: {failed[0][1]}")
            keep = np.ones(len(paths), bool)
            keep[[i for i, _ in failed]] = False
            arrays[f"{split}_images"] = np.concatenate([p[0] for p in parts])
            arrays[f"{split}_labels"] = labels[keep].astype(np.int32)
        fields["mean"], fields["std"] = own_cache.mean_std(arrays["train_images"])
        return fields, arrays

    return own_cache.load_or_build(entry_dir(s), fingerprint, build)


def _stream_fields(s: Settings, fields: dict, kept: dict, style: Style) -> dict:
    """The manifest of a streamed folder: its files and labels, and mean/std from a seeded
    sample of at most STATS_SAMPLE training images (unless the config gives them)."""
    for split, (paths, labels, _) in kept.items():
        fields[f"{split}_paths"] = [os.path.relpath(p, s.data_dir) for p in paths]
        fields[f"{split}_labels"] = [int(v) for v in labels]
    if not s.mean:
        paths = kept["train"][0]
        sample = _subset(len(paths), STATS_SAMPLE, s.split_seed, 3)
        images = np.concatenate(parallel_map(image_files.decode,
                                             _chunks([paths[i] for i in sample]), s.workers,
                                             style.stored))
        fields["mean"], fields["std"] = own_cache.mean_std(images)
        fields["stats_from"] = f"a seeded sample of {len(sample)} training images"
    return fields


# --- npz -----------------------------------------------------------------------------------------

def _npz_images(x: np.ndarray, key: str, path: str, notes: list[str]) -> np.ndarray:
    """x_train / x_test -> uint8 (N, H, W, 3); grey and RGBA converted (noted)."""
    if x.dtype != np.uint8:
        raise DataFileError(f"{path}: {key} is {x.dtype}; expected uint8 pixels in [0, 255] "
                            "(convert with (x * 255).round().astype(np.uint8) if on [0, 1])")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DataFileError(f"{path}: {key} has shape {x.shape}; expected (N, H, W, 3) NHWC "
                            "(or grey (N, H, W) / (N, H, W, 1), or RGBA (N, H, W, 4))")
    if x.shape[-1] == 1:
        notes.append(f"{key} is grey: its channel is repeated to RGB")
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        notes.append(f"{key} is RGBA: its alpha channel is dropped, as PIL's convert('RGB')")
        x = x[..., :3]
    return x


def _npz_labels(y: np.ndarray, key: str, path: str, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise DataFileError(f"{path}: {key} has shape {y.shape} and dtype {y.dtype}; expected "
                            f"{n} integer labels (N,)")
    if len(y) and y.min() < 0:
        raise DataFileError(f"{path}: {key} holds the label {int(y.min())}; labels count from 0")
    return y.astype(np.int32)


def _npz_arrays(s: Settings):
    """(arrays, classes, notes, native (H, W)) of the npz file, checked and converted."""
    path = s.data_dir
    if not os.path.isfile(path):
        raise DataNotFoundError(f"dataset.data_dir={path!r}: no such file (expected a .npz "
                                "with x_train, y_train, x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:   # not a zip, truncated, pickled objects
        raise DataFileError(f"{path}: cannot be read as a .npz ({type(e).__name__}: {e})") \
            from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in raw]
    if missing:
        raise DataFileError(f"{path}: no array {missing[0]!r} (it has {', '.join(raw)}; "
                            "expected x_train, y_train, x_test, y_test)")
    notes: list[str] = []
    arrays = {}
    for split in ("train", "test"):
        x = _npz_images(raw[f"x_{split}"], f"x_{split}", path, notes)
        arrays[f"{split}_images"] = x
        arrays[f"{split}_labels"] = _npz_labels(raw[f"y_{split}"], f"y_{split}", path, len(x))
    if not s.image_size and arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataFileError(f"mixed sizes: {path}: x_train images are "
                            f"{arrays['train_images'].shape[1:3]} but x_test images "
                            f"{arrays['test_images'].shape[1:3]} (H, W)")
    num_classes = int(arrays["train_labels"].max()) + 1
    classes = ([str(c) for c in raw["classes"]] if "classes" in raw
               else [str(i) for i in range(num_classes)])
    return arrays, classes, notes, arrays["train_images"].shape[1:3]


def _npz_entry(s: Settings) -> own_cache.Entry:
    """The npz arrays (resized if image_size asks), their mean/std cached by the file's
    size and mtime (the arrays themselves are read from the file each run)."""
    arrays, classes, notes, native = _npz_arrays(s)
    style = style_for(s.image_size, native)
    for split, stream in (("train", 1), ("test", 2)):
        keep = _subset(len(arrays[f"{split}_labels"]),
                       s.limit_train if split == "train" else s.limit_test, s.split_seed, stream)
        arrays[f"{split}_images"] = image_files.resize_array(arrays[f"{split}_images"][keep],
                                                             style.stored)
        arrays[f"{split}_labels"] = arrays[f"{split}_labels"][keep]

    def build():
        mean, std = own_cache.mean_std(arrays["train_images"])
        return {"classes": classes, "notes": notes, "stored": list(style.stored), "mean": mean,
                "std": std, "test_from": "x_test, y_test"}, None

    files = own_cache.file_fingerprint([s.data_dir], os.path.dirname(s.data_dir))
    entry = own_cache.load_or_build(entry_dir(s), {"settings": s.key(), "files": files}, build)
    entry.arrays = arrays
    return entry


# --- tfds:<name> -------------------------------------------------------------------------------

TFDS_HOW_TO = ("Prepare it with tfds (pip install 'kd_jax[tf]'; tfds downloads it into "
               "--config.dataset.data_dir, default ~/tensorflow_datasets), or point data_dir "
               "at a tfds data dir where it is prepared.")


def tfds_examples(builder, split: str):
    """(image uint8 (H, W, C), label) pairs of a split, in the split's order."""
    import tensorflow_datasets as tfds
    for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        yield example["image"], example["label"]


def _tfds_entry(s: Settings) -> own_cache.Entry:
    from kd_jax.data import tfds_io
    name = s.name[len(catalog.TFDS_PREFIX):]
    builder = tfds_io.prepared_builder(name, s.data_dir or None, allow_download=True,
                                       how_to=TFDS_HOW_TO)
    splits = builder.info.splits
    test_split = next((t for t in ("test", "validation") if t in splits), None)
    if "train" not in splits or test_split is None:
        raise DataFileError(f"tfds dataset {name!r} has splits {', '.join(splits)}; expected "
                            "train and test (or validation)")
    feature = builder.info.features["label"]
    classes = list(getattr(feature, "names", None) or range(feature.num_classes))
    counts = [splits["train"].num_examples, splits[test_split].num_examples]
    if s.image_size and not _fits(s, sum(counts), style_for(s.image_size).stored):
        raise DataFileError(f"{s.name}: its {sum(counts)} images would exceed "
                            f"dataset.memory_budget_mb={s.memory_budget_mb:g} decoded, and tfds "
                            "sets are held in memory only: raise the budget, or write the "
                            "images out as an image folder (which streams)")
    fingerprint = {"settings": s.key(), "version": str(builder.info.version),
                   "data_dir": getattr(builder, "data_dir", s.data_dir), "counts": counts}

    def build():
        notes, decoded, native = [], {}, None
        for split, key, limit, stream in (("train", "train", s.limit_train, 1),
                                          (test_split, "test", s.limit_test, 2)):
            keep = set(_subset(splits[split].num_examples, limit, s.split_seed, stream).tolist())
            images, labels = [], []
            for i, (image, label) in enumerate(tfds_examples(builder, split)):
                if i in keep:
                    images.append(image)
                    labels.append(int(label))
            decoded[key] = (images, np.asarray(labels, np.int32))
        sizes = {im.shape[:2] for images, _ in decoded.values() for im in images}
        if s.image_size == 0:
            if len(sizes) > 1:
                raise DataFileError(f"mixed sizes: tfds dataset {name!r} has images of "
                                    f"{len(sizes)} sizes (e.g. {sorted(sizes)[:2]} as (H, W)); "
                                    "set --config.dataset.image_size=N")
            native = next(iter(sizes))
        style = style_for(s.image_size, native)
        channels = {im.shape[-1] for images, _ in decoded.values() for im in images}
        if channels - {3}:
            notes.append(f"images with {sorted(channels - {3})} channel(s) converted to RGB")
        arrays = {}
        for key, (images, labels) in decoded.items():
            rgb = (_npz_images(im[None], f"{name} {key}", name, []) for im in images)
            arrays[f"{key}_images"] = np.concatenate(
                [image_files.resize_array(im, style.stored) for im in rgb])
            arrays[f"{key}_labels"] = labels
        mean, std = own_cache.mean_std(arrays["train_images"])
        return {"classes": [str(c) for c in classes], "notes": notes,
                "stored": list(style.stored), "mean": mean, "std": std,
                "test_from": f"tfds split {test_split!r}"}, arrays

    return own_cache.load_or_build(entry_dir(s), fingerprint, build)


def normalization(ds) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a dataset of `load` normalises with."""
    return ds.augmentation[:2] if isinstance(ds, InMemoryDataset) else ds.normalization


# --- the dataset -------------------------------------------------------------------------------

ENTRIES: dict[str, Callable[[Settings], own_cache.Entry]] = {
    catalog.IMAGE_FOLDER: _folder_entry, catalog.NPZ: _npz_entry}


def load(config: Any, *, process_index: int = 0, process_count: int = 1):
    """The Dataset of config (kd_jax.data's contract): an `InMemoryDataset` (CIFAR-style, in
    memory: the on-device path can take it) or an `OwnDataset`."""
    check_not_in_worker()
    s = settings(config)
    entry = ENTRIES.get(s.name, _tfds_entry)(s)
    m = entry.manifest
    for line in m.get("notes", []):
        note(f"{s.name} {s.data_dir or s.name}: {line}", process_index)
    if m.get("not_cached"):
        note(f"the decoded dataset could not be cached ({m['not_cached']})", process_index)
    classes = tuple(m["classes"])
    style = style_for(s.image_size, tuple(m["stored"]))
    mean, std = (s.mean, s.std) if s.mean else (tuple(m["mean"]), tuple(m["std"]))
    if entry.arrays is None:
        train = FileReader([os.path.join(s.data_dir, p) for p in m["train_paths"]],
                           style.stored, s.workers)
        test = FileReader([os.path.join(s.data_dir, p) for p in m["test_paths"]],
                          style.stored, s.workers)
        train_labels = np.asarray(m["train_labels"], np.int32)
        test_labels = np.asarray(m["test_labels"], np.int32)
    else:
        train, test = (ArrayReader(entry.arrays["train_images"]),
                       ArrayReader(entry.arrays["test_images"]))
        train_labels, test_labels = entry.arrays["train_labels"], entry.arrays["test_labels"]
    missing = sorted(set(np.unique(test_labels).tolist()) - set(np.unique(train_labels)
                                                               .tolist()))
    if missing:
        what = (f"class {classes[missing[0]]!r}" if missing[0] < len(classes)
                else f"label {missing[0]}")
        raise DataFileError(f"{s.data_dir or s.name}: {what} appears in the test split but in "
                            "no training example: every test class must be trained on")
    if len(train_labels) and int(train_labels.max()) >= len(classes):
        raise DataFileError(f"{s.data_dir}: label {int(train_labels.max())} but only "
                            f"{len(classes)} class names")
    info = DatasetInfo(name=s.name, num_classes=len(classes), image_shape=(*style.size, 3),
                       num_train=len(train_labels), num_test=len(test_labels), classes=classes)
    if entry.arrays is not None and not style.imagenet:
        return InMemoryDataset(info, train.images, train_labels, test.images, test_labels,
                               mean=mean, std=std, pad=style.pad, process_index=process_index,
                               process_count=process_count)
    return OwnDataset(info, train, train_labels, test, test_labels, style=style, mean=mean,
                      std=std, process_index=process_index, process_count=process_count)
