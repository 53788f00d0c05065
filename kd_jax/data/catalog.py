"""The datasets kd_jax reads, by name, and the facts other modules need about them.

The rest of the package refers to datasets through these constants (recipes, validation,
configs), so a dataset is named in one place.

Besides the six datasets kd_jax knows by name, a user's own data comes in three forms (see
kd_jax.data.own): `image_folder` (a torchvision ImageFolder tree), `npz` (uint8 arrays) and
`tfds:<name>` (any tfds image-classification dataset). Their classes and image size come from
the data and the config, not from this table.
"""

from __future__ import annotations

import dataclasses

CIFAR10 = "cifar10"
CIFAR100 = "cifar100"
IMAGENET = "imagenet2012"
CUB = "caltech_birds2011"
FASHION_MNIST = "fashion_mnist"
SYNTHETIC = "synthetic"
# The user's own data (kd_jax.data.own).
IMAGE_FOLDER = "image_folder"
NPZ = "npz"
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class Facts:
    num_classes: int      # for synthetic: the default of dataset.num_classes; own data: 0
                          # (read from the data)
    image_size: int       # side of the (square) images the model sees (own data: the
                          # default of dataset.image_size)
    model_family: str     # kd_jax.models family: "cifar" | "imagenet" | "cub"; own data:
                          # "" (any model whose downsampling fits the image size)
    # Images in the train and test splits the loaders read (tfds' counts for imagenet2012's
    # train / validation and caltech_birds2011's train / test); 0 for synthetic and own data,
    # whose sizes come from config keys or the data. Plans read them (`python -m
    # kd_jax.reproduce --dry-run`) without opening the dataset; the loaders count their
    # files themselves.
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
# Own data: 32x32 CIFAR-style by default (dataset.image_size chooses; kd_jax.data.own).
OWN_FACTS = Facts(0, 32, "")
OWN_NAMES = (IMAGE_FOLDER, NPZ, TFDS_PREFIX + "<name>")


def is_own(name: object) -> bool:
    """Whether `name` names the user's own data: image_folder, npz or tfds:<name>."""
    return isinstance(name, str) and (
        name in (IMAGE_FOLDER, NPZ)
        or (name.startswith(TFDS_PREFIX) and len(name) > len(TFDS_PREFIX)))


def allowed_names() -> str:
    """Every accepted dataset.name, for error messages."""
    return ", ".join(DATASETS + OWN_NAMES)


def check_name(name: object) -> None:
    """Raises ValueError naming the allowed values unless `name` is a dataset kd_jax reads."""
    if name not in FACTS and not is_own(name):
        raise ValueError(f"unknown dataset name {name!r}; allowed: {allowed_names()}")


def facts(name: str) -> Facts:
    check_name(name)
    return OWN_FACTS if is_own(name) else FACTS[name]
