"""The published teachers kd_jax can fetch: where each file lives and what it should score.

Sources (each URL is the one the reference code bases point their users at):
  * CIFAR-100: mdistiller's release asset `cifar_teachers.tar` (release tag `checkpoints`,
    https://github.com/megvii-research/mdistiller/releases/tag/checkpoints, README "untar it
    to ./download_ckpts"), holding `cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`, the
    paths mdistiller/models/cifar/__init__.py loads. Fallback: RepDistiller's per-model files
    (scripts/fetch_pretrained_teachers.sh), `http://shape2prog.csail.mit.edu/repo/
    <arch>_vanilla/ckpt_epoch_240.pth`.
  * ImageNet: the torchvision weights mdistiller/models/imagenet/resnet.py loads
    (`model_urls`), plain state_dicts in torch's tar layout of early 2017, whose file names
    carry the first hex digits of their sha256 (torch.hub's convention). Their full sha256 (and
    sizes, 87306240 and 102502400 bytes: whole 10240-byte tar records) are those OpenVINO's
    model zoo records for the same URLs (open_model_zoo models/public/resnet-34-pytorch and
    resnet-50-pytorch, model.yml); a fetch checks them.
The CIFAR archive's sha256 is not published: the first fetch records it in teacher.json, and
later fetches check the cached archive against it.
Published top-1 (%): kd_jax.reference.published (the teachers' rows of the DKD/SDD tables).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from kd_jax.data import catalog as data_catalog
from kd_jax.reference import published

MDISTILLER_CIFAR_TEACHERS_URL = (
    "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/"
    "cifar_teachers.tar")
REPDISTILLER_TEACHER_URL = "http://shape2prog.csail.mit.edu/repo/{arch}_vanilla/ckpt_epoch_240.pth"
TORCHVISION_URLS = {
    "imagenet_ResNet34": "https://download.pytorch.org/models/resnet34-333f7ec4.pth",
    "imagenet_ResNet50": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
}
TORCHVISION_SHA256 = {
    "imagenet_ResNet34": "333f7ec4c6338da2cbed37f1fc0445f9624f1355633fa1d7eab79a91084c6cef",
    "imagenet_ResNet50": "19c8e3572231adff6824a2da93fd67b5986919a2e65f8b6007eab4edee220097",
}
CIFAR_ARCHIVE = "cifar_teachers.tar"
TOLERANCE = 0.5   # points of top-1 allowed between a teacher's recorded/measured and published


@dataclasses.dataclass(frozen=True)
class Teacher:
    """One fetchable teacher; `name` is its kd_jax.models registry name and directory name."""

    name: str
    dataset: str                 # kd_jax.data dataset name it was trained on
    num_classes: int
    published_top1: float        # % on the dataset's test split, as published
    urls: tuple[str, ...]        # where to get `archive`, in order of preference
    archive: str                 # file name in the cache's downloads/ directory
    member: Optional[str]        # path suffix of the .pth inside a tar archive; None: a .pth
    sha256: Optional[str] = None  # of the teacher's .pth as published; None: not published


def _cifar(arch: str) -> Teacher:
    return Teacher(arch, data_catalog.CIFAR100, 100, published.CIFAR_VANILLA[arch],
                   (MDISTILLER_CIFAR_TEACHERS_URL,), CIFAR_ARCHIVE,
                   f"{arch}_vanilla/ckpt_epoch_240.pth")


def _imagenet(arch: str) -> Teacher:
    url = TORCHVISION_URLS[arch]
    return Teacher(arch, data_catalog.IMAGENET, 1000,
                   published.IMAGENET_TEACHERS[arch[len("imagenet_"):]], (url,),
                   url.rsplit("/", 1)[1], None, TORCHVISION_SHA256[arch])


TEACHERS: dict[str, Teacher] = {t.name: t for t in (
    *(_cifar(a) for a in ("resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50")),
    *(_imagenet(a) for a in ("imagenet_ResNet34", "imagenet_ResNet50")))}


def fallback_url(teacher: Teacher) -> Optional[str]:
    """RepDistiller's per-model URL of a CIFAR teacher (a .pth, not the archive)."""
    if teacher.archive != CIFAR_ARCHIVE:
        return None
    return REPDISTILLER_TEACHER_URL.format(arch=teacher.name)


def get(name: str) -> Teacher:
    if name not in TEACHERS:
        raise KeyError(f"no published teacher {name!r}; known: {', '.join(TEACHERS)}")
    return TEACHERS[name]
