"""The quickstart's teacher: resnet14 trained alone (CE) on the full Fashion-MNIST train set.

Its trained weights ship in kd_jax/assets/quickstart_teacher (with the command, sha256 and
accuracy in RECORD.json); the quickstart retrains it with this config when they are missing:

    python -m kd_jax.main --config configs/quickstart_teacher.py --workdir runs/quickstart_teacher
"""

from kd_jax import data, recipes


def get_config(arg=None):
    del arg
    c = recipes.base_config(data.FASHION_MNIST)
    c.recipe = "quickstart_teacher"
    c.student.arch = "resnet14"
    c.method = recipes.method_block("ce", {})
    c.num_epochs = 3
    c.optimizer.lr = 0.05
    c.optimizer.schedule = "cosine"
    c.optimizer.milestones = ()
    c.eval_batch_size = 500
    c.tensorboard = False
    return c
