"""Building blocks with PyTorch semantics, shared by every model of the zoo.

Layout is NHWC. Conventions that make converted PyTorch checkpoints give the same numbers:
explicit symmetric padding (never 'SAME'), BatchNorm with PyTorch's update rule, kernels in
HWIO / (in, out) layout, and the reference initialisation schemes.

Convolutions have two formulations that give the same values up to rounding: XLA's
convolution and im2col (the kernel's shifted slices of the input, concatenated, times the
kernel as one matrix). On x86 CPUs XLA's convolution is far slower than im2col for grouped
and depthwise convolutions, and for all of them without AVX-512, so the CPU backend picks
per convolution (`cpu_conv_formulation`); GPUs and TPUs keep XLA's. Parameters are the same.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax import machine

Dtype = Any


# --- Initialisers (PyTorch schemes; kernels are HWIO for convs, (in, out) for linears) ---

def kaiming_normal_fan_out(key, shape, dtype=jnp.float32):
    """torch.nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu') for HWIO kernels.

    fan_out = out_channels * kh * kw (torch counts out_channels, not out/groups).
    """
    fan_out = shape[-1] * math.prod(shape[:-2])
    std = math.sqrt(2.0 / fan_out)
    return std * jax.random.normal(key, shape, dtype)


def torch_default_kernel_init(key, shape, dtype=jnp.float32):
    """PyTorch's default Conv/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    (kaiming_uniform_ with a=sqrt(5)). fan_in = (in_channels / groups) * kh * kw, which is
    shape[-2] * prod(shape[:-2]) for HWIO and shape[0] for (in, out).
    """
    fan_in = math.prod(shape[:-1])
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_bias_init(fan_in: int):
    """PyTorch's default bias init for a layer with the given fan_in."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def normal_init(std: float):
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)

    return init


# --- Convolution formulations ---

CONV_FORMULATIONS = ("xla", "im2col")
CPU_CONV_CHOICES = ("auto",) + CONV_FORMULATIONS
_NHWC = jax.lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                     out_spec=(0, 3, 1, 2))
_cpu_conv = "auto"


def _check_cpu_conv(choice: str) -> str:
    if choice not in CPU_CONV_CHOICES:
        raise ValueError(f"cpu_conv={choice!r}; allowed: {', '.join(CPU_CONV_CHOICES)}")
    return choice


def set_cpu_conv(choice: str) -> None:
    """Sets how convolutions traced from now on run on the CPU backend: 'auto' (the rule of
    `cpu_conv_formulation`), 'xla' or 'im2col' (forced). GPU and TPU always use XLA's."""
    global _cpu_conv
    _cpu_conv = _check_cpu_conv(choice)


def get_cpu_conv() -> str:
    return _cpu_conv


@contextlib.contextmanager
def cpu_conv(choice: str) -> Iterator[None]:
    """`with cpu_conv('im2col'):` traces convolutions with that setting, then restores it."""
    previous = _cpu_conv
    set_cpu_conv(choice)
    try:
        yield
    finally:
        set_cpu_conv(previous)


