"""A model trained alone: cross-entropy on its logits (teachers, and students from scratch)."""

from __future__ import annotations

from kd_jax.losses import ce_loss
from kd_jax.methods.base import MethodSpec, Recipe, check_keys
from kd_jax.methods.registry import register


def hparams(recipe: Recipe) -> dict:
    del recipe
    return {}


def check(hp):
    check_keys("ce", hp, ())


def build(hp):
    check(hp)

    def compute_loss(student, teacher, labels, epoch, extra):
        loss = ce_loss(student.logits, labels)
        return loss, {"ce": loss}

    return compute_loss


SPEC = register(MethodSpec(name="ce", needs_teacher=False, hparams=hparams, check=check,
                           build=build))
