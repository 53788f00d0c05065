"""DKD on CIFAR-100: CE + min(epoch/20,1)*(alpha*TCKD + beta*NCKD), T=4, beta per pair.

Usage: python -m kd_jax.main --config configs/cifar_dkd.py:resnet32x4-resnet8x4 --workdir DIR
The argument after ':' names the pair (teacher-student); see kd_jax/train/recipes.py for all of them.
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("dkd", "cifar100", arg, default_pair="resnet32x4-resnet8x4")
