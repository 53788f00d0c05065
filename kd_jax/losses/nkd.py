"""NKD: normalized KD, in the form the SDD reference code uses as its third base loss.

Per sample:  -p^T_y * log p^S_y  -  gamma * T^2 * sum_k p^T_k(T) log p^S_k(T)
where the first term uses T = 1 and the second softened probabilities over ALL K classes
(the reference builds a "non-target" mask with ones everywhere, so the target class stays
in; we match that). The teacher probabilities are constants.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kd_jax.losses.common import (
    Array,
    check_labels,
    check_scalar,
    check_temperature,
    prepare_logit_pair,
)


def nkd_per_example(
    student_logits: Any, teacher_logits: Any, labels: Any, gamma: Any, temperature: Any
) -> Array:
    """Per-example NKD term, (B, K) x2, (B,) -> (B,); its mean over B is `nkd_loss`."""
    check_temperature(temperature)
    check_scalar("gamma", gamma)
    student, teacher = prepare_logit_pair(student_logits, teacher_logits)
    labels = check_labels(labels, student.shape[0])
    idx = labels[:, None]
    log_p_s = jax.nn.log_softmax(student, axis=-1)
    p_t = jax.nn.softmax(teacher, axis=-1)
    target_term = -(
        jnp.take_along_axis(p_t, idx, axis=-1) * jnp.take_along_axis(log_p_s, idx, axis=-1)
    )[:, 0]
    soft_p_t = jax.nn.softmax(teacher / temperature, axis=-1)
    soft_log_p_s = jax.nn.log_softmax(student / temperature, axis=-1)
    soft_term = -gamma * temperature**2 * jnp.sum(soft_p_t * soft_log_p_s, axis=-1)
    return target_term + soft_term


def nkd_loss(
    student_logits: Any, teacher_logits: Any, labels: Any, gamma: Any, temperature: Any
) -> Array:
    """NKD loss: mean over the batch of `nkd_per_example` (a scalar)."""
    return jnp.mean(nkd_per_example(student_logits, teacher_logits, labels, gamma, temperature))
