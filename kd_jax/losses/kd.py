"""KD (Hinton et al. 2015): temperature-scaled KL divergence between teacher and student."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kd_jax.losses.common import Array, check_temperature, kl_rows, prepare_logit_pair


def _log_probs(student_logits: Any, teacher_logits: Any, temperature: Any) -> tuple[Array, Array]:
    """(log p^T, log p^S) = log softmax(z / T) of the validated teacher (constant) and student."""
    check_temperature(temperature)
    student, teacher = prepare_logit_pair(student_logits, teacher_logits)
    log_p_student = jax.nn.log_softmax(student / temperature, axis=-1)
    log_p_teacher = jax.nn.log_softmax(teacher / temperature, axis=-1)
    return log_p_teacher, log_p_student


def kd_per_example(student_logits: Any, teacher_logits: Any, temperature: Any) -> Array:
    """Per-example KD term, (B, K) x2 -> (B,).

    l_b = T^2 * sum_k p^T_bk (log p^T_bk - log p^S_bk),  p = softmax(z / T).
    Its mean over B is `kd_loss` (the reference's kl_div(...).sum(1).mean() * T^2).
    The teacher is a constant (stop_gradient).
    """
    return kl_rows(*_log_probs(student_logits, teacher_logits, temperature)) * temperature**2


def kd_per_example_nan_zeroed(student_logits: Any, teacher_logits: Any, temperature: Any) -> Array:
    """`kd_per_example` with NaN elements of the per-class KL set to 0 before the class sum.

    SDD's SD-KD (`mdistiller/distillers/KD.py` sdd_kd_loss) does `loss_kd[isnan(loss_kd)] = 0`
    on the (B*N, K) KL elements before summing: one NaN element (e.g. 0 * log 0 where the
    teacher's and the student's probability both vanish, -inf - -inf) drops that element
    only, not the whole row or the whole loss. Its gradient through a zeroed element is 0.
    """
    log_p_teacher, log_p_student = _log_probs(student_logits, teacher_logits, temperature)
    elements = jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student)   # kl_rows' terms
    return jnp.sum(jnp.where(jnp.isnan(elements), 0.0, elements), axis=-1) * temperature**2


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: Any) -> Array:
    """KD loss: mean over the batch of `kd_per_example` (a scalar)."""
    return jnp.mean(kd_per_example(student_logits, teacher_logits, temperature))
