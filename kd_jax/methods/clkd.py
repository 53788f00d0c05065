"""CLKD (class-aware logit KD, Zhang et al., arXiv 2211.14773), a reimplementation:
ce_weight * CE + instance_weight * (L_ins + class_weight_beta * L_cla) + correlation_weight * L_cc.

No official code exists; the values are the paper's as independent reimplementations read
it: 0.1 / 0.5 / beta 2 / 0.4, batch correlation, mean reduction (see kd_jax.losses.clkd).
"""

from __future__ import annotations

from kd_jax.losses import objectives
from kd_jax.methods.base import MethodSpec, Recipe, check_choice, check_keys, check_number
from kd_jax.methods.registry import register

KEYS = ("ce_weight", "instance_weight", "class_weight_beta", "correlation_weight",
        "correlation", "reduction")


def hparams(recipe: Recipe) -> dict:
    del recipe
    return dict(ce_weight=0.1, instance_weight=0.5, class_weight_beta=2.0,
                correlation_weight=0.4, correlation="batch", reduction="mean")


def check(hp):
    check_keys("clkd", hp, KEYS)
    for key in ("ce_weight", "instance_weight", "class_weight_beta", "correlation_weight"):
        check_number(hp, key)
    check_choice(hp, "correlation", ("batch", "class"))
    check_choice(hp, "reduction", ("mean", "sum_per_row"))


def build(hp):
    check(hp)

    def compute_loss(student, teacher, labels, epoch, extra):
        return objectives.clkd_objective(
            student.logits, teacher.logits, labels, ce_weight=hp["ce_weight"],
            instance_weight=hp["instance_weight"], class_weight_beta=hp["class_weight_beta"],
            correlation_weight=hp["correlation_weight"], correlation=hp["correlation"],
            reduction=hp["reduction"])

    return compute_loss


SPEC = register(MethodSpec(name="clkd", needs_teacher=True, hparams=hparams, check=check,
                           build=build))
