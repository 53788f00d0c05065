"""A teacher on your own data: a model trained alone (CE), from scratch or fine-tuned.

Usage:
    python -m kd_jax.main --config custom_teacher.py:resnet32x4 --workdir runs/teacher \
        --config.dataset.data_dir=DIR
DIR is a torchvision ImageFolder tree (DIR/train/<class>/*.jpg with DIR/val/<class>/..., or
DIR/<class>/...); --config.dataset.name=npz or tfds:<name> reads other sources. The argument
after ':' names any registered model (--config.model_file=FILE registers your own);
--config.student.init_from=DIR starts from converted weights (ImageNet ones get a new head).
See docs/own_data.md and kd_jax.recipes.own_data.
"""

from kd_jax.recipes import own_data


def get_config(arg=None):
    return own_data.teacher_config(arg)
