"""The host-path dataset of a user's images: decoded arrays in memory, or files streamed
through worker processes; CIFAR-style or ImageNet-style augmentation by image size.

Images are decoded once to a *stored* size (kd_jax.data.image_files), then each batch is
augmented in numpy from the same (seed, epoch, step) draws as `InMemoryDataset`
(`in_memory.draw_iter`):

- CIFAR-style (image_size < `LARGE_FROM`): stored at (s, s); train: zero-pad s // 8, random
  (s, s) crop, flip; test: as stored. In memory this is exactly `InMemoryDataset` (which the
  on-device path can take); `OwnDataset` gives the same batches when streaming.
- ImageNet-style (image_size >= `LARGE_FROM`): stored at (R, R), R = s + 2 round(s / 14)
  (256 for 224: the CUB recipe, torchvision ``Resize((R, R))``); train: random (s, s) crop
  (``RandomCrop(s)``), flip; test: center crop (``CenterCrop(s)``).

Both then normalise with the dataset's mean/std. Whether the stored images come from memory
(`ArrayReader`) or from the files (`FileReader`), a batch is the same function of (seed,
epoch, step), so the streamed path's checkpointable position is the trainer's step: resuming
at step k decodes nothing before it. Each host decodes only its own slice of every global
batch (sharded by host); the worker processes (spawned: no fork of a process running JAX)
decode the next batches while the current one trains.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import weakref
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from kd_jax.data import augment, image_files
from kd_jax.data.base import DatasetInfo
from kd_jax.data.in_memory import GlobalBatches, eval_ranges

LARGE_FROM = 96   # image_size at and above which the ImageNet-style recipe is used


@dataclasses.dataclass(frozen=True)
class Style:
    """The geometry of a dataset's transforms."""

    size: tuple[int, int]        # (H, W) the model sees
    stored: tuple[int, int]      # (H, W) of the decoded images
    pad: int                     # CIFAR-style zero padding; 0: ImageNet-style crop of stored

    @property
    def imagenet(self) -> bool:
        return self.stored != self.size

    @property
    def offset_range(self) -> int:
        """Crop offsets are drawn from [0, 2 * offset_range] on each axis."""
        return self.pad if not self.imagenet else (self.stored[0] - self.size[0]) // 2

    @property
    def name(self) -> str:
        h, w = self.size
        if self.imagenet:
            return (f"ImageNet-style: resize {self.stored[0]}x{self.stored[1]}, random crop "
                    f"{h}x{w}, flip; test: center crop")
        return f"CIFAR-style: {h}x{w}, zero-pad {self.pad}, random crop, flip"


def style_for(image_size: int, native: Optional[tuple[int, int]] = None) -> Style:
    """image_size > 0: square images of that side (ImageNet-style from LARGE_FROM on);
    0: the images' own size `native` (H, W), CIFAR-style."""
    if image_size <= 0:
        h, w = native
        return Style((h, w), (h, w), max(1, round(min(h, w) / 8)))
    if image_size < LARGE_FROM:
        return Style((image_size,) * 2, (image_size,) * 2, max(1, round(image_size / 8)))
    stored = image_size + 2 * round(image_size / 14)
    return Style((image_size,) * 2, (stored,) * 2, 0)


def train_transform(images: np.ndarray, params: augment.CropFlipParams, style: Style,
                    mean, std) -> np.ndarray:
    """uint8 stored images (b, *stored, 3) -> float32 (b, *size, 3)."""
    if style.imagenet:
        return augment.normalize(augment.crop_flip(images, params, style.size), mean, std)
    return augment.cifar_train_augment(images, params, mean, std, style.pad)


def test_transform(images: np.ndarray, style: Style, mean, std) -> np.ndarray:
    if style.imagenet:
        images = augment.center_crop(images, style.size)
    return augment.normalize(images, mean, std)


class WorkerError(RuntimeError):
    """A decoding worker process died (its own error is printed above this one)."""


def check_not_in_worker() -> None:
    """Raises if called while a spawned worker re-runs its parent's main script: a script
    without `if __name__ == "__main__":` would build the dataset again in every worker."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "kd_jax: a dataset is being built inside a decoding worker process: the script "
            "that builds it runs at import; put its code under `if __name__ == \"__main__\":` "
            "(Python's spawn start method imports the main script in every worker)")


def _results(jobs) -> list:
    try:
        return [job.result() for job in jobs]
    except concurrent.futures.process.BrokenProcessPool as e:
        raise WorkerError(f"a decoding worker process died ({e}); its error is printed above")\
            from None


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """`workers` spawned processes: a fork of a process that runs JAX's threads can deadlock."""
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))


def parallel_map(fn, chunks: Sequence, workers: int, *args) -> list:
    """[fn(chunk, *args) for chunk in chunks], over `workers` processes (0: in this one)."""
    if workers == 0 or len(chunks) <= 1:
        return [fn(chunk, *args) for chunk in chunks]
    with _pool(min(workers, len(chunks))) as pool:
        return _results([pool.submit(fn, chunk, *args) for chunk in chunks])


