"""KD on ImageNet: 0.5*CE + 0.5*KD, T=1 (mdistiller's ImageNet KD recipe).

Usage: python -m kd_jax.main --config imagenet_kd.py:ResNet34-ResNet18 --workdir DIR
The argument after ':' names the pair (teacher-student); `python -m kd_jax.main --help` lists the config
files, and an unknown pair (teacher-student) lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("kd", data.IMAGENET, arg, default_pair="ResNet34-ResNet18")
