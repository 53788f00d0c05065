"""KD on CUB-200-2011 (SDD's KD baseline, its SDD_KD distiller with --M [1]; 224x224 inputs, cub_* models): 0.1*CE + 0.9*KD on the global logits, T=4, gradient clip 40.

Usage: python -m kd_jax.main --config cub_kd.py:resnet32x4-MobileNetV2 --workdir DIR
The argument after ':' names the pair (teacher-student); `python -m kd_jax.main --help` lists the config
files, and an unknown pair (teacher-student) lists the known ones. The printed config holds every value used.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("kd", data.CUB, arg, default_pair="resnet32x4-MobileNetV2")
