"""NKD on CIFAR-100 (SDD's NKD baseline): CE + min(epoch/20,1)*NKD, gamma = the pair's DKD beta, T=4.

Usage: python -m kd_jax.main --config cifar_nkd.py:resnet32x4-ShuffleV1 --workdir DIR
The argument after ':' names the pair (teacher-student); `python -m kd_jax.main --help` lists the config
files, and an unknown pair (teacher-student) lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("nkd", data.CIFAR100, arg, default_pair="resnet32x4-ShuffleV1")
