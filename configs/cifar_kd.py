"""KD (Hinton et al.) on CIFAR-100: 0.1*CE + 0.9*KD, T=4.

Usage: python -m kd_jax.main --config configs/cifar_kd.py:resnet32x4-resnet8x4 --workdir DIR
The argument after ':' names the pair (teacher-student); see kd_jax/train/recipes.py for all of them.
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("kd", "cifar100", arg, default_pair="resnet32x4-resnet8x4")
