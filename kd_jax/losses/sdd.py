"""SDD: scale-decoupled distillation (Wei et al., CVPR 2024, arXiv 2403.13512).

Pipeline (as SDD's code, shicaiwei123/SDD-CVPR2024, computes it):
1. `multiscale_pool`: the map fed to the final global pool (NHWC) is adaptive-average-
   pooled to 4x4, and THAT 4x4 map to 2x2 and 1x1 (as the reference does, so 7x7 and 14x14
   maps give overlapping windows and region 0 is not exactly the global average).
2. `local_logits`: the model's own final linear layer on every region -> (B, N, K).
3. `sdd_region_weights`: teacher-only weights, 2 for "complementary" regions (exactly one
   of region / global teacher prediction correct), 1 otherwise.
4. `scale_decoupled`: any per-example logit loss l(z^S, z^T, y) -> (B,) (SDD's bases:
   `sd_base_loss`) becomes 1/(B*N) sum_{b,n} w_bn l(z^S_bn, z^T_bn, y_b), vmapped over the
   region axis. `sd_kd_loss`, `sd_dkd_loss` and `sd_nkd_loss` are the three SDD losses.
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
    loss_dtype,
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
    x = x.astype(loss_dtype(x))
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
    dtype = loss_dtype(pooled, kernel, bias)
    logits = jnp.einsum(
        "bnc,ck->bnk",
        pooled.astype(dtype),
        kernel.astype(dtype),
        precision=jax.lax.Precision.HIGHEST,
    )
    return logits + bias.astype(dtype)


def sdd_region_weights(teacher_local_logits: Any, labels: Any, complementary_weight: Any) -> Array:
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
    dtype = loss_dtype(teacher)
    return jnp.where(
        complementary, jnp.asarray(complementary_weight, dtype), jnp.asarray(1.0, dtype)
    )


# student (B, K), teacher (B, K), labels (B,) -> (B,), its hyperparameters bound.
PerExampleLoss = Callable[[Array, Array, Array], Array]


def _weighted_mean(weights: Array, losses: Array) -> Array:
    """1/(B*N) sum_{b,n} w_bn l_bn of (B, N) region losses."""
    chex.assert_equal_shape([losses, weights])
    return jnp.sum(weights * losses) / losses.size


def scale_decoupled(
    per_example_loss: PerExampleLoss,
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    *,
    complementary_weight: Any,
    zero_nonfinite: bool,
) -> Array:
    """The scale-decoupled (SD) version of a per-example logit loss l, a scalar:

        1/(B*N) * sum_{b,n} w_bn * l(z^S_bn, z^T_bn, y_b),
        w = sdd_region_weights(teacher_local, labels, complementary_weight)   (B, N).

    per_example_loss(student (B, K), teacher (B, K), labels (B,)) -> (B,): the base loss with
    its hyperparameters bound (e.g. `sd_base_loss("dkd", ...)`, or functools.partial of your
    own), whose mean over B is its batch loss. It is vmapped over the region axis N of
    student_local, teacher_local (B, N, K); labels (B,) int are shared by the regions. The
    teacher is a constant (stop_gradient).

    zero_nonfinite=True reproduces the SDD reference's guard (`if isnan(loss) or
    isinf(loss): loss = 0`): a non-finite SD loss becomes 0 with a zero (not NaN) gradient,
    so such a step trains on CE alone. False returns the raw inf/NaN.
    """
    student, teacher = check_pair(
        student_local, teacher_local, rank=3, names=("student_local", "teacher_local")
    )
    labels = check_labels(labels, student.shape[0])
    teacher = jax.lax.stop_gradient(teacher)
    weights = sdd_region_weights(teacher, labels, complementary_weight)
    region_losses = jax.vmap(per_example_loss, in_axes=(1, 1, None), out_axes=1)  # (B, N)
    if not zero_nonfinite:
        return _weighted_mean(weights, region_losses(student, teacher, labels))
    # Where the loss is not finite, route the student through stop_gradient so that the
    # NaN cotangents of the dead branch never reach it (a plain where would leak them).
    frozen = jax.lax.stop_gradient(student)
    finite = jnp.isfinite(_weighted_mean(weights, region_losses(frozen, teacher, labels)))
    safe_student = jnp.where(finite, student, frozen)
    loss = _weighted_mean(weights, region_losses(safe_student, teacher, labels))
    return jnp.where(finite, loss, 0.0)


def _kd_region_loss(
    student: Array, teacher: Array, labels: Array, *, temperature: Any, nan_zeroed: bool
) -> Array:
    del labels  # KD compares the two distributions only
    if nan_zeroed:
        return kd_per_example_nan_zeroed(student, teacher, temperature)
    return kd_per_example(student, teacher, temperature)


# The hyperparameters of each SDD base loss besides temperature and zero_nonfinite.
SD_BASE_HPARAMS = {"kd": (), "dkd": ("alpha", "beta", "stable"), "nkd": ("gamma",)}


def sd_base_loss(
    base: str, *, temperature: Any, zero_nonfinite: bool, **hparams: Any
) -> PerExampleLoss:
    """SD-<base>'s per-example loss for `scale_decoupled`, its hyperparameters bound.

    base "kd": `kd_per_example`, or with zero_nonfinite `kd_per_example_nan_zeroed` (SDD's
    SD-KD also zeroes NaN elements of the per-class KL before the class sum, KD.py);
    "dkd": `dkd_per_example` (hparams alpha, beta, stable); "nkd": `nkd_per_example`
    (hparams gamma). `hparams` must hold exactly the base's keys.
    """
    if base not in SD_BASE_HPARAMS:
        raise ValueError(
            f"unknown SDD base loss {base!r}; expected one of {tuple(SD_BASE_HPARAMS)}"
        )
    expected = SD_BASE_HPARAMS[base]
    if set(hparams) != set(expected):
        raise ValueError(
            f"SD-{base.upper()} takes the hyperparameters temperature, zero_nonfinite"
            + "".join(f", {k}" for k in expected) + f"; got {sorted(hparams)} besides them"
        )
    if base == "kd":
        return functools.partial(
            _kd_region_loss, temperature=temperature, nan_zeroed=zero_nonfinite
        )
    per_example = dkd_per_example if base == "dkd" else nkd_per_example
    return functools.partial(per_example, temperature=temperature, **hparams)


def _sd_loss(
    base: str,
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    *,
    temperature: Any,
    complementary_weight: Any,
    zero_nonfinite: bool,
    **hparams: Any,
) -> Array:
    """`scale_decoupled` over `sd_base_loss(base, ...)`, both with the same zero_nonfinite:
    (B, N, K) local logits -> scalar. The body of the sd_<base>_loss wrappers."""
    base_loss = sd_base_loss(base, temperature=temperature, zero_nonfinite=zero_nonfinite,
                             **hparams)
    return scale_decoupled(base_loss, student_local, teacher_local, labels,
                           complementary_weight=complementary_weight,
                           zero_nonfinite=zero_nonfinite)


def sd_kd_loss(
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    temperature: Any,
    complementary_weight: Any,
    *,
    zero_nonfinite: bool = True,
) -> Array:
    """SD-KD: region-weighted mean of per-example KD over (B, N, K) local logits.

    zero_nonfinite=True (the reference's) applies both guards of SDD's `KD.py` sdd_kd_loss:
    NaN elements of the per-class KL become 0 before the class sum, then a non-finite total
    becomes 0. False: neither.
    """
    return _sd_loss("kd", student_local, teacher_local, labels, temperature=temperature,
                    complementary_weight=complementary_weight, zero_nonfinite=zero_nonfinite)


def sd_dkd_loss(
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    alpha: Any,
    beta: Any,
    temperature: Any,
    complementary_weight: Any,
    *,
    stable: bool = False,
    zero_nonfinite: bool = True,
) -> Array:
    """SD-DKD: region-weighted mean of alpha*TCKD_b + beta*NCKD_b (see `dkd_loss` for `stable`;
    zero_nonfinite: `scale_decoupled`)."""
    return _sd_loss("dkd", student_local, teacher_local, labels, temperature=temperature,
                    complementary_weight=complementary_weight, zero_nonfinite=zero_nonfinite,
                    alpha=alpha, beta=beta, stable=stable)


def sd_nkd_loss(
    student_local: Any,
    teacher_local: Any,
    labels: Any,
    gamma: Any,
    temperature: Any,
    complementary_weight: Any,
    *,
    zero_nonfinite: bool = True,
) -> Array:
    """SD-NKD: region-weighted mean of per-example NKD (zero_nonfinite: `scale_decoupled`)."""
    return _sd_loss("nkd", student_local, teacher_local, labels, temperature=temperature,
                    complementary_weight=complementary_weight, zero_nonfinite=zero_nonfinite,
                    gamma=gamma)
