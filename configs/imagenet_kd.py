"""KD on ImageNet: 0.5*CE + 0.5*KD, T=1.

Usage: python -m kd_jax.main --config configs/imagenet_kd.py:ResNet34-ResNet18 --workdir DIR
The argument after ':' names the pair (teacher-student: ResNet34-ResNet18 or ResNet50-MobileNetV1); see kd_jax/train/recipes.py for all of them.
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("kd", "imagenet2012", arg, default_pair="ResNet34-ResNet18")
