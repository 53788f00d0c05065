"""The fault-injection harness's run (tests/faults.py): tiny_cnn <- random tiny_cnn_wide on
synthetic data, 2 epochs of 3 steps, evaluated and checkpointed every epoch, exported, with
TensorBoard events: every write a run makes, in a few seconds.

    python -m kd_jax.main --config tests/faults_config.py --workdir DIR
"""

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide (in any process)
from kd_jax import data, recipes


def get_config():
    c = recipes.build_config("kd", data.CIFAR100, None, default_pair="resnet32x4-resnet8x4")
    c.dataset.update(name="synthetic", num_train=24, num_test=8, num_classes=10, image_size=16)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.num_epochs = 8, 2
    c.optimizer.milestones = (1,)
    c.log_every_steps, c.eval_every_epochs, c.checkpoint_every_epochs = 2, 1, 1
    c.tensorboard, c.progress_bar, c.export_model = True, False, True
    return c
