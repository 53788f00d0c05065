"""Shared pieces of the loss library: input validation, dtype policy, CE and KL helpers.

Every check here is static (shapes, dtypes, Python numbers), so the losses stay jittable:
under `jax.jit` the shapes are known at trace time and hyperparameters that arrive as
traced arrays simply skip their value checks.

Errors are `ValueError`s naming the offending argument; the underlying checks are chex
assertions (re-raised as ValueError so callers catch one exception type).
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, Iterator

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@contextlib.contextmanager
def as_value_error(message: str) -> Iterator[None]:
    """Turns a failing chex assertion into a ValueError that says what is wrong."""
    try:
        yield
    except AssertionError as err:  # chex raises AssertionError
        raise ValueError(f"{message} ({err})") from None


def _describe(x: Any) -> str:
    return f"shape {tuple(np.shape(x))}, dtype {getattr(x, 'dtype', type(x).__name__)}"


def loss_dtype(*arrays: Any) -> jnp.dtype:
    """The dtype the losses compute in: float32, or float64 when an input is float64.

    bf16/f16 logits are upcast because softmax/log over 100-1000 classes loses too much
    precision in 16 bits; float64 is kept so the tests can compare at 1e-10 under x64.
    """
    dtype = jnp.float32
    for a in arrays:
        dtype = jnp.promote_types(dtype, jnp.asarray(a).dtype)
    return dtype


def check_logits(name: str, x: Any, rank: int = 2) -> Array:
    """Validates a floating array of the given rank ((B, K) logits by default)."""
    x = jnp.asarray(x)
    layout = {2: "(B, K)", 3: "(B, N, K)", 4: "(B, H, W, C)"}.get(rank, f"rank {rank}")
    with as_value_error(f"{name} must be a float array of shape {layout}; got {_describe(x)}"):
        chex.assert_rank(x, rank)
        chex.assert_type(x, float)
    return x


def check_pair(
    student: Any,
    teacher: Any,
    rank: int = 2,
    names: tuple[str, str] = ("student_logits", "teacher_logits"),
) -> tuple[Array, Array]:
    """Validates student/teacher logits: same shape, floating, given rank."""
    student = check_logits(names[0], student, rank)
    teacher = check_logits(names[1], teacher, rank)
    with as_value_error(
        f"{names[0]} and {names[1]} must have the same shape; got "
        f"{student.shape} and {teacher.shape}"
    ):
        chex.assert_equal_shape([student, teacher])
    return student, teacher


def check_labels(labels: Any, batch_size: int, num_classes: int | None = None) -> Array:
    """Validates integer class labels of shape (B,). Values are not checked (they may be traced)."""
    labels = jnp.asarray(labels)
    with as_value_error(
        f"labels must be an integer array of shape ({batch_size},); got {_describe(labels)}"
    ):
        chex.assert_shape(labels, (batch_size,))
        chex.assert_type(labels, int)
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"need at least one class, got num_classes={num_classes}")
    return labels


def check_linear_head(kernel: Any, bias: Any, channels: int, *, name: str = "",
                      map_name: str = "the feature map") -> tuple[Array, Array]:
    """Validates a linear layer (kernel (C, K), bias (K,)) applied to `channels`-wide features.

    `name` prefixes the messages (e.g. "student_head "); `map_name` names the features.
    """
    kernel, bias = jnp.asarray(kernel), jnp.asarray(bias)
    with as_value_error(
        f"{name}kernel must be a float ({channels}, K) array matching {map_name}'s "
        f"{channels} channels, got shape {kernel.shape}, dtype {kernel.dtype}"
    ):
        chex.assert_rank(kernel, 2)
        chex.assert_type(kernel, float)
        chex.assert_axis_dimension(kernel, 0, channels)
    with as_value_error(
        f"{name}bias must be a float ({kernel.shape[1]},) array, got shape {bias.shape}, "
        f"dtype {bias.dtype}"
    ):
        chex.assert_shape(bias, (kernel.shape[1],))
        chex.assert_type(bias, float)
    return kernel, bias


def _is_concrete_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) or (isinstance(x, np.ndarray) and x.ndim == 0)


def check_scalar(name: str, value: Any, *, positive: bool = False) -> None:
    """Checks a hyperparameter: a scalar; if it is a concrete number, finite (and > 0).

    A traced array (inside jit) only gets its shape checked: its value is unknown.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got a bool ({value})")
    if _is_concrete_number(value):
        v = float(value)
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
        if positive and v <= 0:
            raise ValueError(f"{name} must be > 0, got {v}")
        return
    shape = np.shape(value)
    if shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {shape}")
    if not isinstance(value, jax.core.Tracer):
        v = float(np.asarray(value))  # a concrete jax/numpy scalar: check its value too
        if not np.isfinite(v) or (positive and v <= 0):
            raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {v}")


def check_temperature(temperature: Any) -> None:
    check_scalar("temperature", temperature, positive=True)


def prepare_logit_pair(student: Any, teacher: Any) -> tuple[Array, Array]:
    """Validated (B, K) logits in the compute dtype, teacher under stop_gradient."""
    student, teacher = check_pair(student, teacher)
    dtype = loss_dtype(student, teacher)
    return student.astype(dtype), jax.lax.stop_gradient(teacher.astype(dtype))


def kl_rows(log_p_teacher: Array, log_p_student: Array) -> Array:
    """sum_k p^T_k (log p^T_k - log p^S_k) over the last axis.

    p^T = exp(log p^T) is exactly 0 where the teacher probability underflows, which gives
    the reference's 0 * log 0 = 0 convention (torch's kl_div uses xlogy) without NaNs.
    """
    p_teacher = jnp.exp(log_p_teacher)
    return jnp.sum(p_teacher * (log_p_teacher - log_p_student), axis=-1)


def ce_per_example(logits: Any, labels: Any) -> Array:
    """Cross-entropy -log softmax(z)_y per example: (B, K), (B,) -> (B,)."""
    logits = check_logits("logits", logits)
    labels = check_labels(labels, logits.shape[0])
    logits = logits.astype(loss_dtype(logits))
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


def ce_loss(logits: Any, labels: Any) -> Array:
    """Mean cross-entropy over the batch (torch F.cross_entropy, no label smoothing)."""
    return jnp.mean(ce_per_example(logits, labels))


def one_hot_mask(labels: Array, num_classes: int) -> Array:
    """Boolean (B, K) mask of the target class."""
    return labels[:, None] == jnp.arange(num_classes)[None, :]
