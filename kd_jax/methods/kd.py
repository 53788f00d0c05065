"""KD (Hinton et al. 2015): ce_weight * CE + kd_weight * T^2 * KL(p^T || p^S).

Reference values: mdistiller `mdistiller/engine/cfg.py` (CFG.KD: T 4, CE 0.1, KD 0.9) with
`configs/cifar100/kd.yaml` for CIFAR-100, and `configs/imagenet/r34_r18/kd.yaml` (T 1, CE 0.5,
KD 0.5) for ImageNet. SDD's CUB baseline is its SD-KD launch line with `--M [1]`, and SDD's
`SDD_KD.forward_train` then branches (`if self.M == '[1]'`) to this plain KD on the models'
own global logits: NOT the SD loss on SPP's region 0, which on a 7x7 map (cub MobileNetV2) is
a weighted mean of the map through the 4x4 adaptive grid, not the global average.
tests/test_recipes.py::test_cub_baselines_are_global_logit_losses pins this. The optimizer
differs by dataset: CUB runs clip the gradient at 40 (SDD's trainer), CIFAR-100 and ImageNet
KD runs do not (mdistiller's; kd_jax.reference.table.clip_grad_norm).
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


def check(hp):
    check_keys("kd", hp, KEYS)
    check_number(hp, "temperature", strict=True)
    check_number(hp, "ce_weight")
    check_number(hp, "kd_weight")


def build(hp):
    check(hp)

    def compute_loss(student, teacher, labels, epoch, extra):
        return objectives.kd_objective(student.logits, teacher.logits, labels,
                                       temperature=hp["temperature"],
                                       ce_weight=hp["ce_weight"], kd_weight=hp["kd_weight"])

    return compute_loss


SPEC = register(MethodSpec(name="kd", needs_teacher=True, hparams=hparams, check=check,
                           build=build))
