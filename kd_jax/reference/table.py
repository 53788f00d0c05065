"""The hyperparameter table: per dataset, the solver; per (teacher, student) pair, the values
that several methods share (the student's lr, DKD's beta, SDD's scale sets).

Pure data (no kd_jax import but the dataset names): each method module (kd_jax.methods.*)
turns these facts into its own hyperparameters, and `kd_jax.recipes.builder` writes the
result into the config, so every number a run uses is visible in its config. Sources (the
reference code the published tables came from):

- mdistiller (megvii-research/mdistiller) `configs/cifar100/*.yaml`, `configs/imagenet/*`
  and `mdistiller/engine/cfg.py` defaults: the solver, the lr per student, DKD's beta.
- SDD (shicaiwei123/SDD-CVPR2024): `configs/{cifar100,cub200,imagenet}/sdd_*/*.yaml` for the
  lr and beta of each pair, and the launch lines in `teacher_resnet32x4.sh`,
  `teacher_unpair.sh`, `teacher_vgg.sh`, `teacher_wrn.sh` (CIFAR-100),
  `train_cub_{1,2,3,4}.sh` (CUB) and `run.sh` (ImageNet) for the scale set `--M` of each
  run; `train.py`'s default `--M [1,2,4]` where ImageNet has no launch line.
- The gradient clip: SDD's `mdistiller/engine/trainer.py` (BaseTrainer.train_iter, used by
  its `train_origin.py` for CIFAR-100 / CUB and `train.py` for ImageNet) calls
  `nn.utils.clip_grad_norm_(self.distiller.parameters(), max_norm=40, norm_type=2)` between
  `loss.backward()` and `optimizer.step()`; mdistiller's own trainer (which produced the
  DKD paper's KD / DKD numbers) does not clip. See `clip_grad_norm` below.
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
    # Bases whose scale set no launch line gives (inferred; starred, with `note`).
    inferred: tuple[str, ...] = ()
    note: str = ""


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
        # SD-DKD [1,2] is inferred: teacher_resnet32x4.sh has SD-KD and SD-NKD lines only
        # for this pair, train_origin.py's --M default is None (which SDD's SPP rejects), and
        # no SD-DKD number of the pair is published.
        ("resnet32x4", "resnet8x4"): Pair(
            0.05, 8.0, _S12, inferred=("dkd",),
            note="SD-DKD [1,2]*: no SDD_DKD launch line for this pair (teacher_resnet32x4.sh "
                 "has SD-KD and SD-NKD lines only; train_origin.py's --M default None is "
                 "rejected by SDD's SPP); inferred from the other bases, no SD-DKD number "
                 "published"),
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
    # SDD configs/cub200/sdd_*/*.yaml and train_cub_*.sh: [1,2,4] for every pair and base.
    # The KD / DKD / NKD baselines are the same launch lines with --M [1], where SDD's
    # distillers (KD.py SDD_KD, SDD_DKD.py, SDD_nkd.py: `if self.M == '[1]'`) take the base
    # loss on the models' own global logits, not on SPP's region 0: kd_jax's kd / dkd / nkd.
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

# Models trained alone (CE) outside ImageNet: any model, at the lr CIFAR-100's pairs give it as
# a student where that is below the solver's (mdistiller's ShuffleNet / MobileNetV2 configs).
LOW_LR_STUDENTS: dict[str, float] = {
    student: p.lr for (_, student), p in PAIRS[catalog.CIFAR100].items()
    if p.lr < SOLVERS[catalog.CIFAR100].lr}


# --- the gradient clip of each run ---------------------------------------------------------

SDD_CLIP = 40.0   # SDD's BaseTrainer: clip_grad_norm_(max_norm=40, norm_type=2)
NO_CLIP = 0.0


def clip_grad_norm(dataset: str, method: str) -> float:
    """The max global gradient norm (torch clip_grad_norm_; 0 = none) of the trainer that
    produced the published number of `method` (a kd_jax method name) on `dataset`.

    - 40 (SDD's trainer): every SDD run (SD-KD / SD-DKD / SD-NKD on every dataset), every
      CUB run (SDD's `train_origin.py` runs its CUB configs, baselines and
      configs/cub200/vanilla.yaml alike), and NKD (SDD's distiller, run by SDD's
      `train_origin.py` on CIFAR-100 and `train.py` on ImageNet).
    - 0: KD and DKD on CIFAR-100 and ImageNet (the DKD paper's numbers, mdistiller's
      `mdistiller/engine/trainer.py`, which has no clip), models trained alone outside CUB
      (mdistiller's teachers come from CRD's repository; torchvision's ImageNet models), and
      CLKD and MSDCRD (see CLIP_NOTES: no reference code).
    Datasets without a published recipe (Fashion-MNIST, synthetic) follow CIFAR-100.
    """
    if method == "sdd" or dataset == catalog.CUB or method == "nkd":
        return SDD_CLIP
    return NO_CLIP


# Clip values that no reference code settles (starred in `python -m kd_jax.recipes`).
CLIP_NOTES = {
    "clkd": "no reference code; 0 chosen, as in the CRD / mdistiller trainers that the paper's "
            "baselines come from",
    "msdcrd": "no reference code; 0 chosen, as in the CRD trainer whose contrastive objective "
              "it extends",
}


# Method values that no released reference code settles, per (method key, dataset): starred
# in `python -m kd_jax.recipes` and in `python -m kd_jax.reproduce`'s tables.
METHOD_NOTES = {
    ("sd_kd", catalog.IMAGENET): "released SDD config has no KD section, so its code runs the "
                                 "CFG.KD defaults; the paper does not say which values produced "
                                 "its table",
    ("nkd", catalog.IMAGENET): "SDD's NKD distiller hard-codes T=1, gamma=1.5",
    ("clkd", catalog.CIFAR100): "no official code; 0.1 CE + 0.5 (L_ins + 2 L_cla) + 0.4 L_cc, as "
                                "reimplementations read the paper",
    ("msdcrd", catalog.CIFAR100): "no paper text or code: a reconstruction of the abstract's idea",
    ("sd_dkd", catalog.IMAGENET): "ResNet34->ResNet18: the released "
                                  "configs/imagenet/r34_r18/sdd_dkd.yaml has BATCH_SIZE 4, "
                                  "evidently a debug leftover; the solver's 512 is assumed",
}


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
    """The lr of a model trained alone: the solver's, or the low-lr students' (outside ImageNet)."""
    if dataset != catalog.IMAGENET and model in LOW_LR_STUDENTS:
        return LOW_LR_STUDENTS[model]
    return solver(dataset).lr
