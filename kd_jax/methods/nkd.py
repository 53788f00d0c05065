"""NKD (normalized KD, SDD's third base loss): ce_weight * CE + min(epoch / warmup, 1) * NKD.

Reference values: on CIFAR-100 and CUB the NKD baseline is SDD's `SDD_NKD` distiller
(`mdistiller/distillers/SDD_nkd.py`) with M=[1] (its `if self.M=='[1]'` branch: nkd_loss_origin
on the models' global logits; run by SDD's trainer, so with its gradient clip 40), which reads gamma = DKD.BETA (the pair's DKD
beta), T = DKD.T (4), CE = DKD.CE_WEIGHT (1) and warmup = DKD.WARMUP (20). On ImageNet it is
SDD's separate `NKDLoss` (`mdistiller/distillers/nkd.py`), which hard-codes T=1 and gamma=1.5
and reads CE 1 and warmup 1 from the config's DKD section.
"""

from __future__ import annotations

from kd_jax.data import catalog
from kd_jax.losses import objectives
from kd_jax.methods.base import MethodSpec, Recipe, check_int, check_keys, check_number
from kd_jax.methods.registry import register
from kd_jax.reference import table

KEYS = ("gamma", "temperature", "ce_weight", "warmup_epochs")


def hparams(recipe: Recipe) -> dict:
    if recipe.dataset == catalog.IMAGENET:
        table.pair(recipe.dataset, recipe.teacher, recipe.student)   # a known pair
        return dict(gamma=1.5, temperature=1.0, ce_weight=1.0, warmup_epochs=1)
    beta = table.pair(recipe.dataset, recipe.teacher, recipe.student).dkd_beta
    return dict(gamma=beta, temperature=4.0, ce_weight=1.0, warmup_epochs=20)


def check(hp):
    check_keys("nkd", hp, KEYS)
    check_number(hp, "gamma")
    check_number(hp, "ce_weight")
    check_number(hp, "temperature", strict=True)
    check_int(hp, "warmup_epochs")


def build(hp):
    check(hp)

    def compute_loss(student, teacher, labels, epoch, extra):
        return objectives.nkd_objective(
            student.logits, teacher.logits, labels, epoch, gamma=hp["gamma"],
            temperature=hp["temperature"], ce_weight=hp["ce_weight"],
            warmup_epochs=hp["warmup_epochs"])

    return compute_loss


SPEC = register(MethodSpec(name="nkd", needs_teacher=True, hparams=hparams, check=check,
                           build=build))
