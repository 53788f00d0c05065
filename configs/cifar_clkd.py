"""CLKD on CIFAR-100: 0.1*CE + 0.5*(L_ins + 2*L_cla) + 0.4*L_cc (reimplementation).

Usage: python -m kd_jax.main --config configs/cifar_clkd.py:resnet32x4-resnet8x4 --workdir DIR
The argument after ':' names the pair (teacher-student); see kd_jax/train/recipes.py for all of them.
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("clkd", "cifar100", arg, default_pair="resnet32x4-resnet8x4")
