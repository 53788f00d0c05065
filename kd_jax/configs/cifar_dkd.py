"""DKD on CIFAR-100: CE + min(epoch/20,1)*(TCKD + beta*NCKD), T=4, beta per pair (mdistiller).

Usage: python -m kd_jax.main --config cifar_dkd.py:resnet32x4-resnet8x4 --workdir DIR
The argument after ':' names the pair (teacher-student); `python -m kd_jax.main --help` lists the config
files, and an unknown pair (teacher-student) lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("dkd", data.CIFAR100, arg, default_pair="resnet32x4-resnet8x4")
