"""The reference repositories' names for each pair of `kd_jax.reference.table`: config files
and launch lines of mdistiller, SDD and RepDistiller, as written in those repositories.

Pure data (docs/reference_names.md is generated from it by `python docs/generate.py`):

- mdistiller (megvii-research/mdistiller): `python3 tools/train.py --cfg <yaml> [KEY VALUE ...]`
  (yacs overrides); `configs/cifar100/dkd/<stem>.yaml` for 11 CIFAR-100 pairs,
  `configs/cifar100/kd.yaml` (resnet32x4 -> resnet8x4; other pairs by DISTILLER.TEACHER /
  DISTILLER.STUDENT / SOLVER.LR overrides), `configs/imagenet/{r34_r18,r50_mv1}/{kd,dkd}.yaml`.
- SDD (shicaiwei123/SDD-CVPR2024), a fork of mdistiller: `python train_origin.py --cfg
  configs/{cifar100,cub200}/sdd_{kd,dkd,nkd}/<stem>.yaml --gpu 0 --M <scales>` (the launch
  lines of teacher_*.sh and train_cub_*.sh; `--M [1]` is the plain base loss on the global
  logits, the CUB baselines) and `python -m torch.distributed.launch --nproc_per_node=2
  train.py --cfg ./configs/imagenet/{r34_r18,r50_mv2}/<method>.yaml --M <scales>` (run.sh).
  SDD's ImageNet `r50_mv2` directory and its `MobileNetV2_sdd` model hold mdistiller's
  MobileNetV1 architecture (conv_dw blocks, 1024 channels): kd_jax's imagenet_MobileNetV1.
- RepDistiller (HobbitLong/RepDistiller): `python train_student.py --path_t
  ./save/models/<teacher>_vanilla/ckpt_epoch_240.pth --distill kd --model_s <student> -r 0.1
  -a 0.9 -b 0 --trial 1` (CIFAR-100 only; README and scripts/run_cifar_distill.sh) and
  `python train_teacher.py --model <model>` (scripts/run_cifar_vanilla.sh).
"""

from __future__ import annotations

from typing import NamedTuple

from kd_jax.data import catalog
from kd_jax.reference import table

MDISTILLER = "mdistiller"
SDD = "SDD"
REPDISTILLER = "RepDistiller"

# configs/cifar100/{dkd,sdd_kd,sdd_dkd,sdd_nkd}/<stem>.yaml: SDD keeps mdistiller's stems.
CIFAR_STEMS: dict[tuple[str, str], str] = {
    ("resnet56", "resnet20"): "res56_res20",
    ("resnet110", "resnet32"): "res110_res32",
    ("resnet32x4", "resnet8x4"): "res32x4_res8x4",
    ("wrn_40_2", "wrn_16_2"): "wrn40_2_wrn_16_2",
    ("wrn_40_2", "wrn_40_1"): "wrn40_2_wrn_40_1",
    ("vgg13", "vgg8"): "vgg13_vgg8",
    ("resnet32x4", "ShuffleV1"): "res32x4_shuv1",
    ("resnet32x4", "ShuffleV2"): "res32x4_shuv2",
    ("wrn_40_2", "ShuffleV1"): "wrn40_2_shuv1",
    ("vgg13", "MobileNetV2"): "vgg13_mv2",
    ("ResNet50", "MobileNetV2"): "res50_mv2",
    ("ResNet50", "vgg8"): "res50_vgg8",
    ("wrn_40_2", "vgg8"): "wrn40_2_vgg8",
    ("wrn_40_2", "MobileNetV2"): "wrn40_2_mv2",
    ("resnet32x4", "MobileNetV2"): "res32x4_mv2",
    ("ResNet50", "ShuffleV1"): "res50_shuv1",
}
# The CIFAR-100 pairs with mdistiller's configs/cifar100/dkd/<stem>.yaml (the DKD paper's).
MDISTILLER_DKD_PAIRS = frozenset({
    ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"),
    ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1"),
    ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"),
})
# SDD configs/cub200/sdd_{kd,dkd,nkd}/<stem>.yaml.
CUB_STEMS: dict[tuple[str, str], str] = {
    ("resnet32x4", "MobileNetV2"): "res32x4_mv2",
    ("resnet32x4", "ShuffleV1"): "res32x4_shuv1",
    ("vgg13", "MobileNetV2"): "vgg13_mv2",
    ("vgg13", "vgg8"): "vgg13_vgg8",
    ("ResNet50", "ShuffleV1"): "res50_shuv1",
}
# configs/imagenet/<dir>/: (mdistiller's dir, SDD's dir).
IMAGENET_DIRS: dict[tuple[str, str], tuple[str, str]] = {
    ("ResNet34", "ResNet18"): ("r34_r18", "r34_r18"),
    ("ResNet50", "MobileNetV1"): ("r50_mv1", "r50_mv2"),
}

