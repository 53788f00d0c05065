"""SDD: scale-decoupled distillation (Wei et al., CVPR 2024, arXiv 2403.13512).

Pipeline (as SDD's code, shicaiwei123/SDD-CVPR2024, computes it):
1. `multiscale_pool`: the map fed to the final global pool (NHWC) is adaptive-average-
   pooled to 4x4, and THAT 4x4 map to 2x2 and 1x1 (as the reference does, so 7x7 and 14x14
   maps give overlapping windows and region 0 is not exactly the global average).
2. `local_logits`: the model's own final linear layer on every region -> (B, N, K).
3. `sdd_region_weights`: teacher-only weights, 2 for "complementary" regions (exactly one
   of region / global teacher prediction correct), 1 otherwise.
4. `scale_decoupled`: lifts any per-example logit loss l(z^S, z^T, y) -> (B,) to
   1/(B*N) sum_{b,n} w_bn l(z^S_bn, z^T_bn, y_b) by vmapping it over the region axis.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.losses.common import (
    Array,
    check_labels,
    check_linear_head,
    check_logits,
    check_pair,
    check_scalar,
    compute_dtype,
)
from kd_jax.losses.dkd import dkd_per_example
from kd_jax.losses.kd import kd_per_example, kd_per_example_nan_zeroed
from kd_jax.losses.nkd import nkd_per_example

# The reference pools every map to this grid first and derives the coarser scales from it.
BASE_GRID = 4
VALID_SCALES = (1, 2, 4)

ScalesLike = str | Sequence[int]


def parse_scales(scales: ScalesLike) -> tuple[int, ...]:
    """Normalises a scale set: a tuple like (1, 2, 4) or the reference string "[1,2,4]".

    Valid sets are strictly increasing subsets of {1, 2, 4} that contain 1 (the reference
    accepts "[1]", "[1,2]" and "[1,2,4]"): region 0 must be the global region, because the
    region weights compare every region with it. The order fixes the region order.
    """
    original = scales
    if isinstance(scales, str):
        if not re.fullmatch(r"\s*\[\s*\d+(\s*,\s*\d+)*\s*\]\s*", scales):
            raise ValueError(
                f"unknown scale string {original!r}: expected a list such as "
                f"'[1]', '[1,2]' or '[1,2,4]'"
            )
        scales = [int(s) for s in re.findall(r"\d+", scales)]
    try:
        parsed = tuple(int(s) for s in scales)
        if any(int(s) != s for s in scales):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"scales must be integers from {VALID_SCALES}, got {original!r}") from None
    if (
        not parsed
        or parsed[0] != 1
        or any(s not in VALID_SCALES for s in parsed)
        or any(a >= b for a, b in zip(parsed, parsed[1:]))
    ):
        raise ValueError(
            f"invalid scales {original!r}: expected an increasing subset containing 1 "
            f"of {VALID_SCALES}, e.g. (1,), (1, 2) or (1, 2, 4)"
        )
    return parsed


def num_regions(scales: ScalesLike) -> int:
    """N = sum of s^2 over the scale set: 1, 5 or 21 for [1], [1,2], [1,2,4]."""
    return sum(s * s for s in parse_scales(scales))


@functools.lru_cache(maxsize=None)
def _window_matrix(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 membership matrix (out, in) and window lengths of torch's adaptive pooling.

    Window i covers [floor(i*L/P), ceil((i+1)*L/P)); they overlap when P does not divide L.
    """
    member = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil
        member[i, start:end] = 1.0
    return member, member.sum(axis=1)


def adaptive_avg_pool(x: Array, out_size: int) -> Array:
    """torch.nn.AdaptiveAvgPool2d(out_size) on an NHWC map: (B, H, W, C) -> (B, P, P, C).

    Each window is summed and divided by its size, as torch does.
    """
    x = check_logits("feature_map", x, rank=4)
    if not isinstance(out_size, int) or out_size < 1:
        raise ValueError(f"out_size must be a positive int, got {out_size!r}")
    _, height, width, _ = x.shape
    rows, row_len = _window_matrix(height, out_size)
    cols, col_len = _window_matrix(width, out_size)
    sums = jnp.einsum(
        "ph,bhwc,qw->bpqc",
        rows.astype(x.dtype),
        x,
        cols.astype(x.dtype),
        precision=jax.lax.Precision.HIGHEST,
    )
    counts = (row_len[:, None] * col_len[None, :]).astype(np.float64)
    return sums / jnp.asarray(counts, x.dtype)[None, :, :, None]


