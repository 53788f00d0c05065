"""SDD on ImageNet (T=1, warmup 1; [1,2] for R34->R18, [1,2,4] for R50->MobileNetV1).

SD-KD / SD-DKD / SD-NKD are chosen by method.base (kd | dkd | nkd; default dkd), either with
--config.method.base=kd or as ',kd' after the pair. Scales: [1,2] for same-family pairs,
[1,2,4] for heterogeneous ones (method.scales).

Usage: python -m kd_jax.main --config configs/imagenet_sdd.py:ResNet34-ResNet18 --workdir DIR
       python -m kd_jax.main --config configs/imagenet_sdd.py:ResNet34-ResNet18,kd --workdir DIR   # SD-KD
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("sdd", "imagenet2012", arg, default_pair="ResNet34-ResNet18")
