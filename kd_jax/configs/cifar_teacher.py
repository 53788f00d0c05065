"""A model trained alone with CE on CIFAR-100 (teachers, and students from scratch).

Usage: python -m kd_jax.main --config cifar_teacher.py:resnet32x4 --workdir DIR
The argument after ':' names the model; `python -m kd_jax.main --help` lists the config
files, and an unknown model lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("ce", data.CIFAR100, arg, default_pair="resnet32x4")