class ArrayReader:
    """Stored images held in memory: uint8 (N, *stored, 3)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def read_ahead(self, indices: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for index in indices:
            yield self.images[index]

    def close(self) -> None:
        pass


class FileReader:
    """Stored images decoded from their files on demand, by `workers` spawned processes (0:
    in this process). `read_ahead` keeps up to `depth` batches in flight."""

    def __init__(self, paths: Sequence[str], stored: tuple[int, int], workers: int,
                 depth: int = 4):
        self.paths, self.stored, self.workers, self.depth = list(paths), stored, workers, depth
        self._pool: Optional[concurrent.futures.ProcessPoolExecutor] = None

    def __len__(self) -> int:
        return len(self.paths)

    def pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = _pool(self.workers)
            # The trainer drops the dataset when a run ends (a seeds run makes one per seed):
            # its workers stop then, without a close() in every caller.
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False,
                                               cancel_futures=True)
        return self._pool

    def _submit(self, index: np.ndarray) -> list:
        """Decode jobs of one batch, split over the workers."""
        chunks = [c for c in np.array_split(index, self.workers) if len(c)]
        return [self.pool().submit(image_files.decode, [self.paths[i] for i in c], self.stored)
                for c in chunks]

    def read_ahead(self, indices: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """uint8 (len(index), *stored, 3) for each index array, in order."""
        if self.workers == 0:
            for index in indices:
                yield image_files.decode([self.paths[i] for i in index], self.stored)
            return
        it, pending = iter(indices), collections.deque()
        try:
            for index in it:
                pending.append(self._submit(index))
                if len(pending) >= self.depth:
                    break
            while pending:
                jobs = pending.popleft()
                index = next(it, None)
                if index is not None:
                    pending.append(self._submit(index))
                parts = _results(jobs)
                yield np.concatenate(parts) if parts else np.empty((0, *self.stored, 3),
                                                                   np.uint8)
        finally:
            for jobs in pending:
                for job in jobs:
                    job.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._finalizer.detach()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class OwnDataset(GlobalBatches):
    """A user's dataset on the host path (the contract of kd_jax.data): stored uint8 images
    from `train` / `test` readers, int labels, the `style`'s transforms, sharded by host.
    The schedule is in_memory.GlobalBatches' (the same draws as an in-memory set); the
    images of a whole epoch's draws, or of the whole test set, are read ahead at once."""

    def __init__(self, info: DatasetInfo, train, train_labels: np.ndarray, test,
                 test_labels: np.ndarray, *, style: Style, mean: Sequence[float],
                 std: Sequence[float], process_index: int = 0, process_count: int = 1):
        if len(train) != len(train_labels) or len(test) != len(test_labels):
            raise ValueError(f"{info.name}: {len(train)}/{len(test)} images but "
                             f"{len(train_labels)}/{len(test_labels)} labels")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        self.info, self.style = info, style
        self._train, self._test = train, test
        self._train_labels = np.asarray(train_labels, np.int32)
        self._test_labels = np.asarray(test_labels, np.int32)
        self._mean, self._std = tuple(mean), tuple(std)
        self._pad = style.offset_range   # GlobalBatches' crop offsets: [0, 2 * _pad]
        self._process_index, self._process_count = process_index, process_count

    @property
    def normalization(self) -> tuple[tuple, tuple]:
        return self._mean, self._std

    def train_batches(self, epoch: int, global_batch_size: int, seed: int,
                      start_step: int = 0) -> Iterator[dict]:
        """Yields {"image": float32 (b, H, W, 3), "label": int32 (b,)}, b = global / hosts."""
        return self._train_iter(self.train_draws(epoch, global_batch_size, seed, start_step))

    def _train_iter(self, draws):
        draws = list(draws)   # small: b indices and 3 parameters per step
        stored = self._train.read_ahead(d.index for d in draws)
        for draw, images in zip(draws, stored):
            yield {"image": train_transform(images, draw.params, self.style, self._mean,
                                            self._std),
                   "label": self._train_labels[draw.index]}

    def _eval_iter(self, global_batch_size, b):   # GlobalBatches.eval_batches' iterator
        ranges = list(eval_ranges(self.info.num_test, global_batch_size, b,
                                  self._process_index))
        stored = self._test.read_ahead(np.arange(start, stop) for start, stop in ranges)
        for (start, stop), images in zip(ranges, stored):
            real = stop - start
            image = np.zeros((b,) + self.info.image_shape, np.float32)
            label = np.zeros((b,), np.int32)
            mask = np.zeros((b,), np.float32)
            if real:
                image[:real] = test_transform(images, self.style, self._mean, self._std)
            label[:real] = self._test_labels[start:stop]
            mask[:real] = 1.0
            yield {"image": image, "label": label, "mask": mask}

    def close(self) -> None:
        """Stops the worker processes (if any)."""
        self._train.close()
        self._test.close()
