"""KD (Hinton et al. 2015): ce_weight * CE + kd_weight * T^2 * KL(p^T || p^S).

Reference values: mdistiller `mdistiller/engine/cfg.py` (CFG.KD: T 4, CE 0.1, KD 0.9) with
`configs/cifar100/kd.yaml` for CIFAR-100 (SDD's CUB baseline is its SD-KD run with M=[1], the
same objective), and `configs/imagenet/r34_r18/kd.yaml` (T 1, CE 0.5, KD 0.5) for ImageNet.
"""

from __future__ import annotations

from kd_jax.data import catalog
from kd_jax.losses import objectives
from kd_jax.methods.base import MethodSpec, Recipe, check_keys, check_number
from kd_jax.methods.registry import register

KEYS = ("temperature", "ce_weight", "kd_weight")


def hparams(recipe: Recipe) -> dict:
    if recipe.dataset == catalog.IMAGENET:
        return dict(temperature=1.0, ce_weight=0.5, kd_weight=0.5)
    return dict(temperature=4.0, ce_weight=0.1, kd_weight=0.9)


def build(hp):
    check_keys("kd", hp, KEYS)
    check_number(hp, "temperature", strict=True)
    check_number(hp, "ce_weight")
    check_number(hp, "kd_weight")

    def compute_loss(student, teacher, labels, epoch, extra):
        return objectives.kd_objective(student.logits, teacher.logits, labels,
                                       temperature=hp["temperature"],
                                       ce_weight=hp["ce_weight"], kd_weight=hp["kd_weight"])

    return compute_loss


SPEC = register(MethodSpec(name="kd", needs_teacher=True, hparams=hparams, build=build))
