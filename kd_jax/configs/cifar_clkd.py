"""CLKD on CIFAR-100: 0.1*CE + 0.5*(L_ins + 2*L_cla) + 0.4*L_cc (a reimplementation: no official code).

Usage: python -m kd_jax.main --config cifar_clkd.py:resnet32x4-resnet8x4 --workdir DIR
The argument after ':' names the pair (teacher-student); `python -m kd_jax.main --help` lists the config
files, and an unknown pair (teacher-student) lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("clkd", data.CIFAR100, arg, default_pair="resnet32x4-resnet8x4")
