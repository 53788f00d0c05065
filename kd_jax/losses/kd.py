"""KD (Hinton et al. 2015): temperature-scaled KL divergence between teacher and student."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kd_jax.losses.common import Array, check_temperature, kl_rows, prepare_logit_pair


def kd_per_example(student_logits: Any, teacher_logits: Any, temperature: Any) -> Array:
    """Per-example KD term, (B, K) x2 -> (B,).

    l_b = T^2 * sum_k p^T_bk (log p^T_bk - log p^S_bk),  p = softmax(z / T).
    Its mean over B is `kd_loss` (the reference's kl_div(...).sum(1).mean() * T^2).
    The teacher is a constant (stop_gradient).
    """
    check_temperature(temperature)
    student, teacher = prepare_logit_pair(student_logits, teacher_logits)
    log_p_student = jax.nn.log_softmax(student / temperature, axis=-1)
    log_p_teacher = jax.nn.log_softmax(teacher / temperature, axis=-1)
    return kl_rows(log_p_teacher, log_p_student) * temperature**2


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: Any) -> Array:
    """KD loss: mean over the batch of `kd_per_example` (a scalar)."""
    return jnp.mean(kd_per_example(student_logits, teacher_logits, temperature))
