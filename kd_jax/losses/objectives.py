"""Training objectives: CE on the student's global logits plus a distillation term.

Each returns (loss, terms): `terms` holds the raw, unweighted scalar terms (and the
warmup factor where there is one) for logging. All are pure and jittable; `epoch` may be
a traced int32 scalar, counted from 1 (the reference's `kwargs["epoch"]`), and the warmup
factor changes per epoch, not per step.

Defaults are the published CIFAR-100 recipes (mdistiller / SDD code):
KD T=4, CE 0.1, KD 0.9; DKD alpha 1, beta 8 (resnet32x4->resnet8x4; beta is per pair,
see kd_jax.recipes.table), T=4, CE 1, warmup 20; NKD gamma 8 (SDD reads gamma from DKD.BETA,
whose mdistiller default is 8), T=4, CE 1, warmup 20; SD-* as SDD's distillers; CLKD as the
paper's weights (arXiv 2211.14773). The trainer passes every value explicitly.
ImageNet recipes: KD T=1, CE 0.5, KD 0.5; DKD/NKD/SD-* T=1, warmup 1, beta/gamma 0.5
(R34->R18) or 2.0 (R50->MobileNetV1).
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
from kd_jax.losses.sdd import sd_dkd_loss, sd_kd_loss, sd_nkd_loss

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


def kd_objective(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    *,
    temperature: float = 4.0,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
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
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    ce_weight: float = 1.0,
    warmup_epochs: int = 20,
    stable: bool = False,
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
    tckd, nckd = jnp.mean(tckd_b), jnp.mean(nckd_b)
    dkd = jnp.mean(alpha * tckd_b + beta * nckd_b)
    warm = warmup_factor(epoch, warmup_epochs, dkd.dtype)
    terms = {"ce": ce, "tckd": tckd, "nckd": nckd, "dkd": dkd, "warmup": warm}
    return ce_weight * ce + warm * dkd, terms


def nkd_objective(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    epoch: Any,
    *,
    gamma: float = 8.0,
    temperature: float = 4.0,
    ce_weight: float = 1.0,
    warmup_epochs: int = 20,
) -> tuple[Array, Terms]:
    """ce_weight * CE + warmup(epoch) * NKD. Terms: ce, nkd, warmup."""
    ce = ce_loss(student_logits, labels)
    nkd = nkd_loss(student_logits, teacher_logits, labels, gamma, temperature)
    warm = warmup_factor(epoch, warmup_epochs, nkd.dtype)
    return ce_weight * ce + warm * nkd, {"ce": ce, "nkd": nkd, "warmup": warm}


# Per-base defaults of SDD step 7: (ce_weight, kd_weight, warmup_epochs).
SD_DEFAULTS = {"kd": (0.1, 0.9, 0), "dkd": (1.0, 1.0, 20), "nkd": (1.0, 1.0, 20)}


def sd_objective(
    student_logits: Any,
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    epoch: Any,
    *,
    base: str = "dkd",
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    gamma: float = 8.0,
    ce_weight: float | None = None,
    kd_weight: float | None = None,
    warmup_epochs: int | None = None,
    complementary_weight: float = 2.0,
    stable: bool = False,
    zero_nonfinite: bool = True,
) -> tuple[Array, Terms]:
    """SDD objective: ce_weight * CE(global student logits) + kd_weight * warmup * sd_<base>.

    base "kd": defaults CE 0.1, kd_weight 0.9, no warmup (SD-KD);
    base "dkd" / "nkd": CE 1.0, kd_weight 1.0, warmup 20 epochs (SD-DKD / SD-NKD; use 1 on
    ImageNet). None selects these defaults. Local logits (B, N, K) get no CE.
    `stable` (DKD only) and `zero_nonfinite` (the reference's inf/NaN -> 0 guard, default on)
    are passed to the SD loss. Terms: ce, sd_<base>, warmup.
    """
    if base not in SD_DEFAULTS:
        raise ValueError(f"unknown SDD base loss {base!r}; expected one of {tuple(SD_DEFAULTS)}")
    default_ce, default_kd, default_warmup = SD_DEFAULTS[base]
    ce_weight = default_ce if ce_weight is None else ce_weight
    kd_weight = default_kd if kd_weight is None else kd_weight
    warmup_epochs = default_warmup if warmup_epochs is None else warmup_epochs
    ce = ce_loss(student_logits, labels)
    if base == "kd":
        sd = sd_kd_loss(
            student_local,
            teacher_local,
            labels,
            temperature,
            complementary_weight,
            zero_nonfinite=zero_nonfinite,
        )
    elif base == "dkd":
        sd = sd_dkd_loss(
            student_local,
            teacher_local,
            labels,
            alpha,
            beta,
            temperature,
            complementary_weight,
            stable=stable,
            zero_nonfinite=zero_nonfinite,
        )
    else:
        sd = sd_nkd_loss(
            student_local,
            teacher_local,
            labels,
            gamma,
            temperature,
            complementary_weight,
            zero_nonfinite=zero_nonfinite,
        )
    warm = warmup_factor(epoch, warmup_epochs, sd.dtype)
    return ce_weight * ce + kd_weight * warm * sd, {"ce": ce, f"sd_{base}": sd, "warmup": warm}


def clkd_objective(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    *,
    ce_weight: float = 0.1,
    instance_weight: float = 0.5,
    class_weight_beta: float = 2.0,
    correlation_weight: float = 0.4,
    correlation: str = "batch",
    reduction: str = "mean",
) -> tuple[Array, Terms]:
    """ce_weight*CE + instance_weight*(L_ins + beta*L_cla) + correlation_weight*L_cc.

    Defaults 0.1 / 0.5 / beta=2 / 0.4 (the paper's weights). Terms: ce, instance, class,
    correlation.
    """
    ce = ce_loss(student_logits, labels)
    terms = clkd_terms(student_logits, teacher_logits, correlation, reduction=reduction)
    loss = (
        ce_weight * ce
        + instance_weight * (terms["instance"] + class_weight_beta * terms["class"])
        + correlation_weight * terms["correlation"]
    )
    return loss, {"ce": ce, **terms}
