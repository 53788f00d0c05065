"""SDD (scale-decoupled distillation) on CIFAR-100.

SD-KD / SD-DKD / SD-NKD are chosen by method.base (kd | dkd | nkd; default dkd), either with
--config.method.base=kd or as ',kd' after the pair. Scales: [1,2] for same-family pairs,
[1,2,4] for heterogeneous ones (method.scales).

Usage: python -m kd_jax.main --config configs/cifar_sdd.py:resnet32x4-ShuffleV1 --workdir DIR
       python -m kd_jax.main --config configs/cifar_sdd.py:resnet32x4-ShuffleV1,kd --workdir DIR   # SD-KD
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("sdd", "cifar100", arg, default_pair="resnet32x4-ShuffleV1")
