"""The configs of the user's own data (docs/own_data.md): a teacher, then distilled students.

    custom_teacher.py:ARCH                            ARCH trained alone (CE)
    custom_distill.py:TEACHER-STUDENT,KEY             one student, method key KEY
    custom_distill.py:TEACHER-STUDENT,KEY,KEY,...     several students in lockstep

The dataset is ``image_folder`` (``--config.dataset.data_dir=DIR``; ``--config.dataset.name``
may say ``npz`` or ``tfds:<name>``); its classes and image size come from the data
(kd_jax.data.own). Models are kd_jax.models registry names, of any family whose downsampling
fits ``dataset.image_size`` (or a user's, registered by ``model_file``); method keys as
`python -m kd_jax.recipes` lists them (kd, dkd, nkd, clkd, sd_kd, sd_dkd, sd_nkd, msdcrd, ce).

Hyperparameters: own data has no published recipe, so the configs take CIFAR-100's
(`RECIPE_DATASET`): its solver (SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, 240
epochs, lr x 0.1 at 150 / 180 / 210), each method's reference values, and the gradient clip
of each method's reference trainer. Per-pair values (the student's lr, DKD's beta, SDD's
scales) come from the CIFAR-100 row of the pair (un-prefixed names, e.g. resnet32x4-resnet8x4)
where there is one, else from `STAND_IN`'s row with the student's own CIFAR-100 lr;
``recipe_from`` in the config says which. Every value is in the printed config and can be
overridden (``--config.num_epochs=30``, ``--config.method.beta=2``).
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from kd_jax import methods, models
from kd_jax.data import catalog
from kd_jax.recipes import builder
from kd_jax.reference import table

RECIPE_DATASET = catalog.CIFAR100
STAND_IN = ("resnet32x4", "resnet8x4")      # the recipe of a pair without a CIFAR-100 row
DEFAULT_TEACHER = "resnet32x4"
DEFAULT_DISTILL = "resnet32x4-resnet8x4,kd"


def _base(arg: str) -> ml_collections.ConfigDict:
    c = builder.base_config(catalog.IMAGE_FOLDER)
    c.recipe = arg
    return c


def teacher_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
    """ARCH (a registry name) trained alone with CE on own data."""
    arch = arg or DEFAULT_TEACHER
    c = _base(arch)
    c.student.arch = arch
    c.optimizer.lr = table.model_lr(RECIPE_DATASET, models.base_name(arch))
    c.optimizer.clip_grad_norm = table.clip_grad_norm(RECIPE_DATASET, "ce")
    c.method = builder.method_block("ce", builder.reference_hparams("ce", RECIPE_DATASET, "",
                                                                    arch))
    c.recipe_from = f"{RECIPE_DATASET} (model trained alone)"
    return c


def parse(arg: str) -> tuple[str, str, list[tuple[str, str, int]]]:
    """'TEACHER-STUDENT,KEY[,KEY...]' -> (teacher, student, students as
    builder.parse_students gives them)."""
    pair, _, keys = arg.partition(",")
    teacher, _, student = pair.partition("-")
    if not teacher or not student or "-" in student:
        raise ValueError(f"{arg!r}: expected TEACHER-STUDENT,METHOD[,METHOD...] with registry "
                         "model names (no '-' inside a name), e.g. resnet32x4-resnet8x4,dkd")
    if not keys.strip():
        raise ValueError(f"{arg!r}: name the method after the pair, e.g. {pair},kd (method "
                         f"keys: {', '.join(methods.method_keys())})")
    return teacher, student, builder.parse_students(keys)


def recipe_pair(teacher: str, student: str, method_key: str) -> tuple[str, str]:
    """The CIFAR-100 pair whose reference values `method_key` takes for (teacher, student):
    the pair itself where it has a row giving that method a recipe, else STAND_IN."""
    pair = (models.base_name(teacher), models.base_name(student))
    method, variant = methods.method_keys()[method_key]
    try:
        builder.reference_hparams(method, RECIPE_DATASET, *pair, variant)
        return pair
    except ValueError:
        return STAND_IN


def distill_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
    """TEACHER-STUDENT,KEY: one student; TEACHER-STUDENT,KEY,KEY,...: several in lockstep."""
    arg = arg or DEFAULT_DISTILL
    teacher, student, entries = parse(arg)
    c = _base(arg)
    c.teacher.arch, c.student.arch = teacher, student
    own_pair = (models.base_name(teacher), models.base_name(student))
    c.optimizer.lr = (table.pair(RECIPE_DATASET, *own_pair).lr
                      if own_pair in table.PAIRS[RECIPE_DATASET]
                      else table.model_lr(RECIPE_DATASET, own_pair[1]))
    sources = {}
    if len(entries) == 1 and entries[0][2] == 0:
        key = entries[0][1]
        method, variant = methods.method_keys()[key]
        pair = recipe_pair(teacher, student, key)
        sources[key] = pair
        hp = builder.reference_hparams(
            method, RECIPE_DATASET, pair[0] if methods.get(method).needs_teacher else "",
            pair[1], variant)
        c.method = builder.method_block(method, hp)
        c.optimizer.clip_grad_norm = table.clip_grad_norm(RECIPE_DATASET, method)
    else:
        c.students = ml_collections.ConfigDict()
        for name, key, offset in entries:
            pair = recipe_pair(teacher, student, key)
            sources[key] = pair
            c.students[name] = builder.student_entry(key, RECIPE_DATASET, *pair, offset)
    c.recipe_from = "; ".join(
        f"{key}: {RECIPE_DATASET} {'-'.join(pair)}" + (" (stand-in)" if pair != own_pair
                                                       else "")
        for key, pair in sources.items())
    return c