def cpu_conv_formulation(kernel: int, stride: int, groups: int, in_channels: int,
                         out_channels: int, isa: dict[str, bool], choice: str = "auto") -> str:
    """The formulation ('xla' | 'im2col') of one convolution on the CPU backend.

    `choice` 'xla' or 'im2col' forces it. 'auto' is the rule of the tables of
    benchmarks/conv_formulations.py (benchmarks/RESULTS.md), forward + backward at batch 64:
    - grouped and depthwise convolutions: im2col (an einsum per group, a fused sum of
      per-channel taps) on every x86 processor: with AVX-512, XLA's convolution of these
      shapes is 4-84x slower (depthwise 3x3 stride 2: 16-84x);
    - dense convolutions: im2col on x86 processors without AVX-512, where XLA's
      convolution takes a slow path (3x3 64->64 at 32x32: 895 ms, against 290 ms as
      im2col and 113 ms in PyTorch, on a 2-core AVX2 EPYC; issue 24); XLA's with AVX-512,
      where im2col of a 3x3 at stride 1 is up to 3.9x slower, and 1x1 convolutions, although
      2-5x faster alone as one matrix product, made the whole resnet32x4 -> resnet8x4 step
      slower (6%, one run under load: to be re-measured on a quiet machine).
    Processors without x86 flags (ARM, unknown) keep XLA's convolution: unmeasured. `isa` is
    `machine.xla_isa()`, so XLA_FLAGS=--xla_cpu_max_isa=AVX2 on an AVX-512 machine picks
    what an AVX2 processor would (the speed stays the AVX-512 one). The AVX2 rule rests on
    the one shape measured there: run the benchmark on such a processor to refine it.
    """
    del kernel, stride, in_channels, out_channels   # no measured case needed them
    _check_cpu_conv(choice)
    if choice != "auto":
        return choice
    if not isa.get("avx"):
        return "xla"
    return "im2col" if groups > 1 or not isa.get("avx512f") else "xla"


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: int,
                groups: int = 1) -> jax.Array:
    """XLA's NHWC/HWIO convolution with symmetric `padding` as slices and matrix products.

    x: (B, H, W, C); kernel: (k, k, C / groups, O); returns (B, Ho, Wo, O) with
    Ho = (H + 2 * padding - k) // stride + 1. The k*k taps are strided slices of the padded
    input; groups == 1: cols = concat(taps) (B, Ho, Wo, k*k*C) @ kernel (k*k*C, O), one
    matrix product (1x1: the input itself); depthwise (C / groups == 1): the sum over taps
    of tap * kernel[tap] per channel, one fused elementwise loop; other groups: an einsum
    over (tap, channel in group) per group. Products accumulate in float32 and the result is
    cast to x's dtype (XLA's convolution also returns x's dtype).
    """
    b, h, w, c = x.shape
    kh, kw, c_group, out = kernel.shape
    if kh != kw or c_group * groups != c or out % groups:
        raise ValueError(f"conv_im2col: kernel {kernel.shape} does not fit input {x.shape} "
                         f"with groups={groups}")
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    taps = [jax.lax.slice(x, (0, i, j, 0), (b, i + (ho - 1) * stride + 1,
                                            j + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
            for i in range(kh) for j in range(kw)]
    f32 = jnp.float32
    if groups == 1:
        cols = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
        y = jnp.dot(cols, kernel.reshape(kh * kw * c, out), preferred_element_type=f32)
    elif c_group == 1:
        mult = out // groups   # output channel g * mult + m reads input channel g
        wk = kernel.reshape(kh * kw, groups, mult).astype(f32)
        y = sum(t.astype(f32)[..., None] * wk[i] for i, t in enumerate(taps))
    else:
        cols = jnp.stack(taps, axis=3).reshape(b, ho, wo, kh * kw, groups, c_group)
        wk = kernel.reshape(kh * kw, c_group, groups, out // groups)
        y = jnp.einsum("bhwtgc,tcgo->bhwgo", cols, wk, preferred_element_type=f32)
    return y.reshape(b, ho, wo, out).astype(x.dtype)


def _symmetric_padding(padding) -> int | None:
    """p if padding is ((p, p), (p, p)), else None."""
    try:
        (a, b), (c, d) = padding
    except (TypeError, ValueError):
        return None
    return a if a == b == c == d else None


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """jax.lax.conv_general_dilated, or on the CPU backend `conv_im2col` where
    `cpu_conv_formulation` picks it (only for what im2col covers: NHWC/HWIO, square kernel,
    equal strides, symmetric padding, no dilation, default precision)."""
    def xla():
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, precision=precision, **kwargs)

    if jax.default_backend() != "cpu" or _cpu_conv == "xla":
        return xla()
    pad = _symmetric_padding(padding)
    covered = (lhs.ndim == 4 and rhs.shape[0] == rhs.shape[1] and pad is not None
               and len(set(window_strides)) == 1 and precision is None
               and dimension_numbers == _NHWC
               and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
               and all(v is None for v in kwargs.values()))
    if not covered:
        return xla()
    formulation = cpu_conv_formulation(rhs.shape[0], window_strides[0], feature_group_count,
                                       lhs.shape[-1], rhs.shape[-1], machine.xla_isa(), _cpu_conv)
    if formulation == "im2col":
        return conv_im2col(lhs, rhs, window_strides[0], pad, feature_group_count)
    return xla()


# --- Layers ---

def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    use_bias: bool = False,
    kernel_init=kaiming_normal_fan_out,
    bias_init=None,
    dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """nn.Conv2d(in, out, k, stride, padding, groups, bias) as an NHWC nnx.Conv.

    Padding is explicit and symmetric ((p, p), (p, p)) like PyTorch; Flax 'SAME' differs
    for stride-2 convolutions. Parameters are float32; `dtype` is the compute dtype. On the
    CPU backend the convolution may run as im2col (`conv_general_dilated`); the parameters
    are the same either way.
    """
    if bias_init is None:
        bias_init = torch_default_bias_init(in_features // groups * kernel_size * kernel_size)
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


# The classifier head's matmul precision: that of SDD's regional logits
# (kd_jax.losses.sdd.local_logits), so region 0 equals the global logits on every backend.
HEAD_PRECISION = jax.lax.Precision.HIGHEST


def linear(
    in_features: int,
    out_features: int,
    *,
    kernel_init=torch_default_kernel_init,
    bias_init=None,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """nn.Linear(in, out) with PyTorch's default init; kernel is (in, out). The classifier
    head of every model: (B, in) -> logits (B, out).

    It computes in float32 at HEAD_PRECISION whatever the model's compute dtype: under
    bfloat16 its input is cast up (exactly) and the logits are a float32 matmul, as SDD's
    regional logits of the same features and kernel are; a bf16 matmul would round the
    logits to 8 significant bits before every loss. The head is B x in x out
    multiply-adds, a negligible part of the step.
    """
    if bias_init is None:
        bias_init = torch_default_bias_init(in_features)
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=HEAD_PRECISION,
        rngs=rngs,
    )


class BatchNorm(nnx.Module):
    """nn.BatchNorm{1,2}d over the last (channel) axis, with PyTorch's exact semantics.

    Training: normalise with the biased batch variance over all axes but the last (under a
    data-parallel jit the batch axis is global, so statistics are those of the global
    batch); update running_mean/var with momentum 0.9 (torch 0.1) using the UNBIASED
    variance n/(n-1), as PyTorch does. Inference (`use_running_average=True`, set by
    `model.eval()`): normalise with the running statistics. Statistics and the affine
    transform are computed in float32; the output is cast to `dtype`.
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        dtype: Dtype = jnp.float32,
        use_running_average: bool = False,
    ):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_features = num_features
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.use_running_average = use_running_average

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.num_features:
            raise ValueError(
                f"BatchNorm expects {self.num_features} channels in the last axis, got shape {x.shape}")
        xf = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            n = x.size // x.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean.set_value(m * self.mean[...] + (1.0 - m) * mean)
            self.var.set_value(m * self.var[...] + (1.0 - m) * unbiased)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def avg_pool(x: jax.Array, window: int, stride: int | None = None, padding: int = 0,
             count_include_pad: bool = True) -> jax.Array:
    """nn.AvgPool2d(window, stride, padding) on NHWC; padding counted like PyTorch's default."""
    stride = window if stride is None else stride
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    # Init values must be NumPy constants: with jnp arrays JAX does not recognise the
    # sum/max monoid and the pool cannot be differentiated.
    summed = jax.lax.reduce_window(x, np.array(0, x.dtype), jax.lax.add,
                                   (1, window, window, 1), (1, stride, stride, 1), pads)
    if count_include_pad or padding == 0:
        return summed / (window * window)
    ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
    counts = jax.lax.reduce_window(ones, np.array(0, x.dtype), jax.lax.add,
                                   (1, window, window, 1), (1, stride, stride, 1), pads)
    return summed / counts


def max_pool(x: jax.Array, window: int, stride: int | None = None, padding: int = 0) -> jax.Array:
    """nn.MaxPool2d(window, stride, padding) on NHWC (padding with -inf, like PyTorch)."""
    stride = window if stride is None else stride
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max,
                                 (1, window, window, 1), (1, stride, stride, 1), pads)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C)."""
    return jnp.mean(x, axis=(1, 2))


def pool_and_classify(
    head: nnx.Module, pre_pool: jax.Array, stages: Any, preact_stages: Any
) -> tuple[jax.Array, dict[str, Any]]:
    """The end of every model: global average pool, final linear layer, features record.

    pre_pool (B, H, W, C) -> logits (B, K) float32 and the features dict of kd_jax.models:
    {"stages", "preact_stages", "pooled" (B, C), "pre_pool"}.
    """
    pooled = global_avg_pool(pre_pool)
    logits = head(pooled).astype(jnp.float32)
    return logits, {"stages": stages, "preact_stages": preact_stages, "pooled": pooled,
                    "pre_pool": pre_pool}


def run_stage(blocks: Sequence[nnx.Module], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Runs blocks that each return (out, preact); returns the last block's (out, preact).

    The reference's feature lists take a stage's pre-activation from its last block.
    """
    preact = x
    for block in blocks:
        x, preact = block(x)
    return x, preact
