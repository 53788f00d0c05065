"""DKD on ImageNet: T=1, warmup 1, beta 0.5 (R34->R18) / 2.0 (R50->MobileNetV1).

Usage: python -m kd_jax.main --config configs/imagenet_dkd.py:ResNet34-ResNet18 --workdir DIR
The argument after ':' names the pair (teacher-student: ResNet34-ResNet18 or ResNet50-MobileNetV1); see kd_jax/train/recipes.py for all of them.
"""

from kd_jax.train import recipes


def get_config(arg=None):
    return recipes.build_config("dkd", "imagenet2012", arg, default_pair="ResNet34-ResNet18")
