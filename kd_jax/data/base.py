"""The dataset interface the trainer consumes, and helpers shared by its implementations."""

from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol

import numpy as np


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are absent and cannot (or may not) be downloaded."""


class MissingExtraError(DataNotFoundError):
    """The dataset needs a package of an optional extra (e.g. TensorFlow: kd_jax[tf])."""


def require_tensorflow(what: str) -> None:
    """Raises MissingExtraError naming the [tf] extra if TensorFlow is not installed (checked
    without importing it)."""
    import importlib.util
    if importlib.util.find_spec("tensorflow") is None:
        raise MissingExtraError(f"{what} needs TensorFlow, which the core kd_jax install leaves "
                                "out: pip install 'kd_jax[tf]' (tensorflow-cpu; on a machine "
                                "with a preinstalled tensorflow, as Colab's GPU runtimes, "
                                "nothing more is needed)")


class DataFileError(ValueError):
    """A dataset file exists but cannot be read (truncated, corrupt); the message names it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset after preprocessing.

    image_shape is (H, W, 3) of the arrays the model sees. classes: the class names by index
    where the data names them (own data: the folder names), else empty.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    classes: tuple[str, ...] = ()


class Dataset(Protocol):
    """A train/test dataset sharded by host. See kd_jax.data's docstring for the contract."""

    info: DatasetInfo

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """num_train // global_batch_size: the remainder batch is dropped (fixed shapes)."""

    def train_batches(self, epoch: int, global_batch_size: int, seed: int,
                      start_step: int = 0) -> Iterator[dict]:
        """This host's slice of each global train batch of `epoch` from `start_step` on."""

    def eval_batches(self, global_batch_size: int) -> Iterator[dict]:
        """This host's slice of each global test batch, full test set in order, padded."""


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Per-host batch size; the global batch must split evenly over hosts."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple "
                         f"of the process count {process_count}")
    return global_batch_size // process_count


def check_epoch_args(epoch: int, seed: int, start_step: int, steps: int) -> None:
    """Validates train_batches arguments (epochs count from 1; seeds feed SeedSequence)."""
    if epoch < 1:
        raise ValueError(f"epoch={epoch}: epochs are counted from 1")
    if seed < 0:
        raise ValueError(f"seed={seed} must be non-negative")
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step={start_step} outside [0, steps_per_epoch={steps}]")
    if steps == 0:
        raise ValueError("the global batch is larger than the train set: 0 steps per epoch")


# Domain tags keep the shuffle and augmentation streams of one (seed, epoch) independent.
_SHUFFLE_TAG, _AUGMENT_TAG, _TF_TAG = 0, 1, 2


def shuffle_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator that orders the train set in `epoch`."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, _SHUFFLE_TAG]))


def augment_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator of the augmentation of global batch `step` of `epoch`."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, _AUGMENT_TAG, step]))


def stateless_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit integer derived from (seed, epoch, stream), for APIs that take one int seed
    (tf.data); `stream` separates e.g. the hosts of one run."""
    words = np.random.SeedSequence([seed, epoch, _TF_TAG, stream]).generate_state(2, np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1
