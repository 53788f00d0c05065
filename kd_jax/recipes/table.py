"""The hyperparameter table: per dataset, the solver; per (teacher, student) pair, the values
that several methods share (the student's lr, DKD's beta, SDD's scale sets).

Each method module (kd_jax.methods.*) turns these facts into its own hyperparameters, and
`kd_jax.recipes.builder` writes the result into the config, so every number a run uses is
visible in its config. Sources (the reference code the published tables came from):

- mdistiller (megvii-research/mdistiller) `configs/cifar100/*.yaml`, `configs/imagenet/*`
  and `mdistiller/engine/cfg.py` defaults: the solver, the lr per student, DKD's beta.
- SDD (shicaiwei123/SDD-CVPR2024): `configs/{cifar100,cub200,imagenet}/sdd_*/*.yaml` for the
  lr and beta of each pair, and the launch lines in `teacher_resnet32x4.sh`,
  `teacher_unpair.sh`, `teacher_vgg.sh`, `teacher_wrn.sh` (CIFAR-100),
  `train_cub_{1,2,3,4}.sh` (CUB) and `run.sh` (ImageNet) for the scale set `--M` of each
  run; `train.py`'s default `--M [1,2,4]` where ImageNet has no launch line.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from kd_jax.data import catalog


@dataclasses.dataclass(frozen=True)
class Solver:
    """SGD with momentum and coupled weight decay; lr x decay_rate after each milestone."""

    lr: float
    weight_decay: float
    milestones: tuple[int, ...]
    num_epochs: int
    batch_size: int
    momentum: float = 0.9
    decay_rate: float = 0.1


SOLVERS = {
    # mdistiller configs/cifar100/*.yaml: batch 64, 240 epochs, x0.1 at 150/180/210, wd 5e-4.
    catalog.CIFAR100: Solver(lr=0.05, weight_decay=5e-4, milestones=(150, 180, 210),
                             num_epochs=240, batch_size=64),
    # mdistiller configs/imagenet/r34_r18/*.yaml (global batch 512 over the GPUs), wd 1e-4.
    catalog.IMAGENET: Solver(lr=0.2, weight_decay=1e-4, milestones=(30, 60, 90),
                             num_epochs=100, batch_size=512),
    # SDD configs/cub200/*.yaml: the CIFAR solver.
    catalog.CUB: Solver(lr=0.05, weight_decay=5e-4, milestones=(150, 180, 210),
                        num_epochs=240, batch_size=64),
}


@dataclasses.dataclass(frozen=True)
class Pair:
    """What the reference sets per (teacher, student) pair."""

    lr: float                        # the student's SGD lr
    dkd_beta: float                  # DKD's beta; SDD's DKD/NKD read beta and gamma from it
    # SDD's scale set M per base loss ('kd', 'dkd', 'nkd'); empty: no SDD run of this pair.
    sdd_scales: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _scales(kd: str, dkd: str, nkd: str) -> dict[str, str]:
    return {"kd": kd, "dkd": dkd, "nkd": nkd}


_S12 = _scales("[1,2]", "[1,2]", "[1,2]")
_S124 = _scales("[1,2,4]", "[1,2,4]", "[1,2,4]")

PAIRS: dict[str, dict[tuple[str, str], Pair]] = {
    catalog.CIFAR100: {
        # DKD's pairs (mdistiller configs/cifar100/dkd/*.yaml); lr 0.01 for ShuffleNet and
        # MobileNetV2 students, 0.05 otherwise.
        ("resnet56", "resnet20"): Pair(0.05, 2.0),
        ("resnet110", "resnet32"): Pair(0.05, 2.0),
        ("resnet32x4", "resnet8x4"): Pair(0.05, 8.0, _S12),
        ("wrn_40_2", "wrn_16_2"): Pair(0.05, 6.0),
        ("wrn_40_2", "wrn_40_1"): Pair(0.05, 6.0),
        ("vgg13", "vgg8"): Pair(0.05, 6.0, _S12),
        ("resnet32x4", "ShuffleV1"): Pair(0.01, 8.0, _S124),
        ("resnet32x4", "ShuffleV2"): Pair(0.01, 8.0, _S124),
        ("wrn_40_2", "ShuffleV1"): Pair(0.01, 8.0, _S124),
        ("vgg13", "MobileNetV2"): Pair(0.01, 6.0, _S124),   # the authors also tried [1,2]
        ("ResNet50", "MobileNetV2"): Pair(0.01, 8.0, _S124),
        # SDD's heterogeneous pairs (configs/cifar100/sdd_*/*.yaml).
        ("ResNet50", "vgg8"): Pair(0.05, 8.0, _scales("[1,2,4]", "[1,2,4]", "[1,2]")),
        ("wrn_40_2", "vgg8"): Pair(0.05, 8.0, _scales("[1,2,4]", "[1,2,4]", "[1,2]")),
        ("wrn_40_2", "MobileNetV2"): Pair(0.01, 6.0, _S124),
        ("resnet32x4", "MobileNetV2"): Pair(0.01, 8.0, _S124),
        ("ResNet50", "ShuffleV1"): Pair(0.01, 8.0, _S124),
    },
    # SDD configs/cub200/sdd_*/*.yaml and train_cub_*.sh: [1,2,4] for every pair and base;
    # the KD / DKD baselines are the same distillers run with M=[1].
    catalog.CUB: {
        ("resnet32x4", "MobileNetV2"): Pair(0.01, 8.0, _S124),
        ("resnet32x4", "ShuffleV1"): Pair(0.01, 8.0, _S124),
        ("vgg13", "MobileNetV2"): Pair(0.01, 6.0, _S124),
        ("vgg13", "vgg8"): Pair(0.05, 6.0, _S124),
        ("ResNet50", "ShuffleV1"): Pair(0.01, 8.0, _S124),
    },
    # mdistiller configs/imagenet/{r34_r18,r50_mv1}/dkd.yaml (beta); SDD run.sh (M).
    catalog.IMAGENET: {
        ("ResNet34", "ResNet18"): Pair(0.2, 0.5, _scales("[1,2,4]", "[1,2]", "[1,2,4]")),
        ("ResNet50", "MobileNetV1"): Pair(0.2, 2.0, _S124),
    },
}

# Models trained alone (CE): any CIFAR-100 / CUB model, at the lr its family of students uses.
LOW_LR_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")


def solver(dataset: str) -> Solver:
    """The dataset's solver; datasets without a published recipe use CIFAR-100's."""
    return SOLVERS.get(dataset, SOLVERS[catalog.CIFAR100])


def pairs(dataset: str) -> list[tuple[str, str]]:
    """The (teacher, student) pairs with a recipe on `dataset`, sorted."""
    return sorted(PAIRS.get(dataset, {}), key=lambda p: (p[0].lower(), p[1].lower()))


def pair(dataset: str, teacher: str, student: str) -> Pair:
    """The recipe of (teacher, student) on `dataset` (un-prefixed model names)."""
    table = PAIRS.get(dataset, {})
    if (teacher, student) not in table:
        known = ", ".join(f"{t}-{s}" for t, s in pairs(dataset)) or "none"
        raise ValueError(f"no {dataset} recipe for the pair {teacher}-{student}; known pairs: "
                         f"{known}")
    return table[(teacher, student)]


def model_lr(dataset: str, model: str) -> float:
    """The lr of a model trained alone: the solver's, or 0.01 for the low-lr students."""
    base = solver(dataset).lr
    return 0.01 if dataset != catalog.IMAGENET and model in LOW_LR_STUDENTS else base
