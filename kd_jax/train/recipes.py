"""The published recipes and numbers (RECIPES.md), in ONE place, plus the config builder.

Every config file in configs/ is a thin `get_config(arg)` over `build_config`, so a pair's
hyperparameters and its published top-1 live only here. Pairs are named
"<teacher>-<student>" with registry names (case-insensitive), e.g. "resnet32x4-ShuffleV1";
ImageNet pairs drop the `imagenet_` prefix ("ResNet34-ResNet18") and CUB pairs the `cub_`
prefix ("vgg13-MobileNetV2").
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from kd_jax.losses import objectives

# --- Published top-1 (%) -------------------------------------------------------------------

# CIFAR-100 models trained alone (CE only): teachers and students from scratch.
CIFAR_VANILLA = {
    "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "wrn_40_2": 75.61,
    "vgg13": 74.64, "ResNet50": 79.34,
    "resnet20": 69.06, "resnet32": 71.14, "resnet8x4": 72.50, "wrn_16_2": 73.26,
    "wrn_40_1": 71.98, "vgg8": 70.36, "MobileNetV2": 64.60, "ShuffleV1": 70.50,
    "ShuffleV2": 71.82,
}

# DKD's beta per CIFAR-100 pair (alpha 1, T 4, warmup 20). SDD's NKD reads gamma from it.
CIFAR_DKD_BETA = {
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0,
    ("resnet32x4", "resnet8x4"): 8.0, ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0, ("vgg13", "vgg8"): 6.0,
    ("resnet32x4", "ShuffleV1"): 8.0, ("resnet32x4", "ShuffleV2"): 8.0,
    ("wrn_40_2", "ShuffleV1"): 8.0, ("vgg13", "MobileNetV2"): 6.0,
    ("ResNet50", "MobileNetV2"): 8.0, ("ResNet50", "vgg8"): 8.0, ("wrn_40_2", "vgg8"): 8.0,
    ("wrn_40_2", "MobileNetV2"): 6.0, ("resnet32x4", "MobileNetV2"): 8.0,
    ("ResNet50", "ShuffleV1"): 8.0,
}

# CIFAR-100, DKD paper table: (KD, DKD).
CIFAR_KD_DKD = {
    ("resnet56", "resnet20"): (70.66, 71.97), ("resnet110", "resnet32"): (73.08, 74.11),
    ("resnet32x4", "resnet8x4"): (73.33, 76.32), ("wrn_40_2", "wrn_16_2"): (74.92, 76.24),
    ("wrn_40_2", "wrn_40_1"): (73.54, 74.81), ("vgg13", "vgg8"): (72.98, 74.68),
    ("resnet32x4", "ShuffleV1"): (74.07, 76.45), ("wrn_40_2", "ShuffleV1"): (74.83, 76.70),
    ("vgg13", "MobileNetV2"): (67.37, 69.71), ("ResNet50", "MobileNetV2"): (67.35, 70.35),
    ("resnet32x4", "ShuffleV2"): (74.45, 77.07),
}

_SDD_COLUMNS = ("kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd")

# CIFAR-100, SDD paper table: KD / SD-KD / DKD / SD-DKD / NKD / SD-NKD.
CIFAR_SDD = {
    ("resnet32x4", "ShuffleV1"): (74.07, 76.30, 76.45, 77.30, 75.31, 76.34),
    ("wrn_40_2", "ShuffleV1"): (74.83, 76.65, 76.70, 77.21, 75.96, 76.81),
    ("ResNet50", "MobileNetV2"): (67.35, 69.55, 70.35, 71.36, 69.39, 70.25),
    ("vgg13", "MobileNetV2"): (67.37, 68.79, 69.71, 70.25, 68.72, 69.50),
    ("resnet32x4", "ShuffleV2"): (74.45, 76.67, 77.07, 78.05, 76.26, 77.07),
    ("ResNet50", "vgg8"): (73.81, 74.89, 75.34, 75.86, 74.01, 74.62),
    ("resnet32x4", "MobileNetV2"): (67.72, 68.84, 68.98, 70.08, 68.81, 69.59),
    ("wrn_40_2", "vgg8"): (73.97, 74.44, 74.13, 74.58, 73.80, 74.34),
    ("wrn_40_2", "MobileNetV2"): (68.87, 69.81, 69.33, 70.13, 68.85, 70.04),
    ("ResNet50", "ShuffleV1"): (75.82, 76.87, 77.01, 78.11, 76.22, 76.95),
}

# ImageNet (SDD table; DKD's own numbers are identical): KD / SD-KD / DKD / SD-DKD / NKD / SD-NKD.
IMAGENET_SDD = {
    ("ResNet34", "ResNet18"): (70.66, 71.44, 71.70, 72.02, 71.96, 72.33),
    ("ResNet50", "MobileNetV1"): (70.50, 72.24, 72.05, 73.08, 72.58, 73.12),
}
IMAGENET_TEACHERS = {"ResNet34": 73.31, "ResNet50": 76.16}
# ImageNet DKD beta (alpha 1, T 1, warmup 1); NKD gamma reads it too.
IMAGENET_DKD_BETA = {("ResNet34", "ResNet18"): 0.5, ("ResNet50", "MobileNetV1"): 2.0}

# CUB-200-2011, SDD table: KD / SD-KD / DKD / SD-DKD (no NKD column published).
CUB_SDD = {
    ("resnet32x4", "MobileNetV2"): (56.09, 60.51, 59.94, 62.97),
    ("resnet32x4", "ShuffleV1"): (61.68, 65.46, 64.51, 65.58),
    ("vgg13", "MobileNetV2"): (53.98, 59.80, 58.45, 64.86),
    ("vgg13", "vgg8"): (64.18, 67.32, 67.20, 68.67),
    ("ResNet50", "ShuffleV1"): (57.21, 60.56, 59.21, 60.66),
}

# SDD scale sets: [1,2] for same-family pairs, [1,2,4] for heterogeneous ones.
SDD_SAME_FAMILY = {("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("ResNet34", "ResNet18")}

# Students whose CIFAR learning rate is 0.01 instead of 0.05.
LOW_LR_STUDENTS = {"ShuffleV1", "ShuffleV2", "MobileNetV2"}

DATASETS = ("cifar100", "imagenet2012", "caltech_birds2011")
METHODS = ("ce", "kd", "dkd", "nkd", "sdd", "clkd")


def _table(dataset: str) -> dict:
    return {"cifar100": {**{p: None for p in CIFAR_KD_DKD}, **CIFAR_SDD},
            "imagenet2012": IMAGENET_SDD, "caltech_birds2011": CUB_SDD}[dataset]


def pairs(dataset: str) -> list[tuple[str, str]]:
    """All (teacher, student) pairs with a recipe for `dataset`."""
    return sorted(_table(dataset))


def parse_pair(dataset: str, arg: str) -> tuple[str, str]:
    """'resnet32x4-ShuffleV1' -> ('resnet32x4', 'ShuffleV1'), matched case-insensitively."""
    known = {f"{t}-{s}".lower(): (t, s) for t, s in pairs(dataset)}
    if arg.lower() not in known:
        raise ValueError(f"unknown {dataset} pair {arg!r}; known pairs: "
                         + ", ".join(f"{t}-{s}" for t, s in pairs(dataset)))
    return known[arg.lower()]


def published_top1(dataset: str, method: str, teacher: Optional[str], student: str,
                   base: str = "dkd") -> Optional[float]:
    """The published top-1 of `student` distilled from `teacher` by `method` (or None).

    Names are un-prefixed ('resnet8x4', not 'cub_resnet8x4'). method 'ce' looks up the model
    trained alone; method 'sdd' uses column 'sd_<base>'.
    """
    if method == "ce":
        table = IMAGENET_TEACHERS if dataset == "imagenet2012" else (
            CIFAR_VANILLA if dataset == "cifar100" else {})
        return table.get(student)
    column = f"sd_{base}" if method == "sdd" else method
    pair = (teacher, student)
    if dataset == "cifar100" and pair in CIFAR_SDD and column in _SDD_COLUMNS:
        return CIFAR_SDD[pair][_SDD_COLUMNS.index(column)]
    if dataset == "cifar100" and pair in CIFAR_KD_DKD and column in ("kd", "dkd"):
        return CIFAR_KD_DKD[pair][("kd", "dkd").index(column)]
    if dataset == "imagenet2012" and pair in IMAGENET_SDD and column in _SDD_COLUMNS:
        return IMAGENET_SDD[pair][_SDD_COLUMNS.index(column)]
    if dataset == "caltech_birds2011" and pair in CUB_SDD and column in _SDD_COLUMNS[:4]:
        return CUB_SDD[pair][_SDD_COLUMNS.index(column)]
    return None


def arch_name(dataset: str, name: str) -> str:
    """Registry name of a recipe model: prefixes 'imagenet_' / 'cub_' where needed."""
    prefix = {"imagenet2012": "imagenet_", "caltech_birds2011": "cub_"}.get(dataset, "")
    return name if name.startswith(prefix) else prefix + name


def unprefixed(name: str) -> str:
    for prefix in ("imagenet_", "cub_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


# --- Config builder ---------------------------------------------------------------------------

def _optional_str(value: Optional[str] = None):
    return ml_collections.FieldReference(value, field_type=str)


def base_config(dataset: str) -> ml_collections.ConfigDict:
    """Everything but the method: dataset, solver, schedule, logging, checkpointing."""
    c = ml_collections.ConfigDict()
    c.dataset = ml_collections.ConfigDict(dict(
        name=dataset,
        data_dir=_optional_str(),   # None: the library's default location.
        num_train=2048,             # synthetic only: number of training images.
        num_test=512,               # synthetic only: number of test images.
        image_size=224 if dataset in ("imagenet2012", "caltech_birds2011") else 32,
        num_classes={"cifar100": 100, "imagenet2012": 1000, "caltech_birds2011": 200}.get(dataset, 10),
        limit_train=0,              # >0: use only the first N training images.
        limit_test=0,               # >0: use only the first N test images.
    ))
    # teacher.checkpoint: a .pth file, a converted directory (python -m kd_jax.convert, or
    # <workdir>/final_model of a kd_jax run), or 'random' (smoke tests and benchmarks only).
    c.teacher = ml_collections.ConfigDict(dict(arch="", checkpoint=_optional_str(),
                                               allow_pickle=False))
    c.student = ml_collections.ConfigDict(dict(arch=""))
    c.recipe = ""                   # the pair or model name the config was built for.

    imagenet = dataset == "imagenet2012"
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=0.2 if imagenet else 0.05,
        momentum=0.9,
        weight_decay=1e-4 if imagenet else 5e-4,  # coupled L2 on ALL student parameters.
        schedule="multistep",     # multistep | cosine
        milestones=(30, 60, 90) if imagenet else (150, 180, 210),
        decay_rate=0.1,
    ))
    c.batch_size = 512 if imagenet else 64   # global, over all devices and hosts.
    c.eval_batch_size = 0                    # 0: same as batch_size.
    c.num_epochs = 100 if imagenet else 240
    c.total_steps = 0       # >0: stop after this many steps in total (smoke runs).
    c.seed = 0
    c.log_every_steps = 50
    c.eval_every_epochs = 1
    c.keep_checkpoints = 3
    c.checkpoint_every_epochs = 1
    c.tensorboard = True
    c.progress_bar = True
    c.export_model = True   # write the final student to <workdir>/final_model (teacher-loadable).
    c.multihost = False     # True: jax.distributed.initialize() before anything else.
    return c


def method_config(method: str, dataset: str, teacher: str = "", student: str = "",
                  base: str = "dkd") -> ml_collections.ConfigDict:
    """The `method` block with the recipe's hyperparameters for (teacher, student)."""
    imagenet = dataset == "imagenet2012"
    pair = (unprefixed(teacher), unprefixed(student))
    beta = (IMAGENET_DKD_BETA if imagenet else CIFAR_DKD_BETA).get(pair, 8.0)
    temperature = 1.0 if imagenet else 4.0
    warmup = 1 if imagenet else 20
    m = ml_collections.ConfigDict({"name": method})
    if method == "kd":
        m.update(temperature=temperature, ce_weight=0.5 if imagenet else 0.1,
                 kd_weight=0.5 if imagenet else 0.9)
    elif method == "dkd":
        m.update(alpha=1.0, beta=beta, temperature=temperature, ce_weight=1.0,
                 warmup_epochs=warmup)
    elif method == "nkd":
        m.update(gamma=beta, temperature=temperature, ce_weight=1.0, warmup_epochs=warmup)
    elif method == "sdd":
        scales = "[1,2]" if pair in SDD_SAME_FAMILY else "[1,2,4]"
        # ce_weight / kd_weight None: the base's recipe (sdd_weights), so that overriding
        # only method.base still gives the published objective.
        m.update(base=base, scales=scales, complementary_weight=2.0, temperature=temperature,
                 alpha=1.0, beta=beta, gamma=beta, warmup_epochs=warmup,
                 ce_weight=ml_collections.FieldReference(None, field_type=float),
                 kd_weight=ml_collections.FieldReference(None, field_type=float))
    elif method == "clkd":
        m.update(ce_weight=0.1, instance_weight=0.5, class_weight_beta=2.0,
                 correlation_weight=0.4, correlation="batch")
    elif method != "ce":
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    return m


