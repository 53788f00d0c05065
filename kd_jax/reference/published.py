"""Published top-1 (%) that kd_jax runs are compared with.

Sources: the DKD paper (Zhao et al., CVPR 2022, Tables 1-3; mdistiller's 5-run averages,
best epoch), the SDD paper (Wei et al., CVPR 2024, Tables 1-4), and the teachers' and
students' vanilla accuracies of the same tables. Columns are method keys of
kd_jax.methods ("kd", "dkd", "nkd", "sd_kd", "sd_dkd", "sd_nkd"; "ce" = trained alone).

`TABLES` names the published tables that `python -m kd_jax.reproduce` reproduces, each over
the numbers below (`Table`); `register_table` adds one (kd_jax.testing's tiny table).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from kd_jax.data import catalog

# CIFAR-100 models trained alone (CE only): teachers and students from scratch.
CIFAR_VANILLA = {
    "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "wrn_40_2": 75.61,
    "vgg13": 74.64, "ResNet50": 79.34,
    "resnet20": 69.06, "resnet32": 71.14, "resnet8x4": 72.50, "wrn_16_2": 73.26,
    "wrn_40_1": 71.98, "vgg8": 70.36, "MobileNetV2": 64.60, "ShuffleV1": 70.50,
    "ShuffleV2": 71.82,
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

# CUB-200-2011, SDD table (cub20.png in SDD's README): KD / SD-KD / DKD / SD-DKD / NKD / SD-NKD.
CUB_SDD = {
    ("resnet32x4", "MobileNetV2"): (56.09, 60.51, 59.94, 62.97, 59.81, 62.69),
    ("resnet32x4", "ShuffleV1"): (61.68, 65.46, 64.51, 65.58, 64.0, 65.50),
    ("vgg13", "MobileNetV2"): (53.98, 59.80, 58.45, 64.86, 58.40, 64.63),
    ("vgg13", "vgg8"): (64.18, 67.32, 67.20, 68.67, 67.16, 68.37),
    ("ResNet50", "ShuffleV1"): (57.21, 60.56, 59.21, 60.66, 59.11, 60.42),
}

SDD_COLUMNS = ("kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd")
_TABLES = {
    catalog.CIFAR100: (CIFAR_SDD, SDD_COLUMNS),
    catalog.IMAGENET: (IMAGENET_SDD, SDD_COLUMNS),
    catalog.CUB: (CUB_SDD, SDD_COLUMNS),
}


def top1(dataset: str, column: str, teacher: Optional[str], student: str) -> Optional[float]:
    """The published top-1 of `student` (from `teacher`) under method key `column`, or None.

    Names are un-prefixed ('ResNet18', not 'imagenet_ResNet18'); column 'ce' looks up the
    model trained alone.
    """
    if column == "ce":
        vanilla = {catalog.CIFAR100: CIFAR_VANILLA, catalog.IMAGENET: IMAGENET_TEACHERS}
        return vanilla.get(dataset, {}).get(student)
    pair = (teacher, student)
    table, columns = _TABLES.get(dataset, ({}, ()))
    if pair in table and column in columns:
        return table[pair][columns.index(column)]
    if dataset == catalog.CIFAR100 and pair in CIFAR_KD_DKD and column in ("kd", "dkd"):
        return CIFAR_KD_DKD[pair][("kd", "dkd").index(column)]
    return None


# --- the published tables, as `python -m kd_jax.reproduce` plans them ------------------------

@dataclasses.dataclass(frozen=True)
class Table:
    """One published table: rows are (teacher, student) pairs, columns method keys.

    `alone`: the published top-1 of the students trained alone (the table's vanilla row; the
    'ce' column), where kd_jax.reference holds it. `overrides`: config values (dotted keys)
    every run of the table takes on top of its reference recipe: none for a paper's table;
    a test table swaps in tiny models and synthetic data.
    """

    name: str
    source: str                                        # the paper and its table
    dataset: str                                       # kd_jax.data name; the recipes' too
    columns: tuple[str, ...]                           # method keys, in the paper's order
    values: Mapping[tuple[str, str], tuple[float, ...]]   # pair -> top-1 (%) per column
    alone: Mapping[str, float] = dataclasses.field(default_factory=dict)
    note: str = ""                                     # how the numbers were obtained
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.values)

    def top1(self, column: str, pair: tuple[str, str]) -> Optional[float]:
        """The published top-1 of `pair` under method key `column` ('ce': its student alone)."""
        if column == "ce":
            return self.alone.get(pair[1])
        return self.values[pair][self.columns.index(column)]


_CIFAR_NOTE = ("best epoch; the DKD paper's numbers are mdistiller's 5-run averages")
TABLES: dict[str, Table] = {t.name: t for t in (
    Table("sdd_cifar100", "SDD (Wei et al., CVPR 2024), its CIFAR-100 table",
          catalog.CIFAR100, SDD_COLUMNS, CIFAR_SDD, CIFAR_VANILLA, _CIFAR_NOTE),
    Table("sdd_cub", "SDD (Wei et al., CVPR 2024), its CUB-200-2011 table (cub20.png in "
          "SDD's README)", catalog.CUB, SDD_COLUMNS, CUB_SDD, {},
          "read from the image; no top-1 of the students alone is published there"),
    Table("sdd_imagenet", "SDD (Wei et al., CVPR 2024), its ImageNet table",
          catalog.IMAGENET, SDD_COLUMNS, IMAGENET_SDD, {},
          "DKD's own ImageNet numbers are identical; kd_jax.reference holds no top-1 of the "
          "students alone"),
    Table("dkd_cifar100", "DKD (Zhao et al., CVPR 2022), its CIFAR-100 tables (teacher and "
          "student of the same and of different architectures)", catalog.CIFAR100,
          ("kd", "dkd"), CIFAR_KD_DKD, CIFAR_VANILLA, _CIFAR_NOTE),
)}


def register_table(table: Table) -> None:
    """Adds `table` to TABLES (again: the same table only)."""
    if TABLES.get(table.name, table) != table:
        raise ValueError(f"a different table {table.name!r} is registered already")
    TABLES[table.name] = table


def get_table(name: str) -> Table:
    """The published table `name`; ValueError listing the known ones."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
    return TABLES[name]
