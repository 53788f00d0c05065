"""SDD on CUB-200-2011 (224x224 inputs, cub_* models).

SD-KD / SD-DKD / SD-NKD are chosen by method.base (kd | dkd | nkd; default dkd), either with
--config.method.base=kd or as ',kd' after the pair. Scales: [1,2] for same-family pairs,
[1,2,4] for heterogeneous ones (method.scales).

Usage: python -m kd_jax.main --config configs/cub_sdd.py:resnet32x4-MobileNetV2 --workdir DIR
       python -m kd_jax.main --config configs/cub_sdd.py:resnet32x4-MobileNetV2,kd --workdir DIR   # SD-KD
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("sdd", "caltech_birds2011", arg, default_pair="resnet32x4-MobileNetV2")
