"""NKD on CUB-200-2011 (SDD's NKD baseline, its SDD_NKD distiller with --M [1]): CE + min(epoch/20,1)*NKD on the global logits, gamma = the pair's DKD beta, T=4, gradient clip 40.

Usage: python -m kd_jax.main --config cub_nkd.py:resnet32x4-MobileNetV2 --workdir DIR
The argument after ':' names the pair (teacher-student); `python -m kd_jax.main --help` lists the config
files, and an unknown pair (teacher-student) lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("nkd", data.CUB, arg, default_pair="resnet32x4-MobileNetV2")
