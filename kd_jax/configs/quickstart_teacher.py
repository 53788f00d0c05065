"""The quickstart's teacher: resnet14 trained alone (CE) on the full Fashion-MNIST train set.

Its weights ship in kd_jax/assets/quickstart_teacher (RECORD.json: this command, the sha256
of the files, the accuracy); the quickstart retrains it with this config when they are missing:

    python -m kd_jax.main --config quickstart_teacher.py --workdir runs/quickstart_teacher
    python -m kd_jax.train.pipeline --ship runs/quickstart_teacher   # copy it into the package
"""

from kd_jax.recipes import quickstart


def get_config(arg=None):
    del arg
    return quickstart.teacher_config()
