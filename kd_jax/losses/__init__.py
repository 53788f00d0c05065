"""Distillation losses: KD, DKD, NKD and SDD's scale-decoupled lift exactly as the reference
code computes them (mdistiller, SDD), and reimplementations of CLKD and of MSDCRD.

All functions are pure and jittable, validate shapes/dtypes statically (ValueError on bad
input), treat teacher inputs as constants (stop_gradient) and compute in float32 (float64
when given float64 under x64). Shapes: logits (B, K), local logits (B, N, K), feature maps
NHWC (B, H, W, C), labels (B,) int. Hyperparameters have no defaults: their reference values
live in the recipes (`kd_jax.methods.<name>.hparams`, `kd_jax.reference.table`).
"""

from kd_jax.losses.clkd import clkd_terms
from kd_jax.losses.common import ce_loss, ce_per_example
from kd_jax.losses.dkd import dkd_loss, dkd_per_example, dkd_terms_per_example
from kd_jax.losses.kd import kd_loss, kd_per_example
from kd_jax.losses.msdcrd import (
    adaptive_pool_to,
    info_nce_rows,
    msdcrd_objective,
    msdcrd_sample_weights,
    msdcrd_terms,
    sliding_window_pool,
)
from kd_jax.losses.nkd import nkd_loss, nkd_per_example
from kd_jax.losses.objectives import (
    ce_plus_warmed_up,
    clkd_objective,
    dkd_objective,
    kd_objective,
    nkd_objective,
    sd_objective,
    warmup_factor,
)
from kd_jax.losses.sdd import (
    adaptive_avg_pool,
    local_logits,
    multiscale_pool,
    num_regions,
    parse_scales,
    SD_BASE_HPARAMS,
    scale_decoupled,
    sd_base_loss,
    sd_dkd_loss,
    sd_kd_loss,
    sd_nkd_loss,
    sdd_region_weights,
)

__all__ = [
    "adaptive_avg_pool",
    "adaptive_pool_to",
    "ce_loss",
    "ce_plus_warmed_up",
    "ce_per_example",
    "clkd_objective",
    "clkd_terms",
    "dkd_loss",
    "dkd_objective",
    "dkd_per_example",
    "dkd_terms_per_example",
    "info_nce_rows",
    "kd_loss",
    "kd_objective",
    "kd_per_example",
    "local_logits",
    "msdcrd_objective",
    "msdcrd_sample_weights",
    "msdcrd_terms",
    "multiscale_pool",
    "nkd_loss",
    "nkd_objective",
    "nkd_per_example",
    "num_regions",
    "parse_scales",
    "scale_decoupled",
    "SD_BASE_HPARAMS",
    "sd_base_loss",
    "sd_dkd_loss",
    "sd_kd_loss",
    "sd_nkd_loss",
    "sd_objective",
    "sdd_region_weights",
    "sliding_window_pool",
    "warmup_factor",
]