def sdd_weights(base: str, dataset: str) -> tuple[float, float]:
    """(ce_weight, kd_weight) of SD-<base>: the loss library's SDD defaults (SD-KD 0.1/0.9,
    SD-DKD / SD-NKD 1/1), except SD-KD on ImageNet, which takes KD's ImageNet 0.5/0.5."""
    if base == "kd" and dataset == "imagenet2012":
        return 0.5, 0.5
    ce_weight, kd_weight, _ = objectives.SD_DEFAULTS[base]
    return ce_weight, kd_weight


def build_config(method: str, dataset: str, arg: Optional[str], default_pair: str,
                 base: str = "dkd") -> ml_collections.ConfigDict:
    """A full config for `method` on `dataset`; `arg` names the pair (or the model for 'ce')."""
    c = base_config(dataset)
    arg = arg or default_pair
    if "," in arg:   # "pair,base" for SDD, e.g. "resnet32x4-ShuffleV1,kd"
        arg, base = arg.split(",", 1)
    if method == "ce":
        teacher, student = "", arch_name(dataset, arg)
    else:
        t, s = parse_pair(dataset, arg)
        teacher, student = arch_name(dataset, t), arch_name(dataset, s)
    c.recipe = arg
    c.teacher.arch = teacher
    c.student.arch = student
    c.method = method_config(method, dataset, teacher, student, base)
    if dataset != "imagenet2012" and unprefixed(student) in LOW_LR_STUDENTS:
        c.optimizer.lr = 0.01
    return c
