"""Quickstart: a teacher, then students with KD, DKD, SD-KD, SD-DKD and one trained alone,
all on Fashion-MNIST; prints a table of test top-1 and plots accuracy per epoch.

    python -m kd_jax.main --config configs/quickstart.py --workdir DIR
    python -m kd_jax.main --config configs/quickstart.py --workdir DIR --config.num_epochs=30 \
        --config.dataset.limit_train=0      # the full train set, longer

Sized for a 2-core CPU in under 10 minutes: the first 5000 training images, 3 epochs, the
first 2000 test images, resnet14 teacher, resnet8 students (set dataset.limit_train=0 and
dataset.limit_test=0 for the full sets). Each run has its own directory DIR/<run>, so running again
resumes or skips finished runs. DKD-style warmups use 1 epoch (the recipe's 20 assume 240).
"""

import ml_collections

from kd_jax import recipes


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.pipeline = "quickstart"
    c.dataset = recipes.base_config("fashion_mnist").dataset
    c.dataset.limit_train = 5000    # 0: all 60k training images.
    c.dataset.limit_test = 2000     # 0: the full 10k test set.
    c.teacher_arch = "resnet14"
    c.student_arch = "resnet8"
    # Runs, in order; "teacher" (CE) always runs first. Names: ce (student alone), kd, dkd,
    # nkd, clkd, sd_kd, sd_dkd, sd_nkd.
    c.students = "ce,kd,dkd,sd_kd,sd_dkd"
    c.num_epochs = 3
    c.batch_size = 64
    c.eval_batch_size = 500
    c.lr = 0.05
    c.schedule = "cosine"
    c.warmup_epochs = 1
    c.seed = 0
    c.progress_bar = True
    c.tensorboard = False
    c.log_every_steps = 50
    return c
