"""DKD on CUB-200-2011 (SDD's DKD baseline, its SDD_DKD distiller with --M [1]): CE + min(epoch/20,1)*(TCKD + beta*NCKD) on the global logits, T=4, beta of SDD's CUB config, gradient clip 40.

Usage: python -m kd_jax.main --config cub_dkd.py:resnet32x4-MobileNetV2 --workdir DIR
The argument after ':' names the pair (teacher-student); `python -m kd_jax.main --help` lists the config
files, and an unknown pair (teacher-student) lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("dkd", data.CUB, arg, default_pair="resnet32x4-MobileNetV2")
