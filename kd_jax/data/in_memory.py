"""A dataset held in host memory as uint8 arrays, augmented per batch in numpy.

Used by cifar100, fashion_mnist and synthetic (small images: CIFAR-100 is 150 MB as uint8).
Every host holds the whole dataset and cuts its own slice out of each global batch, so the
global batch (and its augmentation) does not depend on the number of hosts.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from kd_jax.data import augment
from kd_jax.data.base import (DatasetInfo, augment_rng, check_epoch_args, local_batch_size,
                              shuffle_rng)


class TrainDraw(NamedTuple):
    """The random choices of one train step on one host: which examples, which crops/flips."""

    index: np.ndarray                 # int (b,) rows of the train set
    params: augment.CropFlipParams    # (b,) each


def draw_iter(num_train: int, epoch: int, global_batch_size: int, b: int, process_index: int,
              seed: int, start_step: int, steps: int, pad: int) -> Iterator[TrainDraw]:
    """The train draws of steps [start_step, steps) of `epoch` on host `process_index` (b
    examples each): the (seed, epoch) order and each step's crop/flip parameters
    (offsets in [0, 2 pad]). Shared by every dataset whose batches are a function of
    (seed, epoch, step) (also kd_jax.data.own_dataset)."""
    order = shuffle_rng(seed, epoch).permutation(num_train)
    host = slice(process_index * b, (process_index + 1) * b)
    for step in range(start_step, steps):
        index = order[step * global_batch_size:(step + 1) * global_batch_size][host]
        # Parameters are drawn for the whole global batch and sliced, so each host's
        # images are augmented exactly as in a single-host run.
        params = augment.sample_crop_flip(augment_rng(seed, epoch, step),
                                          global_batch_size, pad)[host]
        yield TrainDraw(index, params)


def eval_ranges(num_test: int, global_batch_size: int, b: int, process_index: int
                ) -> Iterator[tuple[int, int]]:
    """[start, stop) of host `process_index`'s slice of each global test batch, in order
    (empty or short in the last one: the caller pads to b)."""
    for i in range(math.ceil(num_test / global_batch_size)):
        start = min(i * global_batch_size + process_index * b, num_test)
        yield start, min(start + b, num_test)


class GlobalBatches:
    """Batches cut from one global batch per step, each host its slice: the schedule that
    InMemoryDataset and kd_jax.data.cub.CUBDataset share. Each epoch is one permutation of
    the train set; the crop offsets (in [0, 2 * pad]) and flips of a step are drawn for the
    whole global batch, from (seed, epoch, step) only. So the batches do not depend on the
    number of hosts, and start_step=k resumes exactly.

    A subclass sets info, _pad, _process_index and _process_count, and implements
    _train_batch(draw) (this host's batch of one step) and _read_test(start, stop)
    (float32 images and labels of test examples [start, stop)).
    """

    info: DatasetInfo
    _pad: int
    _process_index: int
    _process_count: int

    def steps_per_epoch(self, global_batch_size: int) -> int:
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size={global_batch_size} must be positive")
        return self.info.num_train // global_batch_size

    def train_batches(self, epoch: int, global_batch_size: int, seed: int,
                      start_step: int = 0) -> Iterator[dict]:
        """Yields this host's batch of each step (b = global / hosts examples)."""
        return map(self._train_batch, self.train_draws(epoch, global_batch_size, seed,
                                                       start_step))

    def train_draws(self, epoch: int, global_batch_size: int, seed: int,
                    start_step: int = 0) -> Iterator[TrainDraw]:
        """The random part of `train_batches`: per step, this host's example indices and
        crop/flip parameters (b of each), from the same (seed, epoch, step) streams. The
        on-device path (kd_jax.data.on_device) sends these instead of images."""
        b = local_batch_size(global_batch_size, self._process_count)
        steps = self.steps_per_epoch(global_batch_size)
        check_epoch_args(epoch, seed, start_step, steps)
        return self._draw_iter(epoch, global_batch_size, b, seed, start_step, steps)

    def _draw_iter(self, epoch, global_batch_size, b, seed, start_step, steps):
        return draw_iter(self.info.num_train, epoch, global_batch_size, b,
                         self._process_index, seed, start_step, steps, self._pad)

    def eval_batches(self, global_batch_size: int) -> Iterator[dict]:
        """Yields the test set in order; the last global batch is zero-padded, mask 0 there."""
        b = local_batch_size(global_batch_size, self._process_count)
        return self._eval_iter(global_batch_size, b)

    def _eval_iter(self, global_batch_size, b):
        for start, stop in eval_ranges(self.info.num_test, global_batch_size, b,
                                       self._process_index):
            real = stop - start
            image = np.zeros((b,) + self.info.image_shape, np.float32)
            label = np.zeros((b,), np.int32)
            mask = np.zeros((b,), np.float32)
            image[:real], label[:real] = self._read_test(start, stop)
            mask[:real] = 1.0
            yield {"image": image, "label": label, "mask": mask}


class InMemoryDataset(GlobalBatches):
    """Train/test uint8 images (N, H, W, 3) and int labels (N,), CIFAR-style augmentation.

    Train batch = zero-pad by `pad`, random (H, W) crop, horizontal flip (p = 0.5), then
    normalise with (mean, std): {"image": float32 (b, H, W, 3), "label": int32 (b,)};
    test batch = normalise only.
    """

    def __init__(self, info: DatasetInfo, train_images: np.ndarray, train_labels: np.ndarray,
                 test_images: np.ndarray, test_labels: np.ndarray, *,
                 mean: Sequence[float], std: Sequence[float], pad: int = 4,
                 process_index: int = 0, process_count: int = 1):
        for split, images, labels in (("train", train_images, train_labels),
                                      ("test", test_images, test_labels)):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != info.image_shape:
                raise ValueError(f"{info.name} {split} images: expected uint8 (N, "
                                 f"{', '.join(map(str, info.image_shape))}), got {images.dtype} "
                                 f"{images.shape}")
            if labels.shape != (images.shape[0],):
                raise ValueError(f"{info.name} {split} labels: shape {labels.shape} does not "
                                 f"match {images.shape[0]} images")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        self.info = info
        self._train_images = np.ascontiguousarray(train_images)
        self._train_labels = train_labels.astype(np.int32)
        self._test_images = np.ascontiguousarray(test_images)
        self._test_labels = test_labels.astype(np.int32)
        self._mean, self._std, self._pad = tuple(mean), tuple(std), pad
        self._process_index, self._process_count = process_index, process_count

    def _train_batch(self, draw: TrainDraw) -> dict:
        images = augment.cifar_train_augment(self._train_images[draw.index], draw.params,
                                             self._mean, self._std, self._pad)
        return {"image": images, "label": self._train_labels[draw.index]}

    def _read_test(self, start: int, stop: int):
        return (augment.normalize(self._test_images[start:stop], self._mean, self._std),
                self._test_labels[start:stop])

    @property
    def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images (N, H, W, 3), int32 labels (N,)) of the whole train set."""
        return self._train_images, self._train_labels

    @property
    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images (N, H, W, 3), int32 labels (N,)) of the whole test set."""
        return self._test_images, self._test_labels

    @property
    def augmentation(self) -> tuple[tuple, tuple, int]:
        """(mean, std, pad) of the train transform."""
        return self._mean, self._std, self._pad
