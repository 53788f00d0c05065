"""The input of the training loop: each dispatch's batch (host path) or draws (on-device).

Host path: the augmented batches of (seed, epoch), one per dispatch (k = 1). On-device path
(kd_jax.data.on_device): the train set is on the devices and the host sends each dispatch's
draws (k, B, 4), k = steps_per_dispatch. Where fewer steps remain (an epoch's end, a resume
inside an epoch, total_steps) the draws are padded to k with zeros and the step masks the
padded steps (kd_jax.train.step.make_multi_train_step's `live`): every call has the same
shapes, so a run compiles its train step once. Padding consumes nothing of the draw
streams. Either way the data of a step is a function of (seed, epoch, step), so a resumed
run sees the same data as an uninterrupted one. Prefetched to the mesh by a thread, one
epoch at a time.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import numpy as np

from kd_jax import data
from kd_jax.data import on_device
from kd_jax.train import platform_defaults, schedules
from kd_jax.train.config_validation import ConfigError

if TYPE_CHECKING:
    from kd_jax.train.setup import Setup


def use_on_device(config, ds, platform: str) -> bool:
    """dataset.on_device: None (auto) = on a GPU or TPU, an in-memory train set within
    on_device.DEVICE_BUDGET_BYTES; on a CPU, the host path (platform_defaults.on_device);
    True where the set cannot go there is an error."""
    wanted = config.dataset.get("on_device", None)
    if wanted is None:
        return platform_defaults.on_device(platform) and on_device.fits(ds, platform)
    if wanted and not isinstance(ds, data.InMemoryDataset):
        raise ConfigError(f"dataset.on_device=True, but {ds.info.name} is not held in memory "
                          "as uint8 images of the model's size (its batches come from "
                          "tf.data, from files, or are ImageNet-style crops): set "
                          "dataset.on_device=False")
    return bool(wanted)


class Dispatch(NamedTuple):
    steps: int           # the steps this call takes (its live steps: at most k)
    item: Any            # a batch (host path) or draws (k, B, 4) padded to k, on the mesh
    lr: np.float32       # the epoch's learning rate
    epoch: np.int32      # the epoch (from 1)


def dispatches(s: Setup, step: int) -> Iterator[Dispatch]:
    """The dispatches from `step` on to the end. Close the generator when done
    (contextlib.closing): that stops the epoch's prefetch thread, also when a step raised."""
    c, spe = s.config, s.schedule.steps_per_epoch
    while step < s.total_steps:
        epoch = step // spe + 1
        lr = np.float32(schedules.learning_rate(c.optimizer, c.num_epochs, epoch))
        epoch_arr = np.int32(epoch)
        first = step % spe
        if s.device_train is None:
            items = data.prefetch_to_mesh(
                s.ds.train_batches(epoch, s.batch_size, c.seed, start_step=first),
                s.batch_sharding)
            lengths = itertools.repeat(1)
        else:
            last = min(spe, s.total_steps - (epoch - 1) * spe)
            k = s.steps_per_dispatch
            items = data.prefetch_to_mesh(
                (pad_draws(d, k) for d in on_device.dispatches(
                    s.ds, epoch, s.batch_size, c.seed, first, last, k)),
                on_device.draws_sharding(s.built.mesh))
            lengths = (min(k, last - t) for t in range(first, last, k))
        try:
            for steps, item in zip(lengths, items):
                yield Dispatch(steps, item, lr, epoch_arr)
        finally:
            items.close()
        step = epoch * spe


def pad_draws(draws: np.ndarray, k: int) -> np.ndarray:
    """A dispatch's draws (n, b, 4), n <= k, padded with zeros (example 0 at offset (0, 0),
    unflipped: a valid batch, for a step that is masked) to (k, b, 4)."""
    padding = np.zeros((k - draws.shape[0],) + draws.shape[1:], draws.dtype)
    return np.concatenate([draws, padding])
