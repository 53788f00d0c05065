"""tf.data pipelines for the 224x224 datasets: imagenet2012, and caltech_birds2011 (CUB-200)
through its resized cache (kd_jax.data.cub).

Decoding and cropping run in TensorFlow (flax-example style), with stateless random ops whose
seeds derive from (seed, epoch, position in the epoch): the batches of an epoch are a pure
function of (seed, epoch) and `start_step` skips encoded records without decoding them.

Each host reads its own contiguous slice of the train split (equal sizes, remainder dropped)
and of the test split; a global batch is the concatenation of the hosts' batches.

imagenet2012 (train: RandomResizedCrop 224, scale (0.08, 1), ratio (3/4, 4/3), flip; test:
resize the short side to 256, center crop 224) samples the crop box with torchvision's
algorithm (`random_resized_crop_window`: 10 attempts, log-uniform aspect ratio, a clamped
central crop as fallback), vectorised over the attempts. Resizes are bilinear with
antialiasing, like PIL's, and rounded to uint8 as PIL's are (`to_uint8`).

Train batches leave the host as uint8 images with the flip decided but not applied
({"image": uint8 (b, 224, 224, 3), "label", "flip": bool (b,)}; `device_normalization`): the
jitted step mirrors and normalises them (kd_jax.data.on_device.finish_host_batch), so the host sends
a quarter of the bytes of float32 images and skips the float arithmetic. Test batches are
normalised here, float32, with the same constants (augment.normalize_affine).

tf.data runs its map and reads in a thread pool of `threads` per process (the
dataset.input_threads key; 0: this process's share of the host's cores, `auto_threads`), so
that the processes of one host (e.g. 8 under SLURM, one per GPU) do not each start a pool as
large as the machine.

TensorFlow is imported inside the functions that use it: it takes seconds to import, and
runs on the other datasets (and every command-line mistake) should not pay for it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

from kd_jax.data import augment, tfds_io
from kd_jax.data.base import (DatasetInfo, check_epoch_args, local_batch_size, require_tensorflow,
                              stateless_seed)

CROP = 224
RESIZE = 256


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What differs between the two datasets."""

    train_split: str
    test_split: str
    num_classes: int
    skip_decoding: bool  # keep JPEG bytes so the train crop can decode only the crop window
    how_to: str


SPECS = {
    "imagenet2012": _Spec(
        "train", "validation", 1000, True,
        "Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org into "
        "--config.dataset.data_dir (used as tfds's manual and data directory); the first run "
        "prepares the tfds records there."),
    "caltech_birds2011": _Spec(
        "train", "test", 200, False,
        "Give the trainer network access for tfds to download CUB-200-2011 once, or place "
        "CUB_200_2011.tgz and segmentations.tgz (https://data.caltech.edu/records/65de6-vp158, "
        "/records/w9d68-gec53) in --config.dataset.data_dir (used as tfds's manual and data "
        "directory), or point it at a directory where tfds prepared caltech_birds2011."),
}


# (mean, std) of the uint8 train batches' normalisation in the step (all 224x224 datasets).
NORMALIZATION = (augment.IMAGENET_MEAN, augment.IMAGENET_STD)


def auto_threads(local_processes: int) -> int:
    """dataset.input_threads=0: this process's share of the host's cores. A process bound to
    some cores (SLURM's --cpus-per-task, taskset) keeps them all; an unbound one gets
    cores / `local_processes` (the run's processes on this host)."""
    cores = len(os.sched_getaffinity(0))
    if cores >= (os.cpu_count() or cores):
        cores //= max(local_processes, 1)
    return max(cores, 1)


def thread_options(threads: int):
    """tf.data.Options bounding a pipeline to `threads` threads (its own pool, and no
    parallelism inside an op)."""
    import tensorflow as tf
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return options


def to_uint8(image):
    """float32 pixels -> uint8, rounded half up (as PIL's resize rounds) and clipped."""
    import tensorflow as tf
    return tf.cast(tf.clip_by_value(tf.floor(image + 0.5), 0.0, 255.0), tf.uint8)


def _normalize(image):
    """uint8 -> float32 ``x * scale - shift`` (augment.normalize_affine of the ImageNet
    statistics: what the step's table holds for the train batches)."""
    import tensorflow as tf
    scale, shift = augment.normalize_affine(*NORMALIZATION)
    return tf.cast(image, tf.float32) * scale - shift


def resize_uint8(image, size):
    """`_resize`, rounded to uint8 (`to_uint8`)."""
    return to_uint8(_resize(image, size))


def _resize(image, size):
    import tensorflow as tf
    return tf.image.resize(image, size, method="bilinear", antialias=True)


def _center_crop(image, size: int):
    import tensorflow as tf
    shape = tf.shape(image)
    # torchvision CenterCrop: top = round((H - size) / 2).
    top = tf.cast(tf.round((shape[0] - size) / 2), tf.int32)
    left = tf.cast(tf.round((shape[1] - size) / 2), tf.int32)
    return tf.ensure_shape(image[top:top + size, left:left + size], (size, size, 3))


RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
RRC_ATTEMPTS = 10


def random_resized_crop_window(height, width, uniforms):
    """torchvision RandomResizedCrop.get_params as a pure TF function -> [top, left, h, w].

    uniforms: float32 (RRC_ATTEMPTS, 4) in [0, 1), the draws of each attempt (area, log
    aspect ratio, top, left). Attempt k: target area = H*W*U(scale), aspect = exp(U(log
    ratio)), w = round(sqrt(area*aspect)), h = round(sqrt(area/aspect)) (round half to even,
    as Python's round); the first attempt with 0 < w <= W and 0 < h <= H wins, with top =
    floor(U * (H - h + 1)) and left likewise (torch.randint). If none fits: the central crop
    of the whole image clamped to the ratio range.
    """
    import tensorflow as tf
    h_img = tf.cast(height, tf.float32)
    w_img = tf.cast(width, tf.float32)
    u_area, u_ratio, u_top, u_left = tf.unstack(uniforms, axis=1)
    area = h_img * w_img * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u_area)
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = tf.round(tf.sqrt(area * aspect))
    h = tf.round(tf.sqrt(area / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    top = tf.floor(u_top * (h_img - h + 1))
    left = tf.floor(u_left * (w_img - w + 1))
    first = tf.argmax(tf.cast(fits, tf.int32))   # the first fitting attempt (0 if none)
    found = tf.stack([top[first], left[first], h[first], w[first]])

    in_ratio = w_img / h_img
    fb_w = tf.where(in_ratio < RRC_RATIO[0], w_img,
                    tf.where(in_ratio > RRC_RATIO[1], tf.round(h_img * RRC_RATIO[1]), w_img))
    fb_h = tf.where(in_ratio < RRC_RATIO[0], tf.round(w_img / RRC_RATIO[0]), h_img)
    fallback = tf.stack([tf.floor((h_img - fb_h) / 2), tf.floor((w_img - fb_w) / 2), fb_h, fb_w])
    return tf.cast(tf.where(tf.reduce_any(fits), found, fallback), tf.int32)


def flip_draw(seed):
    """The mirror decision of tf.image.stateless_random_flip_left_right(image, seed): a
    uniform [0, 1) draw below 0.5 (the same stream, applied in the step instead)."""
    import tensorflow as tf
    return tf.random.stateless_uniform([], seed, minval=0, maxval=1.0) < 0.5


def imagenet_train(image_bytes, seed):
    """JPEG bytes -> (uint8 (224, 224, 3), flip bool): random resized crop, and whether to
    mirror it (the step mirrors and normalises)."""
    import tensorflow as tf
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.io.extract_jpeg_shape(image_bytes)
    uniforms = tf.random.stateless_uniform((RRC_ATTEMPTS, 4), crop_seed)
    window = random_resized_crop_window(shape[0], shape[1], uniforms)
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
    return resize_uint8(image, [CROP, CROP]), flip_draw(flip_seed)


def imagenet_eval(image_bytes):
    """JPEG bytes -> float32 (224, 224, 3): short side to 256 (torchvision Resize(256)), center
    crop 224, normalise."""
    import tensorflow as tf
    image = tf.io.decode_jpeg(image_bytes, channels=3)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    short = tf.minimum(height, width)
    # torchvision truncates the long side: int(256 * long / short).
    new_h = tf.where(height == short, RESIZE, RESIZE * height // short)
    new_w = tf.where(width == short, RESIZE, RESIZE * width // short)
    image = _resize(image, tf.stack([new_h, new_w]))
    return _normalize(to_uint8(_center_crop(image, CROP)))


def load(name: str, data_dir: str | None, *, threads: int, **kwargs):
    """Prepares (if needed) and opens tfds dataset `name`: imagenet2012 as a
    TFDSImageDataset, caltech_birds2011 through its resized cache (kd_jax.data.cub, which
    needs no TensorFlow once the cache exists); kwargs go to the dataset."""
    if name == "caltech_birds2011":
        from kd_jax.data import cub
        return cub.load(data_dir, threads=threads, **kwargs)
    require_tensorflow(f"dataset {name!r} (its tf.data pipeline)")
    builder = prepared_builder(name, data_dir)
    return TFDSImageDataset(name, builder, threads=threads, **kwargs)


def prepared_builder(name: str, data_dir: str | None):
    """The tfds builder of `name` in data_dir, prepared (downloaded: CUB) if needed."""
    return tfds_io.prepared_builder(name, data_dir, allow_download=True,
                                    how_to=SPECS[name].how_to, manual_dir=data_dir)


def _host_range(num_examples: int, process_index: int, process_count: int,
                drop_remainder: bool) -> tuple[int, int]:
    """[start, stop) of this host's contiguous slice of a split."""
    if drop_remainder:  # equal slices: every host yields the same number of train batches
        size = num_examples // process_count
        return process_index * size, (process_index + 1) * size
    return (process_index * num_examples // process_count,
            (process_index + 1) * num_examples // process_count)


class TFDSImageDataset:
    """imagenet2012 through tf.data; batches come out as numpy dicts.

    builder: a prepared tfds builder (anything with info.splits[name].num_examples and
    as_dataset(split=, shuffle_files=, decoders=, read_config=)). shuffle_buffer: examples in
    the tf.data shuffle buffer after file-level shuffling (default 16 local batches, as the
    flax ImageNet example). threads: tf.data's thread pool (None: TensorFlow's default, as
    large as the machine).
    """

    device_normalization = NORMALIZATION   # uint8 train batches, finished in the step

    def __init__(self, name: str, builder, *, process_index: int = 0, process_count: int = 1,
                 limit_train: int = 0, limit_test: int = 0, shuffle_buffer: int | None = None,
                 threads: int | None = None):
        if name != "imagenet2012":
            raise ValueError(f"TFDSImageDataset reads imagenet2012, not {name!r} "
                             "(caltech_birds2011: kd_jax.data.cub)")
        spec = SPECS[name]
        self._spec, self._name, self._builder = spec, name, builder
        self._process_index, self._process_count = process_index, process_count
        self._shuffle_buffer, self.threads = shuffle_buffer, threads
        splits = builder.info.splits
        num_train = splits[spec.train_split].num_examples
        num_test = splits[spec.test_split].num_examples
        num_train = min(num_train, limit_train) if limit_train else num_train
        num_test = min(num_test, limit_test) if limit_test else num_test
        start, stop = _host_range(num_train, process_index, process_count, True)
        self._train_split = f"{spec.train_split}[{start}:{stop}]"
        start, stop = _host_range(num_test, process_index, process_count, False)
        self._test_split = f"{spec.test_split}[{start}:{stop}]"
        self._host_test_count = stop - start
        # Every host must run the same number of eval steps: size them by the largest slice.
        self._max_host_test_count = math.ceil(num_test / process_count)
        self.info = DatasetInfo(name=name, num_classes=spec.num_classes,
                                image_shape=(CROP, CROP, 3), num_train=num_train,
                                num_test=num_test)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size={global_batch_size} must be positive")
        return self.info.num_train // global_batch_size

    def _read(self, split: str, *, shuffle_seed: int | None):
        import tensorflow_datasets as tfds
        decoders = {"image": tfds.decode.SkipDecoding()} if self._spec.skip_decoding else None
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed)
        return self._builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                        decoders=decoders, read_config=read_config)

    def _bounded(self, ds):
        return ds if self.threads is None else ds.with_options(thread_options(self.threads))

    def train_batches(self, epoch: int, global_batch_size: int, seed: int,
                      start_step: int = 0) -> Iterator[dict]:
        """Yields {"image": uint8 (b, 224, 224, 3), "label": int32 (b,), "flip": bool (b,)}."""
        import tensorflow_datasets as tfds
        return iter(tfds.as_numpy(self.train_dataset(epoch, global_batch_size, seed,
                                                     start_step)))

    def train_dataset(self, epoch: int, global_batch_size: int, seed: int,
                      start_step: int = 0):
        """The tf.data.Dataset of `train_batches`."""
        import tensorflow as tf
        b = local_batch_size(global_batch_size, self._process_count)
        steps = self.steps_per_epoch(global_batch_size)
        check_epoch_args(epoch, seed, start_step, steps)
        # Hosts read different records; their augmentation streams differ as well.
        epoch_seed = stateless_seed(seed, epoch, self._process_index)

        def example(index, ex):
            seed_pair = tf.stack([tf.constant(epoch_seed, tf.int64), index])
            image, flip = imagenet_train(ex["image"], seed_pair)
            return {"image": image, "label": tf.cast(ex["label"], tf.int32), "flip": flip}

        ds = self._read(self._train_split, shuffle_seed=epoch_seed % 2**31)
        ds = ds.shuffle(self._shuffle_buffer or 16 * b, seed=epoch_seed % 2**31,
                        reshuffle_each_iteration=False)
        # Enumerate before skipping so each example keeps its augmentation seed on resume.
        ds = ds.enumerate().skip(start_step * b).take((steps - start_step) * b)
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return self._bounded(ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    def eval_batches(self, global_batch_size: int) -> Iterator[dict]:
        """Yields this host's test slice in order, zero-padded to full batches ("mask" 0)."""
        import tensorflow as tf
        import tensorflow_datasets as tfds
        b = local_batch_size(global_batch_size, self._process_count)
        num_batches = math.ceil(self._max_host_test_count / b)
        padding = num_batches * b - self._host_test_count

        def example(ex):
            return {"image": imagenet_eval(ex["image"]), "label": tf.cast(ex["label"], tf.int32),
                    "mask": tf.constant(1.0, tf.float32)}

        ds = self._read(self._test_split, shuffle_seed=None)
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        pad = {"image": tf.zeros((CROP, CROP, 3), tf.float32), "label": tf.constant(0, tf.int32),
               "mask": tf.constant(0.0, tf.float32)}
        ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(padding))
        ds = self._bounded(ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
        return iter(tfds.as_numpy(ds))
