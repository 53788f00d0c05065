"""DKD (Zhao et al., CVPR 2022):
ce_weight * CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD).

Reference values: mdistiller `mdistiller/engine/cfg.py` (CFG.DKD: CE 1, alpha 1, T 4,
warmup 20) with beta per pair from `configs/cifar100/dkd/*.yaml` (CIFAR-100) and SDD's
`configs/cub200/*/*.yaml` (CUB, whose DKD baseline is SDD's SDD_DKD launched with --M [1],
which branches to `dkd_loss_origin` on the global logits with warmup = train_origin.py's
--warmup 20 and SDD's gradient clip 40); ImageNet
`configs/imagenet/{r34_r18,r50_mv1}/dkd.yaml`: T 1, warmup 1, beta 0.5 / 2.0.
`stable` selects kd_jax's log-space TCKD (off: the reference's, inf when a bin underflows).
"""

from __future__ import annotations

from kd_jax.data import catalog
from kd_jax.losses import objectives
from kd_jax.methods.base import (MethodSpec, Recipe, check_choice, check_int, check_keys,
                                 check_number)
from kd_jax.methods.registry import register
from kd_jax.reference import table

KEYS = ("alpha", "beta", "temperature", "ce_weight", "warmup_epochs", "stable")


def hparams(recipe: Recipe) -> dict:
    imagenet = recipe.dataset == catalog.IMAGENET
    beta = table.pair(recipe.dataset, recipe.teacher, recipe.student).dkd_beta
    return dict(alpha=1.0, beta=beta, temperature=1.0 if imagenet else 4.0, ce_weight=1.0,
                warmup_epochs=1 if imagenet else 20, stable=False)


def check(hp):
    check_keys("dkd", hp, KEYS)
    for key in ("alpha", "beta", "ce_weight"):
        check_number(hp, key)
    check_number(hp, "temperature", strict=True)
    check_int(hp, "warmup_epochs")
    check_choice(hp, "stable", (False, True))


def build(hp):
    check(hp)

    def compute_loss(student, teacher, labels, epoch, extra):
        return objectives.dkd_objective(
            student.logits, teacher.logits, labels, epoch, alpha=hp["alpha"], beta=hp["beta"],
            temperature=hp["temperature"], ce_weight=hp["ce_weight"],
            warmup_epochs=hp["warmup_epochs"], stable=hp["stable"])

    return compute_loss


SPEC = register(MethodSpec(name="dkd", needs_teacher=True, hparams=hparams, check=check,
                           build=build))
