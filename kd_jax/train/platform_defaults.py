"""Run settings whose default depends on the platform of the run's devices (cpu, gpu, tpu).

| setting (auto)                  | CPU (unchanged)  | GPU, TPU (awaiting the device check)    |
|---------------------------------|------------------|-----------------------------------------|
| eval_batch_size = 0             | batch_size       | max(batch_size, 1024) for images of at  |
|                                 |                  | most 32 x 32 pixels; else batch_size    |
| checkpoint_every_epochs = None  | 1                | 0 (none by epochs)                      |
| checkpoint_every_minutes = None | 0 (none by time) | 10                                      |
| steps_per_dispatch = 0          | 1                | 8 (kd_jax.data.on_device)               |
| dataset.on_device = None        | False: the host  | True where the set fits the budget      |
|                                 | path             |                                         |

The CPU values are those every CPU run and measurement of this repository used, but for
dataset.on_device, measured: on a 2-core CPU the device path costs time, since its gather,
crop and normalisation run on the cores the step needs, while the host path's numpy
augmentation overlaps with the step in the prefetch thread (the quickstart's 2 epochs of seed
0: 54 s on the host path, 77 s on the device path, the same accuracies; docs/quickstart.md).
Both paths give the same batches bit for bit (tests/test_on_device.py). The GPU/TPU
values are chosen, not measured: issue 28 estimates an epoch of CIFAR at seconds on an H100,
where evaluating in batches of 64 (157 calls) and a checkpoint per epoch would be a large
share of the run; `python benchmarks/device_check.py` times them where a device is lent. Explicit values
always win. Checkpoints are also saved at the end and at every stop, whatever these say.
"""

from __future__ import annotations

import math

ACCELERATOR_EVAL_BATCH = 1024
ACCELERATOR_EVAL_MAX_PIXELS = 32 * 32   # the largest image (H * W) it applies to
ACCELERATOR_CHECKPOINT_MINUTES = 10.0


def is_accelerator(platform: str) -> bool:
    return platform != "cpu"


def eval_batch_size(requested: int, batch_size: int, image_shape: tuple, platform: str,
                    num_test: int, num_devices: int) -> int:
    """The global evaluation batch: `requested` (0: by platform), at most the test set in
    one batch padded to the devices (a larger one would only allocate padding)."""
    size = requested or batch_size
    if not requested and is_accelerator(platform) and (
            math.prod(image_shape[:2]) <= ACCELERATOR_EVAL_MAX_PIXELS):
        size = max(batch_size, ACCELERATOR_EVAL_BATCH // num_devices * num_devices)
    return min(size, -(-num_test // num_devices) * num_devices)


def on_device(platform: str) -> bool:
    """dataset.on_device=None: whether an in-memory train set that fits goes on the devices."""
    return is_accelerator(platform)


def checkpoint_every_epochs(requested, platform: str) -> int:
    """checkpoint_every_epochs (None: by platform); 0: none by epoch count."""
    if requested is not None:
        return int(requested)
    return 0 if is_accelerator(platform) else 1


def checkpoint_every_minutes(requested, platform: str) -> float:
    """checkpoint_every_minutes (None: by platform); 0: none by time."""
    if requested is not None:
        return float(requested)
    return ACCELERATOR_CHECKPOINT_MINUTES if is_accelerator(platform) else 0.0
