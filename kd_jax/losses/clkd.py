"""CLKD: class-aware logit KD (Zhang et al., arXiv 2211.14773), a reimplementation.

No official code exists; the recipe (kd_jax.methods.clkd) takes what independent
reimplementations agree on (the values marked "recipe" below), and every open choice is an
option:
* instance term: rows of the (B, K) logit matrix L2-normalised, mean squared difference.
* class term: the same on the columns (each class over the batch).
* class correlation: correlation="batch" (recipe) compares the (B, B) matrices
  D D^T / (K-1), D = logits centred over classes; correlation="class" compares the (K, K)
  class covariance over the batch, D^T D / (B-1), D centred over the batch. Both use
  1/K^2 * ||.||_F^2.
* reduction="mean" (recipe) averages the instance/class squared errors over all B*K
  entries; "sum_per_row" sums over each normalised row (instance: K times larger; class:
  B times larger), an ablation option.
No softmax and no temperature anywhere.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kd_jax.losses.common import Array, prepare_logit_pair

NORM_EPS = 1e-12  # torch F.normalize's eps: x / max(||x||, eps)
CORRELATIONS = ("batch", "class")
REDUCTIONS = ("mean", "sum_per_row")
# Full float32 matmuls on accelerators too (their default may be TF32/bf16 passes).
_HIGHEST = jax.lax.Precision.HIGHEST


def _l2_normalize(x: Array, axis: int) -> Array:
    # sqrt(max(s, eps^2)) == max(sqrt(s), eps) but has a finite gradient at x = 0.
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(sq, NORM_EPS**2))


def _normalized_mse(student: Array, teacher: Array, axis: int, reduction: str) -> Array:
    sq_err = (_l2_normalize(student, axis) - _l2_normalize(teacher, axis)) ** 2
    if reduction == "mean":
        return jnp.mean(sq_err)
    # One "row" is one normalised vector: sum along the normalised axis, mean over the rest.
    return jnp.mean(jnp.sum(sq_err, axis=axis))


def _correlation_matrix(z: Array, correlation: str) -> Array:
    batch, num_classes = z.shape
    if correlation == "batch":
        d = z - jnp.mean(z, axis=1, keepdims=True)
        return jnp.matmul(d, d.T, precision=_HIGHEST) / (num_classes - 1)
    d = z - jnp.mean(z, axis=0, keepdims=True)
    return jnp.matmul(d.T, d, precision=_HIGHEST) / (batch - 1)


def clkd_terms(
    student_logits: Any, teacher_logits: Any, correlation: str, *, reduction: str
) -> dict[str, Array]:
    """The three CLKD terms for (B, K) logits: {"instance", "class", "correlation"} scalars."""
    if correlation not in CORRELATIONS:
        raise ValueError(f"unknown correlation {correlation!r}; expected one of {CORRELATIONS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    student, teacher = prepare_logit_pair(student_logits, teacher_logits)
    batch, num_classes = student.shape
    if num_classes < 2 or (correlation == "class" and batch < 2):
        raise ValueError(
            f"CLKD's {correlation} correlation needs K >= 2 and, for 'class', "
            f"B >= 2; got B={batch}, K={num_classes}"
        )
    corr_diff = _correlation_matrix(student, correlation) - _correlation_matrix(
        teacher, correlation
    )
    return {
        "instance": _normalized_mse(student, teacher, axis=1, reduction=reduction),
        "class": _normalized_mse(student, teacher, axis=0, reduction=reduction),
        "correlation": jnp.sum(corr_diff**2) / num_classes**2,
    }