def multiscale_pool(feature_map: Any, scales: ScalesLike) -> Array:
    """Multi-scale region features, (B, H, W, C) -> (B, N, C).

    Region order: the scales in increasing order (1x1 = global first), each grid row-major.
    """
    scales = parse_scales(scales)
    x = check_logits("feature_map", feature_map, rank=4)
    x = x.astype(compute_dtype(x))
    grid = adaptive_avg_pool(x, BASE_GRID)
    batch, channels = x.shape[0], x.shape[-1]
    parts = []
    for s in scales:  # static loop over at most 3 scales, not over regions
        pooled = grid if s == BASE_GRID else adaptive_avg_pool(grid, s)
        parts.append(pooled.reshape(batch, s * s, channels))
    return jnp.concatenate(parts, axis=1)


def local_logits(feature_map: Any, kernel: Any, bias: Any, scales: ScalesLike) -> Array:
    """The model's final linear layer applied to every region: (B, H, W, C) -> (B, N, K).

    kernel: (C, K) (Flax layout), bias: (K,). Pooling and the affine map commute, so for
    H divisible by 4 region 0 equals the model's global logits.
    """
    pooled = multiscale_pool(feature_map, scales)
    kernel, bias = check_linear_head(kernel, bias, pooled.shape[-1])
    dtype = compute_dtype(pooled, kernel, bias)
    logits = jnp.einsum(
        "bnc,ck->bnk",
        pooled.astype(dtype),
        kernel.astype(dtype),
        precision=jax.lax.Precision.HIGHEST,
    )
    return logits + bias.astype(dtype)


def sdd_region_weights(
    teacher_local_logits: Any, labels: Any, complementary_weight: Any = 2.0
) -> Array:
    """Region weights (B, N) from the teacher's local logits (B, N, K); constants.

    w_bn = complementary_weight if exactly one of (argmax z^T_bn == y_b) and
    (argmax z^T_b0 == y_b) holds, else 1. Region 0 is the global one (always weight 1).
    Ties in argmax pick the first index, as torch.argmax.
    """
    teacher = check_logits("teacher_local_logits", teacher_local_logits, rank=3)
    labels = check_labels(labels, teacher.shape[0])
    check_scalar("complementary_weight", complementary_weight)
    teacher = jax.lax.stop_gradient(teacher)
    correct = jnp.argmax(teacher, axis=-1) == labels[:, None]  # (B, N)
    complementary = correct != correct[:, :1]
    dtype = compute_dtype(teacher)
    return jnp.where(
        complementary, jnp.asarray(complementary_weight, dtype), jnp.asarray(1.0, dtype)
    )


PerExampleLoss = Callable[..., Array]


