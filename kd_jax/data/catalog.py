"""The datasets kd_jax reads, by name, and the facts other modules need about them.

The rest of the package refers to datasets through these constants (recipes, validation,
configs), so a dataset is named in one place.
"""

from __future__ import annotations

import dataclasses

CIFAR10 = "cifar10"
CIFAR100 = "cifar100"
IMAGENET = "imagenet2012"
CUB = "caltech_birds2011"
FASHION_MNIST = "fashion_mnist"
SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True)
class Facts:
    num_classes: int      # for synthetic: the default of dataset.num_classes
    image_size: int       # side of the (square) images the model sees
    model_family: str     # kd_jax.models family: "cifar" | "imagenet" | "cub"
    # Images in the train and test splits the loaders read (tfds' counts for imagenet2012's
    # train / validation and caltech_birds2011's train / test); 0 for synthetic, whose sizes
    # are config keys. Plans read them (`python -m kd_jax.reproduce --dry-run`) without
    # opening the dataset; the loaders count their files themselves.
    num_train: int = 0
    num_test: int = 0


FACTS = {
    CIFAR10: Facts(10, 32, "cifar", 50_000, 10_000),
    CIFAR100: Facts(100, 32, "cifar", 50_000, 10_000),
    IMAGENET: Facts(1000, 224, "imagenet", 1_281_167, 50_000),
    CUB: Facts(200, 224, "cub", 5_994, 5_794),
    # 28x28 grey images padded to 32x32 RGB, so every CIFAR model applies unchanged.
    FASHION_MNIST: Facts(10, 32, "cifar", 60_000, 10_000),
    SYNTHETIC: Facts(10, 32, "cifar"),
}
DATASETS = tuple(FACTS)


def facts(name: str) -> Facts:
    if name not in FACTS:
        raise ValueError(f"unknown dataset name {name!r}; allowed: {', '.join(DATASETS)}")
    return FACTS[name]
