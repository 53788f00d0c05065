"""NKD on ImageNet: SDD's NKD distiller, T=1 and gamma=1.5 (hard-coded there), CE 1, warmup 1.

Usage: python -m kd_jax.main --config imagenet_nkd.py:ResNet34-ResNet18 --workdir DIR
The argument after ':' names the pair (teacher-student); `python -m kd_jax.main --help` lists the config
files, and an unknown pair (teacher-student) lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("nkd", data.IMAGENET, arg, default_pair="ResNet34-ResNet18")