def scale_decoupled(
    per_example_loss: PerExampleLoss, *, uses_labels: bool = True
) -> Callable[..., Array]:
    """Lifts a per-example logit loss to its scale-decoupled (SD) version.

    per_example_loss(student (B, K), teacher (B, K), [labels (B,),] *args, **kwargs) -> (B,)
    (pass `uses_labels=False` for losses without labels, e.g. `kd_per_example`), with the
    convention that its mean over B is the batch loss.

    Returns sd_loss(student_local (B, N, K), teacher_local (B, N, K), labels (B,), *args,
    complementary_weight=2.0, zero_nonfinite=True, **kwargs) -> scalar
        = 1/(B*N) * sum_{b,n} w_bn * l(z^S_bn, z^T_bn, y_b)
    where w = `sdd_region_weights(teacher_local, labels, complementary_weight)`. The base
    loss is vmapped over the region axis; hyperparameters are shared by all regions.

    zero_nonfinite=True reproduces the SDD reference's guard (`if isnan(loss) or
    isinf(loss): loss = 0`): a non-finite SD loss becomes 0 with a zero (not NaN) gradient,
    so such a step trains on CE alone. Pass False to see the raw inf/NaN.
    """

    def sd_loss(
        student_local: Any,
        teacher_local: Any,
        labels: Any,
        *args: Any,
        complementary_weight: Any = 2.0,
        zero_nonfinite: bool = True,
        **kwargs: Any,
    ) -> Array:
        student, teacher = check_pair(
            student_local, teacher_local, rank=3, names=("student_local", "teacher_local")
        )
        labels = check_labels(labels, student.shape[0])
        teacher = jax.lax.stop_gradient(teacher)
        weights = sdd_region_weights(teacher, labels, complementary_weight)

        def region_loss(s: Array, t: Array) -> Array:  # one region: (B, K) -> (B,)
            if uses_labels:
                return per_example_loss(s, t, labels, *args, **kwargs)
            return per_example_loss(s, t, *args, **kwargs)

        def weighted_mean(s: Array) -> Array:
            losses = jax.vmap(region_loss, in_axes=1, out_axes=1)(s, teacher)  # (B, N)
            chex.assert_equal_shape([losses, weights])
            return jnp.sum(weights * losses) / losses.size

        if not zero_nonfinite:
            return weighted_mean(student)
        # Where the loss is not finite, route the student through stop_gradient so that the
        # NaN cotangents of the dead branch never reach it (a plain where would leak them).
        finite = jnp.isfinite(weighted_mean(jax.lax.stop_gradient(student)))
        safe_student = jnp.where(finite, student, jax.lax.stop_gradient(student))
        return jnp.where(finite, weighted_mean(safe_student), 0.0)

    sd_loss.__name__ = f"sd_{getattr(per_example_loss, '__name__', 'loss')}"
    sd_loss.__doc__ = (
        f"Scale-decoupled version of {sd_loss.__name__[3:]} "
        "(see kd_jax.losses.sdd.scale_decoupled)."
    )
    return sd_loss


_sd_kd = scale_decoupled(kd_per_example, uses_labels=False)
# SDD's SD-KD also zeroes NaN elements of the per-class KL before summing (KD.py).
_sd_kd_nan_zeroed = scale_decoupled(kd_per_example_nan_zeroed, uses_labels=False)
_sd_dkd = scale_decoupled(dkd_per_example)
_sd_nkd = scale_decoupled(nkd_per_example)


def sd_kd_loss(
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    temperature: Any,
    complementary_weight: Any = 2.0,
    *,
    zero_nonfinite: bool = True,
) -> Array:
    """SD-KD: region-weighted mean of per-example KD over (B, N, K) local logits.

    zero_nonfinite=True applies both of the reference's guards (SDD `KD.py` sdd_kd_loss):
    NaN elements of the per-class KL become 0 before the class sum, then a non-finite total
    becomes 0. False: neither.
    """
    return (_sd_kd_nan_zeroed if zero_nonfinite else _sd_kd)(
        student_local,
        teacher_local,
        labels,
        temperature,
        complementary_weight=complementary_weight,
        zero_nonfinite=zero_nonfinite,
    )


def sd_dkd_loss(
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    alpha: Any,
    beta: Any,
    temperature: Any,
    complementary_weight: Any = 2.0,
    *,
    stable: bool = False,
    zero_nonfinite: bool = True,
) -> Array:
    """SD-DKD: region-weighted mean of alpha*TCKD_b + beta*NCKD_b (see `dkd_loss` for `stable`)."""
    return _sd_dkd(
        student_local,
        teacher_local,
        labels,
        alpha,
        beta,
        temperature,
        complementary_weight=complementary_weight,
        zero_nonfinite=zero_nonfinite,
        stable=stable,
    )


def sd_nkd_loss(
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    gamma: Any,
    temperature: Any,
    complementary_weight: Any = 2.0,
    *,
    zero_nonfinite: bool = True,
) -> Array:
    """SD-NKD: region-weighted mean of per-example NKD."""
    return _sd_nkd(
        student_local,
        teacher_local,
        labels,
        gamma,
        temperature,
        complementary_weight=complementary_weight,
        zero_nonfinite=zero_nonfinite,
    )
