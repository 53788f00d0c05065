"""NKD on CIFAR-100 (SDD's third base loss): gamma = the pair's DKD beta, T=4.

Usage: python -m kd_jax.main --config configs/cifar_nkd.py:resnet32x4-ShuffleV1 --workdir DIR
The argument after ':' names the pair (teacher-student); see kd_jax/train/recipes.py for all of them.
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("nkd", "cifar100", arg, default_pair="resnet32x4-ShuffleV1")
