"""Building blocks with PyTorch semantics, shared by every model of the zoo.

Layout is NHWC. Conventions that make converted PyTorch checkpoints give the same numbers:
explicit symmetric padding (never 'SAME'), BatchNorm with PyTorch's update rule, kernels in
HWIO / (in, out) layout, and the reference initialisation schemes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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
    for stride-2 convolutions. Parameters are float32; `dtype` is the compute dtype.
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
        rngs=rngs,
    )


def linear(
    in_features: int,
    out_features: int,
    *,
    kernel_init=torch_default_kernel_init,
    bias_init=None,
    dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """nn.Linear(in, out) with PyTorch's default init; kernel is (in, out)."""
    if bias_init is None:
        bias_init = torch_default_bias_init(in_features)
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        param_dtype=jnp.float32,
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


def run_stage(blocks: Sequence[nnx.Module], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Runs blocks that each return (out, preact); returns the last block's (out, preact).

    The reference's feature lists take a stage's pre-activation from its last block.
    """
    preact = x
    for block in blocks:
        x, preact = block(x)
    return x, preact
