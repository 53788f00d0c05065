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


FACTS = {
    CIFAR10: Facts(10, 32, "cifar"),
    CIFAR100: Facts(100, 32, "cifar"),
    IMAGENET: Facts(1000, 224, "imagenet"),
    CUB: Facts(200, 224, "cub"),
    # 28x28 grey images padded to 32x32 RGB, so every CIFAR model applies unchanged.
    FASHION_MNIST: Facts(10, 32, "cifar"),
    SYNTHETIC: Facts(10, 32, "cifar"),
}
DATASETS = tuple(FACTS)


def facts(name: str) -> Facts:
    if name not in FACTS:
        raise ValueError(f"unknown dataset name {name!r}; allowed: {', '.join(DATASETS)}")
    return FACTS[name]
