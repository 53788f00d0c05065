"""Random uint8 images and labels from a seed: no download, for smoke tests and benchmarks."""

from __future__ import annotations

import numpy as np


def make_split(num_examples: int, image_size: int, num_classes: int, rng: np.random.Generator):
    """uint8 (N, S, S, 3) uniform images and int32 (N,) uniform labels in [0, num_classes)."""
    images = rng.integers(0, 256, size=(num_examples, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=num_examples, dtype=np.int32)
    return images, labels


def load(num_train: int, num_test: int, image_size: int, num_classes: int, seed: int = 0):
    """Returns ((train_images, train_labels), (test_images, test_labels)), fixed by `seed`."""
    for key, value in (("num_train", num_train), ("num_test", num_test),
                       ("image_size", image_size), ("num_classes", num_classes)):
        if value <= 0:
            raise ValueError(f"synthetic dataset: {key}={value} must be positive")
    rng = np.random.default_rng(seed)
    return (make_split(num_train, image_size, num_classes, rng),
            make_split(num_test, image_size, num_classes, rng))
