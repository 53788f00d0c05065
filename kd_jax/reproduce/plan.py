"""The plan of a published table: every (pair, seed) group, its runs, configs, steps and disk.

    p = make_plan(published.get_table("sdd_cifar100"), seeds=[0, 1, 2])
    p.groups[0].runs(lockstep=True)   # one Run: the pair's students in one trainer run

A group is the students of one pair and seed: the table's methods plus the student trained
alone ('ce', the vanilla column). In lockstep they are one run (one teacher forward per
step, identical batches: `recipes.build_lockstep_config`); separately, one run each
(`recipes.build_config`). Both write each student's outputs to the same directory,

    DIR/<teacher>-<student>/seed_<s>/<method key>/      (summary.json, metrics.jsonl, ...)

so results are gathered the same way whichever way a group trained. A group trains in
lockstep only where its lockstep config gives every student exactly its separate run's
values (`Group.incompatible` names the first difference otherwise); whether it also fits in
memory is kd_jax.reproduce.runner's rule.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from typing import Callable, Mapping, Optional, Sequence

import jax
import ml_collections
from flax import nnx

from kd_jax import methods, models, recipes, teachers
from kd_jax.data import catalog
from kd_jax.reference import published
from kd_jax.train import config_validation
from kd_jax.train.seeds import SEED_DIR

ALONE = "ce"   # the column of the students trained alone (the tables' vanilla rows)
Pair = tuple[str, str]
Customize = Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]


def pair_name(pair: Pair) -> str:
    return f"{pair[0]}-{pair[1]}"


@dataclasses.dataclass(frozen=True)
class Run:
    """One trainer run: a lockstep group (several students) or one student alone."""

    label: str                         # "resnet32x4-ShuffleV1 seed 0" (+ " kd" when alone)
    workdir: str                       # relative to the plan's directory
    config: ml_collections.ConfigDict
    keys: tuple[str, ...]              # the method keys it trains


@dataclasses.dataclass(frozen=True)
class Group:
    """The students of one pair and seed."""

    pair: Pair
    seed: int
    keys: tuple[str, ...]                                 # method keys, ALONE first
    lockstep_config: ml_collections.ConfigDict            # every key in one run
    solo_configs: Mapping[str, ml_collections.ConfigDict]  # key -> its own run's config
    steps: int                                            # train steps of each run
    incompatible: str = ""   # why lockstep would not equal separate runs ("": it would)

    @property
    def label(self) -> str:
        return f"{pair_name(self.pair)} seed {self.seed}"

    @property
    def directory(self) -> str:
        """DIR-relative directory of the group (the lockstep run's workdir)."""
        return os.path.join(pair_name(self.pair), SEED_DIR.format(self.seed))

    def student_dir(self, key: str) -> str:
        """DIR-relative directory of one student's outputs (both ways of training)."""
        return os.path.join(self.directory, key)

    def runs(self, lockstep: bool) -> list[Run]:
        if lockstep:
            return [Run(self.label, self.directory, self.lockstep_config, self.keys)]
        return [Run(f"{self.label} {k}", self.student_dir(k), self.solo_configs[k], (k,))
                for k in self.keys]


@dataclasses.dataclass(frozen=True)
class Plan:
    table: published.Table
    seeds: tuple[int, ...]
    pairs: tuple[Pair, ...]
    keys: tuple[str, ...]            # ALONE (if chosen) then the table's columns, in order
    groups: tuple[Group, ...]        # pair by pair, seed by seed
    overrides: tuple[str, ...] = ()  # the command's --config.KEY=VALUE arguments

    @property
    def num_runs(self) -> int:
        """Student runs: cells (pairs x columns) x seeds."""
        return len(self.groups) * len(self.keys)


# --- choosing the cells ----------------------------------------------------------------------

def table_keys(table: published.Table) -> tuple[str, ...]:
    """Every column of `table`'s plan: the students alone, then the paper's methods."""
    return (ALONE, *table.columns)


def select_keys(table: published.Table, arg: Optional[str]) -> tuple[str, ...]:
    """--methods 'kd,ce' -> the table's order ('ce', 'kd'); None: every column."""
    known = table_keys(table)
    if not arg:
        return known
    asked = [a.strip() for a in arg.split(",") if a.strip()]
    unknown = [a for a in asked if a not in known]
    if unknown or not asked:
        raise ValueError(f"--methods {arg}: {table.name} has the columns {', '.join(known)} "
                         f"({ALONE}: the students trained alone)")
    return tuple(k for k in known if k in asked)


def select_pairs(table: published.Table, arg: Optional[str]) -> tuple[Pair, ...]:
    """--pairs 'resnet32x4-ShuffleV1,...' (case-insensitive) -> the table's order."""
    if not arg:
        return table.pairs
    known = {pair_name(p).lower(): p for p in table.pairs}
    asked = [a.strip().lower() for a in arg.split(",") if a.strip()]
    unknown = [a for a in asked if a not in known]
    if unknown or not asked:
        raise ValueError(f"--pairs {arg}: {table.name}'s pairs are "
                         + ", ".join(pair_name(p) for p in table.pairs))
    return tuple(p for p in table.pairs if pair_name(p).lower() in asked)


# --- configs ---------------------------------------------------------------------------------

def _with_table_values(c: ml_collections.ConfigDict, table: published.Table,
                       teacher_paths: Mapping[str, str]) -> ml_collections.ConfigDict:
    """The table's overrides (teacher keys only where the run has a teacher) and a given
    teacher checkpoint."""
    has_teacher = bool(c.teacher.arch)
    for key, value in table.overrides.items():
        if key.startswith("teacher.") and not has_teacher:
            continue   # a student alone has no teacher to set
        node, *path, leaf = [c, *key.split(".")]
        for part in path:
            node = node[part]
        node[leaf] = value
    teacher = models.base_name(c.teacher.arch) if has_teacher else ""
    if teacher in teacher_paths:
        c.teacher.checkpoint = teacher_paths[teacher]
    return c


def _solo_config(dataset: str, pair: Pair, key: str) -> ml_collections.ConfigDict:
    if key == ALONE:
        return recipes.build_config(ALONE, dataset, pair[1], default_pair=pair[1])
    method, variant = methods.method_keys()[key]
    arg = pair_name(pair) + (f",{variant}" if variant else "")
    return recipes.build_config(method, dataset, arg, default_pair=arg)


def differences(lockstep: ml_collections.ConfigDict, solo: ml_collections.ConfigDict,
                key: str) -> list[str]:
    """The config values in which student `key` of a lockstep config differs from its own
    run's config (none: the two train the same student on the same batches)."""
    a, b = lockstep.to_dict(), solo.to_dict()
    entry, method = a.pop("students")[key], b.pop("method")
    found = []
    if entry["method"] != method:
        found.append("method")
    if entry["clip_grad_norm"] != b["optimizer"]["clip_grad_norm"]:
        found.append("optimizer.clip_grad_norm")
    if entry["init_seed_offset"]:
        found.append("init_seed_offset")
    for d in (a, b):
        d["optimizer"].pop("clip_grad_norm")
        d.pop("recipe")   # the argument each was built from
    if not methods.get(method["name"]).needs_teacher:
        a.pop("teacher"), b.pop("teacher")   # the lockstep run's teacher goes unused
    found += [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return found


def steps_per_run(c: ml_collections.ConfigDict) -> int:
    """Train steps of a run of `c`, as the trainer counts them (the remainder batch dropped),
    from the dataset's split size (kd_jax.data.catalog) without reading it."""
    name = c.dataset.name
    n = int(c.dataset.num_train) if name == catalog.SYNTHETIC else catalog.facts(name).num_train
    if c.dataset.limit_train:
        n = min(n, int(c.dataset.limit_train))
    total = c.num_epochs * (n // c.batch_size)
    return min(total, c.total_steps) if c.total_steps else total


def make_plan(table: published.Table, seeds: Sequence[int], *,
              pairs: Optional[Sequence[Pair]] = None, keys: Optional[Sequence[str]] = None,
              teacher_paths: Optional[Mapping[str, str]] = None,
              customize: Customize = lambda c: c, overrides: Sequence[str] = ()) -> Plan:
    """Every group of `table` (its `pairs` x `seeds`; every column unless `keys`), each
    config built from the reference recipes, then the table's overrides, a teacher of
    `teacher_paths` ({teacher name: checkpoint}), `customize` (the command's
    --config.KEY=VALUE `overrides`) and the seed. Each config is validated (files aside:
    ConfigError)."""
    pairs = tuple(pairs or table.pairs)
    keys = tuple(keys or table_keys(table))
    teacher_paths = teacher_paths or {}

    def for_seed(c: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
        c = copy.deepcopy(c)
        c.seed, c.seeds = seed, ""
        checked = c
        if c.teacher.arch and not c.teacher.checkpoint:   # none published (CUB), none given:
            checked = copy.deepcopy(c)                    # missing_teachers says what to do
            checked.teacher.checkpoint = config_validation.RANDOM_TEACHER
        config_validation.validate(checked, check_files=False)
        return c

    groups = []
    for pair in pairs:
        name = pair_name(pair)
        built = {None: recipes.build_lockstep_config(table.dataset, ",".join([name, *keys]),
                                                     default="")}
        built.update({k: _solo_config(table.dataset, pair, k) for k in keys})
        built = {k: customize(_with_table_values(c, table, teacher_paths))
                 for k, c in built.items()}
        for seed in seeds:
            group_config = for_seed(built[None], seed)
            solo = {k: for_seed(built[k], seed) for k in keys}
            why = "; ".join(f"{k}: {', '.join(d)}" for k in keys
                            for d in [differences(group_config, solo[k], k)] if d)
            groups.append(Group(pair, seed, keys, group_config, solo,
                                steps_per_run(group_config), why))
    return Plan(table, tuple(seeds), pairs, keys, tuple(groups), tuple(overrides))


# --- teachers --------------------------------------------------------------------------------

def teacher_status(c: ml_collections.ConfigDict) -> tuple[str, str]:
    """(teacher name, '' if usable else what to do) of a group's config."""
    name, ckpt = models.base_name(c.teacher.arch), c.teacher.checkpoint
    if ckpt == config_validation.RANDOM_TEACHER:
        return name, ""
    if ckpt == teachers.PUBLISHED:
        try:
            teachers.published_path(c.teacher.arch)
            return name, ""
        except FileNotFoundError:
            return name, f"fetch it: {teachers.fetch_command(c.teacher.arch)}"
    if not ckpt:
        return name, (f"kd_jax fetches no {c.dataset.name} teacher {name}: give one with "
                      f"--teacher {name}=PATH (a converted directory or a .pth)")
    if not os.path.exists(ckpt):
        return name, f"--teacher {name}={ckpt}: no such file or directory"
    return name, ""


def missing_teachers(plan: Plan) -> dict[str, str]:
    """{teacher name: what to do} for every teacher the plan needs and cannot load."""
    needed = {}
    for g in plan.groups:
        if any(methods.get(g.lockstep_config.students[k].method.name).needs_teacher
               for k in g.keys):
            name, todo = teacher_status(g.lockstep_config)
            if todo:
                needed[name] = todo
    return needed


# --- disk ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _model_bytes(arch: str, num_classes: int) -> tuple[int, int]:
    """(parameter bytes, other variables' bytes: BatchNorm statistics) of a model, from
    its shapes only (nothing computed)."""
    model = nnx.eval_shape(lambda: models.create(arch, num_classes, rngs=nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    count = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa
    return count(params), count(rest)


def disk_bytes(c: ml_collections.ConfigDict, students: int) -> int:
    """Bytes one run of `students` students of config `c` leaves on disk: keep_checkpoints
    checkpoints of each student's parameters, SGD momentum (as large) and BatchNorm
    statistics, plus its final_model and best_model exports (parameters and statistics).
    Logs and the orbax metadata are not counted; a method's own trainable heads neither."""
    params, rest = _model_bytes(c.student.arch, c.dataset.num_classes)
    checkpoints = c.keep_checkpoints * (2 * params + rest)
    exports = 2 * (params + rest) if c.export_model else 0
    return students * (checkpoints + exports)
