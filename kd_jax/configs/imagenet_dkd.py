"""DKD on ImageNet: T=1, warmup 1, beta 0.5 (ResNet34-ResNet18) / 2.0 (ResNet50-MobileNetV1).

Usage: python -m kd_jax.main --config imagenet_dkd.py:ResNet34-ResNet18 --workdir DIR
The argument after ':' names the pair (teacher-student); `python -m kd_jax.main --help` lists the config
files, and an unknown pair (teacher-student) lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("dkd", data.IMAGENET, arg, default_pair="ResNet34-ResNet18")
