"""Training objectives: CE on the student's global logits plus a distillation term.

Each returns (loss, terms): `terms` holds the raw, unweighted scalar terms (and the
warmup factor where there is one) for logging. All are pure and jittable; `epoch` may be
a traced int32 scalar, counted from 1 (the reference's `kwargs["epoch"]`), and the warmup
factor changes per epoch, not per step.

Every hyperparameter is a required keyword argument: the reference values live in one
place, the recipes (`kd_jax.methods.<name>.hparams`, `kd_jax.reference.table`), and the
trainer passes them all (`MethodSpec.build`).
"""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp
import numpy as np

from kd_jax.losses.clkd import clkd_terms
from kd_jax.losses.common import Array, as_value_error, ce_loss, check_scalar
from kd_jax.losses.dkd import dkd_terms_per_example
from kd_jax.losses.kd import kd_loss
from kd_jax.losses.nkd import nkd_loss
from kd_jax.losses.sdd import scale_decoupled, sd_base_loss

Terms = dict[str, Array]


def warmup_factor(epoch: Any, warmup_epochs: Any, dtype: Any = jnp.float32) -> Array:
    """min(epoch / warmup_epochs, 1) as a `dtype` scalar; 1 when warmup_epochs == 0.

    epoch: int (possibly a traced int32 scalar), counted from 1. The objectives pass the
    loss's compute dtype, so float64 runs get the reference's double-precision factor.
    """
    with as_value_error(f"epoch must be an integer scalar, got shape {np.shape(epoch)}"):
        chex.assert_rank(epoch, 0)
    check_scalar("warmup_epochs", warmup_epochs)
    epoch = jnp.asarray(epoch, dtype)
    if isinstance(warmup_epochs, (int, float, np.number)):
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if warmup_epochs == 0:
            return jnp.ones((), dtype)
        return jnp.minimum(epoch / warmup_epochs, 1.0)
    warmup_epochs = jnp.asarray(warmup_epochs, dtype)  # traced: no static branch
    safe = jnp.where(warmup_epochs > 0, warmup_epochs, 1.0)
    return jnp.where(warmup_epochs > 0, jnp.minimum(epoch / safe, 1.0), 1.0)


def ce_plus_warmed_up(
    ce: Array,
    name: str,
    distill: Array,
    epoch: Any,
    *,
    ce_weight: float,
    kd_weight: float | None,
    warmup_epochs: int,
    parts: Terms | None = None,
) -> tuple[Array, Terms]:
    """ce_weight * ce + [kd_weight *] warmup_factor(epoch, warmup_epochs) * distill.

    The combine of every warmed-up objective (DKD, NKD, SD-<base>): ce and distill are
    scalars already computed; kd_weight=None for the objectives without a distillation
    weight (DKD's and NKD's warmup multiplies their term directly). The warmup is in
    distill's dtype. Terms: ce, *parts (the distillation term's components), <name>
    (= distill), warmup.
    """
    warm = warmup_factor(epoch, warmup_epochs, distill.dtype)
    weight = warm if kd_weight is None else kd_weight * warm
    terms = {"ce": ce, **(parts or {}), name: distill, "warmup": warm}
    return ce_weight * ce + weight * distill, terms


def kd_objective(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    *,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
) -> tuple[Array, Terms]:
    """ce_weight * CE + kd_weight * KD. Terms: ce, kd."""
    ce = ce_loss(student_logits, labels)
    kd = kd_loss(student_logits, teacher_logits, temperature)
    return ce_weight * ce + kd_weight * kd, {"ce": ce, "kd": kd}


def dkd_objective(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    epoch: Any,
    *,
    alpha: float,
    beta: float,
    temperature: float,
    ce_weight: float,
    warmup_epochs: int,
    stable: bool,
) -> tuple[Array, Terms]:
    """ce_weight * CE + warmup(epoch) * (alpha * TCKD + beta * NCKD).

    Terms: ce, tckd, nckd, dkd (= alpha*tckd + beta*nckd), warmup. `stable` selects the
    log-space DKD (see kd_jax.losses.dkd).
    """
    check_scalar("alpha", alpha)
    check_scalar("beta", beta)
    ce = ce_loss(student_logits, labels)
    tckd_b, nckd_b = dkd_terms_per_example(
        student_logits, teacher_logits, labels, temperature, stable=stable
    )
    dkd = jnp.mean(alpha * tckd_b + beta * nckd_b)
    return ce_plus_warmed_up(ce, "dkd", dkd, epoch, ce_weight=ce_weight, kd_weight=None,
                             warmup_epochs=warmup_epochs,
                             parts={"tckd": jnp.mean(tckd_b), "nckd": jnp.mean(nckd_b)})


def nkd_objective(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    epoch: Any,
    *,
    gamma: float,
    temperature: float,
    ce_weight: float,
    warmup_epochs: int,
) -> tuple[Array, Terms]:
    """ce_weight * CE + warmup(epoch) * NKD. Terms: ce, nkd, warmup."""
    ce = ce_loss(student_logits, labels)
    nkd = nkd_loss(student_logits, teacher_logits, labels, gamma, temperature)
    return ce_plus_warmed_up(ce, "nkd", nkd, epoch, ce_weight=ce_weight, kd_weight=None,
                             warmup_epochs=warmup_epochs)


def sd_objective(
    student_logits: Any,
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    epoch: Any,
    *,
    base: str,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
    warmup_epochs: int,
    complementary_weight: float,
    zero_nonfinite: bool,
    **base_hparams: Any,
) -> tuple[Array, Terms]:
    """SDD objective: ce_weight * CE(global student logits) + kd_weight * warmup * sd_<base>.

    student_logits (B, K); student_local, teacher_local (B, N, K) (no CE on them). base
    "kd" | "dkd" | "nkd" with its own hyperparameters in `base_hparams` (DKD: alpha, beta,
    stable; NKD: gamma; see `sd_base_loss`); zero_nonfinite: `scale_decoupled`.
    Terms: ce, sd_<base>, warmup.
    """
    base_loss = sd_base_loss(
        base, temperature=temperature, zero_nonfinite=zero_nonfinite, **base_hparams
    )
    ce = ce_loss(student_logits, labels)
    sd = scale_decoupled(base_loss, student_local, teacher_local, labels,
                         complementary_weight=complementary_weight, zero_nonfinite=zero_nonfinite)
    return ce_plus_warmed_up(ce, f"sd_{base}", sd, epoch, ce_weight=ce_weight,
                             kd_weight=kd_weight, warmup_epochs=warmup_epochs)


def clkd_objective(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    *,
    ce_weight: float,
    instance_weight: float,
    class_weight_beta: float,
    correlation_weight: float,
    correlation: str,
    reduction: str,
) -> tuple[Array, Terms]:
    """ce_weight*CE + instance_weight*(L_ins + beta*L_cla) + correlation_weight*L_cc.

    correlation, reduction: see `clkd_terms`. Terms: ce, instance, class, correlation.
    """
    ce = ce_loss(student_logits, labels)
    terms = clkd_terms(student_logits, teacher_logits, correlation, reduction=reduction)
    loss = (
        ce_weight * ce
        + instance_weight * (terms["instance"] + class_weight_beta * terms["class"])
        + correlation_weight * terms["correlation"]
    )
    return loss, {"ce": ce, **terms}
