"""DKD on CUB-200-2011 (beta of the same pair on CIFAR-100, 8 if none).

Usage: python -m kd_jax.main --config configs/cub_dkd.py:resnet32x4-MobileNetV2 --workdir DIR
The argument after ':' names the pair (teacher-student, without the cub_ prefix); see kd_jax/train/recipes.py for all of them.
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("dkd", "caltech_birds2011", arg, default_pair="resnet32x4-MobileNetV2")
