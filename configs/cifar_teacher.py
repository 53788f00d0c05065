"""Training a model alone with CE on CIFAR-100 (teachers, and students from scratch).

Usage: python -m kd_jax.main --config configs/cifar_teacher.py:resnet32x4 --workdir DIR
The argument after ':' names the pair (the model); see kd_jax/train/recipes.py for all of them.
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("ce", "cifar100", arg, default_pair="resnet32x4")
