"""caltech_birds2011 (CUB-200-2011), resized once: both splits cached as uint8 (N, 256, 256, 3).

The recipe resizes every photo to 256x256 before its crop (train: random 224 crop and flip;
test: center crop 224; ImageNet mean/std), so the resize is the same in every epoch. It runs
once, in tf.data (bilinear with antialiasing, like PIL's, rounded half up to uint8 as PIL
rounds: kd_jax.data.imagenet), into kd_jax's cache; later runs read the cache memory-mapped,
without TensorFlow. An epoch crops in numpy; the jitted step flips and normalises
(kd_jax.data.on_device.finish_host_batch).

Cache: cache_dir("caltech_birds2011", KEY)/{train,test}_{images,labels}.npy and cache.json,
written last (a cache without it is incomplete and rebuilt). KEY hashes what the arrays are
made of: the prepared tfds data (the path and the bytes of its dataset_info.json: version,
split sizes, file checksums), the resize and CACHE_FORMAT. Preparing the data again, in
another place or version, gives a new key (delete old keys' folders to free the space).
One process of a run builds it (kd_jax.data.processes); files go to per-process part names,
then are renamed.

Batches follow InMemoryDataset's scheme: each epoch one permutation of the train split
(shuffle_rng(seed, epoch)); global batch s of it, with crop offsets and flips drawn for the
whole global batch from augment_rng(seed, epoch, s) (augment.sample_crop_flip with pad 16:
offsets uniform in [0, 32], as torchvision's RandomCrop(224) of a 256 image); each host its
slice. So batches do not depend on the number of hosts, and start_step=k resumes exactly.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os

import numpy as np

from kd_jax.cache import cache_dir
from kd_jax.data import augment, imagenet, tfds_io
from kd_jax.data.base import DataFileError, DatasetInfo, require_tensorflow
from kd_jax.data.download import part_path, remove_stale_parts
from kd_jax.data.in_memory import GlobalBatches

NAME = "caltech_birds2011"
SPLITS = ("train", "test")
RESIZE, CROP = imagenet.RESIZE, imagenet.CROP
CACHE_FORMAT = 1      # bump when the arrays' recipe changes
MANIFEST = "cache.json"
_BUILD_BATCH = 64


def source_id(builder) -> str:
    """What the prepared tfds data is: its folder and its dataset_info.json's bytes (a fake
    builder without them: its split sizes)."""
    directory = str(getattr(builder, "data_dir", "") or "")
    info = os.path.join(directory, "dataset_info.json")
    if directory and os.path.isfile(info):
        with open(info, "rb") as fh:
            return f"{os.path.abspath(directory)}:{hashlib.sha256(fh.read()).hexdigest()}"
    return repr(sorted((s, builder.info.splits[s].num_examples) for s in SPLITS))


def cache_key(source: str) -> str:
    recipe = {"source": source, "resize": [RESIZE, RESIZE, "bilinear", "antialias",
                                           "round-half-up"], "format": CACHE_FORMAT}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _prepared_source(data_dir: str | None) -> str | None:
    """source_id of the one prepared version in data_dir, found without tfds (None: none,
    or several, where tfds decides)."""
    root = os.path.expanduser(data_dir or tfds_io.default_data_dir())
    infos = glob.glob(os.path.join(glob.escape(root), NAME, "*", "dataset_info.json"))
    if len(infos) != 1:
        return None

    class _Prepared:
        data_dir = os.path.dirname(infos[0])
    return source_id(_Prepared)


def load(data_dir: str | None, *, threads: int, process_index: int = 0,
         process_count: int = 1, limit_train: int = 0, limit_test: int = 0) -> "CUBDataset":
    """Opens the cache of CUB in tfds data dir `data_dir`, preparing the tfds data (tfds
    downloads it) and building the cache first where needed."""
    source = _prepared_source(data_dir)
    directory = cache_dir(NAME, cache_key(source)) if source else None
    if directory is None or not is_complete(directory):
        require_tensorflow(f"dataset {NAME!r} (resizing it once into {cache_dir(NAME)})")
        builder = imagenet.prepared_builder(NAME, data_dir)
        directory = cache_dir(NAME, cache_key(source_id(builder)))
        if not is_complete(directory):
            build(builder, directory, threads)
    return CUBDataset(directory, process_index=process_index, process_count=process_count,
                      limit_train=limit_train, limit_test=limit_test)


def is_complete(directory: str) -> bool:
    """The manifest is there and every array has the shape it records."""
    try:
        with open(os.path.join(directory, MANIFEST)) as fh:
            counts = json.load(fh)["examples"]
        for split in SPLITS:
            images, labels = _open(directory, split)
            if images.shape != (counts[split], RESIZE, RESIZE, 3) or labels.shape != (
                    counts[split],):
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def _open(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    return (np.load(os.path.join(directory, f"{split}_images.npy"), mmap_mode="r"),
            np.load(os.path.join(directory, f"{split}_labels.npy")))


def build(builder, directory: str, threads: int) -> None:
    """Decodes and resizes both splits of `builder` (in file order) into `directory`: each
    file to this process's part file, renamed once all are written, the manifest last. A
    failure removes the part files (a killed build's are removed by the next one)."""
    os.makedirs(directory, exist_ok=True)
    for name in (*(f"{split}_{kind}.npy" for split in SPLITS for kind in ("images", "labels")),
                 MANIFEST):
        remove_stale_parts(os.path.join(directory, name))
    parts, counts = [], {}
    try:
        for split in SPLITS:
            counts[split] = builder.info.splits[split].num_examples
            _write_split(builder, split, counts[split], directory, threads, parts)
        manifest = os.path.join(directory, MANIFEST)
        with _naming(part_path(manifest)), open(part_path(manifest), "w") as fh:
            parts.append((part_path(manifest), manifest))
            json.dump({"dataset": NAME, "examples": counts, "resize": RESIZE,
                       "format": CACHE_FORMAT}, fh)
    except BaseException:
        for part, _ in parts:
            with contextlib.suppress(OSError):
                os.remove(part)
        raise
    for part, path in parts:   # the manifest last: its presence marks a complete cache
        os.replace(part, path)


def _write_split(builder, split: str, n: int, directory: str, threads: int,
                 parts: list) -> None:
    """Writes split's images and labels to part files, each added to `parts` as (part,
    final path) before it is written."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    ds = builder.as_dataset(split=f"{split}[0:{n}]", shuffle_files=False, decoders=None,
                            read_config=tfds.ReadConfig())
    ds = ds.map(lambda ex: (imagenet.resize_uint8(ex["image"], [RESIZE, RESIZE]),
                            tf.cast(ex["label"], tf.int32)),
                num_parallel_calls=threads, deterministic=True)
    ds = ds.batch(_BUILD_BATCH).prefetch(2).with_options(imagenet.thread_options(threads))
    paths = [os.path.join(directory, f"{split}_{kind}.npy") for kind in ("images", "labels")]
    written = [(part_path(p), p) for p in paths]
    parts += written
    with _naming(written[0][0]):
        images = np.lib.format.open_memmap(written[0][0], mode="w+", dtype=np.uint8,
                                           shape=(n, RESIZE, RESIZE, 3))
        # The map's pages get their blocks when written: on a full disk that is SIGBUS,
        # which kills the process without a word. Taken now, it is ENOSPC, an OSError.
        with open(written[0][0], "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
    labels = np.zeros((n,), np.int32)
    done = 0
    for image, label in tfds.as_numpy(ds):
        images[done:done + len(label)] = image
        labels[done:done + len(label)] = label
        done += len(label)
    images.flush()
    del images
    if done != n:
        raise DataFileError(f"{NAME} {split}: tfds read other than the {n} examples its info "
                            "gives; prepare the data again")
    with _naming(written[1][0]), open(written[1][0], "wb") as fh:
        np.save(fh, labels)


@contextlib.contextmanager
def _naming(path: str):
    """An OSError in the block names `path` (a buffered write's or posix_fallocate's names
    no file), so that its one error line does."""
    try:
        yield
    except OSError as e:
        e.filename = e.filename or path
        raise


class CUBDataset(GlobalBatches):
    """CUB from its resized cache (module docstring): train batches are uint8 crops with
    their flips, {"image": uint8 (b, 224, 224, 3), "label": int32 (b,), "flip": bool (b,)},
    finished in the step; test batches center crops normalised here, float32."""

    device_normalization = imagenet.NORMALIZATION   # uint8 train batches, finished in the step

    def __init__(self, directory: str, *, process_index: int = 0, process_count: int = 1,
                 limit_train: int = 0, limit_test: int = 0):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        self.directory = directory
        self._train = _open(directory, "train")
        self._test = _open(directory, "test")
        if limit_train:
            self._train = (self._train[0][:limit_train], self._train[1][:limit_train])
        if limit_test:
            self._test = (self._test[0][:limit_test], self._test[1][:limit_test])
        self._pad = (RESIZE - CROP) // 2    # offsets in [0, 32]: RandomCrop(224) of 256
        self._process_index, self._process_count = process_index, process_count
        self.info = DatasetInfo(name=NAME, num_classes=imagenet.SPECS[NAME].num_classes,
                                image_shape=(CROP, CROP, 3), num_train=len(self._train[1]),
                                num_test=len(self._test[1]))

    def _train_batch(self, draw) -> dict:
        images, labels = self._train
        p = draw.params
        crops = np.stack([images[i, y:y + CROP, x:x + CROP]
                          for i, y, x in zip(draw.index, p.offset_y, p.offset_x)])
        return {"image": crops, "label": np.asarray(labels[draw.index], np.int32),
                "flip": p.flip}

    def _read_test(self, start: int, stop: int):
        images, labels = self._test
        top = self._pad   # torchvision's CenterCrop(224) of 256: round((256 - 224) / 2)
        crops = images[start:stop, top:top + CROP, top:top + CROP]
        return augment.normalize(crops, *self.device_normalization), labels[start:stop]
