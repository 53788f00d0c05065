"""DKD: decoupled knowledge distillation (Zhao et al., CVPR 2022, arXiv 2203.08679).

KD is split per sample into a target-class term TCKD (a KL between the binary
[target, non-target] probabilities) and a non-target term NCKD (a KL between the
distributions over the non-target classes):  KD_b = TCKD_b + (1 - p^T_y) NCKD_b.

Two implementations, chosen by `stable`:
* `stable=False` (default) reproduces the reference code to the number, quirks included:
  the binary bins are SUMS of the full K-way softmax and their log is taken directly, so
  TCKD is +inf (and its gradient NaN) when a student bin underflows to 0 (e.g. T=1 and a
  logit gap above ~104 in float32); the non-target softmax pushes the target logit down
  by 1000 after dividing by T (not -inf, which would give NaN gradients through 0*inf).
* `stable=True` computes the log bins as logsumexp of the log-softmax over the target /
  non-target sets, and NCKD as an exactly masked log-softmax: finite wherever the inputs
  are, and equal to the reference up to rounding whenever the reference is finite.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from kd_jax.losses.common import (
    Array,
    check_labels,
    check_scalar,
    check_temperature,
    kl_rows,
    one_hot_mask,
    prepare_logit_pair,
)

# The reference subtracts this from the target logit (after /T) to drop it from NCKD.
NCKD_TARGET_OFFSET = 1000.0


def _tckd_reference(zs: Array, zt: Array, target: Array) -> Array:
    """TCKD as the reference computes it: sums of the softmax, plain log, torch's kl_div."""

    def bins(z):
        p = jax.nn.softmax(z, axis=-1)
        return jnp.stack([jnp.sum(p * target, axis=-1), jnp.sum(p * (~target), axis=-1)], -1)

    b_s, b_t = bins(zs), bins(zt)
    # torch kl_div(input=log b_s, target=b_t) = xlogy(b_t, b_t) - b_t * log b_s
    return jnp.sum(xlogy(b_t, b_t) - b_t * jnp.log(b_s), axis=-1)


def _nckd_reference(zs: Array, zt: Array, target: Array) -> Array:
    offset = NCKD_TARGET_OFFSET * target
    return kl_rows(
        jax.nn.log_softmax(zt - offset, axis=-1), jax.nn.log_softmax(zs - offset, axis=-1)
    )


def _log_bins_stable(z: Array, target: Array) -> Array:
    """log [p_y, sum_{k != y} p_k] computed in log space: (B, K) -> (B, 2)."""
    log_p = jax.nn.log_softmax(z, axis=-1)
    log_target = jnp.sum(jnp.where(target, log_p, 0.0), axis=-1)
    log_other = jax.nn.logsumexp(jnp.where(target, -jnp.inf, log_p), axis=-1)
    return jnp.stack([log_target, log_other], axis=-1)


def _tckd_stable(zs: Array, zt: Array, target: Array) -> Array:
    return kl_rows(_log_bins_stable(zt, target), _log_bins_stable(zs, target))


def _nckd_stable(zs: Array, zt: Array, target: Array) -> Array:
    # Exactly masked softmax over the non-target classes; the target entry is excluded
    # with a where so that 0 * (-inf) never appears (forward or backward).
    log_q_s = jax.nn.log_softmax(jnp.where(target, -jnp.inf, zs), axis=-1)
    log_q_t = jax.nn.log_softmax(jnp.where(target, -jnp.inf, zt), axis=-1)
    terms = jnp.exp(log_q_t) * (log_q_t - log_q_s)
    return jnp.sum(jnp.where(target, 0.0, terms), axis=-1)


def dkd_terms_per_example(
    student_logits: Any, teacher_logits: Any, labels: Any, temperature: Any, *, stable: bool = False
) -> tuple[Array, Array]:
    """(TCKD_b, NCKD_b), each (B,), both including the T^2 factor.

    Shapes: logits (B, K) with K >= 3, labels (B,) int. Means over B give the reference's
    batch TCKD / NCKD (which divide each sample by B and sum).
    """
    check_temperature(temperature)
    student, teacher = prepare_logit_pair(student_logits, teacher_logits)
    num_classes = student.shape[-1]
    if num_classes < 3:
        raise ValueError(
            f"DKD needs at least 3 classes, got K={num_classes}: with fewer than 2 non-target "
            "classes the non-target distribution of NCKD is undefined (a single class)"
        )
    labels = check_labels(labels, student.shape[0])
    target = one_hot_mask(labels, num_classes)
    zs, zt = student / temperature, teacher / temperature
    if stable:
        tckd, nckd = _tckd_stable(zs, zt, target), _nckd_stable(zs, zt, target)
    else:
        tckd, nckd = _tckd_reference(zs, zt, target), _nckd_reference(zs, zt, target)
    scale = temperature**2
    return tckd * scale, nckd * scale


def dkd_per_example(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    alpha: Any,
    beta: Any,
    temperature: Any,
    *,
    stable: bool = False,
) -> Array:
    """alpha * TCKD_b + beta * NCKD_b, shape (B,); its mean over B is `dkd_loss`."""
    check_scalar("alpha", alpha)
    check_scalar("beta", beta)
    tckd, nckd = dkd_terms_per_example(
        student_logits, teacher_logits, labels, temperature, stable=stable
    )
    return alpha * tckd + beta * nckd


def dkd_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    alpha: Any,
    beta: Any,
    temperature: Any,
    *,
    stable: bool = False,
) -> Array:
    """DKD loss alpha * TCKD + beta * NCKD (batch means), a scalar. See module doc for `stable`."""
    return jnp.mean(
        dkd_per_example(
            student_logits, teacher_logits, labels, alpha, beta, temperature, stable=stable
        )
    )
