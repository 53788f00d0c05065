"""Distillation on your own data: TEACHER-STUDENT,METHOD (one student) or
TEACHER-STUDENT,METHOD,METHOD,... (several students in lockstep, one teacher forward).

Usage:
    python -m kd_jax.main --config custom_distill.py:resnet32x4-resnet8x4,dkd \
        --workdir runs/dkd --config.dataset.data_dir=DIR \
        --config.teacher.checkpoint=runs/teacher/final_model
METHOD is a method key (ce, kd, dkd, nkd, clkd, sd_kd, sd_dkd, sd_nkd, msdcrd), `key@k` a second
student of that method initialised with seed + k; --config.seeds=0,1,2 repeats the run per seed
and prints mean ± std. Hyperparameters: CIFAR-100's recipe (config.recipe_from says which row).
See docs/own_data.md and kd_jax.recipes.own_data.
"""

from kd_jax.recipes import own_data


def get_config(arg=None):
    return own_data.distill_config(arg)
