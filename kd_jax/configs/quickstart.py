"""Quickstart: a resnet14 teacher, then resnet8 students alone and with SD-KD and SD-DKD in
lockstep over 3 seeds on Fashion-MNIST; prints mean ± std and a computed verdict.

    python -m kd_jax.main --config quickstart.py --workdir DIR

Sized for a 2-core CPU: about 7 minutes (README.md states the last clean-clone run's time).
The shipped teacher (kd_jax/assets/quickstart_teacher, retrained if missing), students on
the first 4096 training images for 8 epochs, evaluated on the full 10k test set. See
kd_jax/train/pipeline.py.
"""

from kd_jax.recipes import quickstart


def get_config(arg=None):
    del arg
    return quickstart.config()