MDISTILLER_TRAIN = "python3 tools/train.py --cfg"
SDD_TRAIN = "python train_origin.py --cfg"
SDD_IMAGENET_TRAIN = "python -m torch.distributed.launch --nproc_per_node=2 train.py --cfg"


class Command(NamedTuple):
    """One reference command line, in the repository `repo`; `note` says where it is not
    a line that repository writes out (empty: it is)."""

    repo: str
    command: str
    note: str = ""


def _sdd_base(method_key: str) -> str:
    return method_key.removeprefix("sd_")


def reference_commands(dataset: str, method_key: str, teacher: str, student: str
                       ) -> list[Command]:
    """The reference repositories' commands for `method_key` ('kd', 'sd_dkd', ...) on the
    pair; [] where no reference code ran it."""
    pair = (teacher, student)
    scales = table.pair(dataset, teacher, student).sdd_scales
    inferred = table.pair(dataset, teacher, student).inferred
    out: list[Command] = []
    if dataset == catalog.CIFAR100:
        stem = CIFAR_STEMS[pair]
        if method_key == "kd":
            override = "" if pair == ("resnet32x4", "resnet8x4") else (
                f" DISTILLER.TEACHER {teacher} DISTILLER.STUDENT {student} SOLVER.LR "
                f"{table.pair(dataset, teacher, student).lr:g}")
            out.append(Command(MDISTILLER, f"{MDISTILLER_TRAIN} configs/cifar100/kd.yaml"
                               + override))
            out.append(Command(REPDISTILLER, "python train_student.py --path_t ./save/models/"
                               f"{teacher}_vanilla/ckpt_epoch_240.pth --distill kd --model_s "
                               f"{student} -r 0.1 -a 0.9 -b 0 --trial 1"))
        elif method_key == "dkd" and pair in MDISTILLER_DKD_PAIRS:
            out.append(Command(MDISTILLER, f"{MDISTILLER_TRAIN} configs/cifar100/dkd/{stem}.yaml"))
        elif method_key in ("dkd", "nkd") and scales:
            # SDD's distillers with M=[1] are the plain base loss on the global logits.
            out.append(Command(SDD, f"{SDD_TRAIN} configs/cifar100/sdd_{method_key}/{stem}.yaml "
                                    "--gpu 0 --M [1]",
                               "no CIFAR-100 launch line: the form of SDD's CUB baselines"))
        elif method_key.startswith("sd_") and scales:
            base = _sdd_base(method_key)
            note = "no launch line: scale set inferred" if base in inferred else ""
            out.append(Command(SDD, f"{SDD_TRAIN} configs/cifar100/sdd_{base}/{stem}.yaml "
                                    f"--gpu 0 --M {scales[base]}", note))
    elif dataset == catalog.CUB:
        stem = CUB_STEMS[pair]
        base = _sdd_base(method_key)
        m = scales[base] if method_key.startswith("sd_") else "[1]"
        out.append(Command(SDD, f"{SDD_TRAIN} configs/cub200/sdd_{base}/{stem}.yaml --gpu 0 "
                                f"--M {m}"))
    elif dataset == catalog.IMAGENET:
        mdistiller_dir, sdd_dir = IMAGENET_DIRS[pair]
        if method_key in ("kd", "dkd"):
            out.append(Command(MDISTILLER, f"{MDISTILLER_TRAIN} configs/imagenet/{mdistiller_dir}/"
                                           f"{method_key}.yaml"))
        elif method_key == "nkd":
            out.append(Command(SDD, f"{SDD_IMAGENET_TRAIN} ./configs/imagenet/{sdd_dir}/nkd.yaml"))
        else:
            base = _sdd_base(method_key)
            out.append(Command(SDD, f"{SDD_IMAGENET_TRAIN} ./configs/imagenet/{sdd_dir}/"
                                    f"sdd_{base}.yaml --M {scales[base]}"))
    return out


def teacher_command(model: str) -> Command:
    """RepDistiller's command that trained a CIFAR-100 teacher from scratch."""
    return Command(REPDISTILLER, f"python train_teacher.py --model {model}")
