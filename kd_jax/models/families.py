"""Model families by input: CIFAR-size models (32x32), ImageNet models, CUB-200 variants.

The registry names the ImageNet and CUB models with a prefix ("imagenet_ResNet18",
"cub_vgg13"); recipes and pairs use the un-prefixed names of the reference tables
("ResNet34-ResNet18", "vgg13-vgg8"). These helpers are the only place that knows the
prefixes.
"""

from __future__ import annotations

CIFAR, IMAGENET, CUB = "cifar", "imagenet", "cub"
FAMILIES = (CIFAR, IMAGENET, CUB)
_PREFIX = {CIFAR: "", IMAGENET: "imagenet_", CUB: "cub_"}


def arch_name(name: str, family: str) -> str:
    """The registry name of model `name` of `family`.

    ('ResNet18', 'imagenet') -> 'imagenet_ResNet18'; ('vgg8', 'cifar') -> 'vgg8'.
    """
    if family not in _PREFIX:
        raise ValueError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
    return name if family_of(name) == family and family != CIFAR else _PREFIX[family] + name


def family_of(arch: str) -> str:
    """'imagenet_ResNet18' -> 'imagenet', 'cub_vgg8' -> 'cub', anything else -> 'cifar'."""
    for family, prefix in _PREFIX.items():
        if prefix and arch.startswith(prefix):
            return family
    return CIFAR


def base_name(arch: str) -> str:
    """The un-prefixed name of a registry model: 'cub_vgg8' -> 'vgg8'."""
    return arch[len(_PREFIX[family_of(arch)]):]
