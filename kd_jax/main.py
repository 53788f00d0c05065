"""Command line: python -m kd_jax.main --config configs/cifar_sdd.py[:pair] --workdir DIR

Any config key can be overridden, e.g. --config.num_epochs=10 --config.teacher.checkpoint=t.pth;
unknown keys are rejected (the config is locked). Running again with the same --workdir
resumes from its latest checkpoint.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file, optionally with ':argument' (the pair).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and summary.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> dict:
    """Trains one config, or runs a pipeline config (config.pipeline set, e.g. quickstart)."""
    if config.get("multihost", False):
        # Multi-host (TPU pods, SLURM: detected; elsewhere JAX_COORDINATOR_ADDRESS,
        # JAX_NUM_PROCESSES, JAX_PROCESS_ID): see kd_jax.train.multihost.
        from kd_jax.train import multihost
        multihost.initialize()
    if config.get("pipeline"):
        from kd_jax.train import pipeline
        return pipeline.run_pipeline(config, workdir)
    from kd_jax.train import trainer
    return trainer.train_and_evaluate(config, workdir)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    from kd_jax.data.base import DataNotFoundError
    from kd_jax.train.config_validation import ConfigError
    from kd_jax.train.trainer import NonFiniteLossError

    try:
        run(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, DataNotFoundError, NonFiniteLossError) as e:
        # Expected failures: one clear message, no traceback (the message names the fix).
        print(f"kd_jax: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
