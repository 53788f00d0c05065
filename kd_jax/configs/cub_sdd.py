"""SDD (scale-decoupled distillation) on CUB-200-2011: SD-KD, SD-DKD (default) or SD-NKD.

The base loss is the second part of the argument: `:<pair>,kd`, `:<pair>,dkd` or
`:<pair>,nkd`. Its whole recipe (weights, warmup, temperature, the pair's scale set) is
resolved when the config is built; overriding method.base afterwards is refused, because the
other values would still be those of the first base.

Usage: python -m kd_jax.main --config cub_sdd.py:resnet32x4-MobileNetV2 --workdir DIR     # SD-DKD
       python -m kd_jax.main --config cub_sdd.py:resnet32x4-MobileNetV2,kd --workdir DIR  # SD-KD
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("sdd", data.CUB, arg, default_pair="resnet32x4-MobileNetV2")
