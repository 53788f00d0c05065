"""Command line: python -m kd_jax.main --config cifar_sdd.py[:pair] --workdir DIR

Any config key can be overridden, e.g. --config.num_epochs=10 --config.teacher.checkpoint=t.pth;
unknown keys are rejected (the config is locked). Running again with the same --workdir
resumes from its latest checkpoint. A mistake (unknown key or pair, bad value, missing flag,
file or dataset) ends in one `kd_jax: error: ...` line on stderr and exit code 2; `--help`
lists the config files. Parsing lives in kd_jax.cli.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator

from absl import flags, logging

from kd_jax import cli   # importing kd_jax first sets the C++ logging environment
from kd_jax import errors
from kd_jax.cache import cache_dir

# Compiled steps persist across runs (a resumed run, the next seed, a rerun): no recompile.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir("jax_cache"))


# JAX, TensorFlow and the trainer are imported inside the functions: `--help` and every
# command-line mistake then answer in about a second, without loading them.


def run(config, workdir: str) -> dict:
    """Trains one config (over config.seeds if set), or runs a pipeline config
    (config.pipeline set, e.g. quickstart)."""
    if config.get("multihost", False):
        # Multi-host (TPU pods, SLURM: detected; elsewhere JAX_COORDINATOR_ADDRESS,
        # JAX_NUM_PROCESSES, JAX_PROCESS_ID): see kd_jax.train.multihost.
        from kd_jax.train import multihost
        multihost.initialize()
    if config.get("pipeline"):
        from kd_jax.train import pipeline
        return pipeline.run_pipeline(config, workdir)
    if config.get("seeds"):
        from kd_jax.train import seeds
        return seeds.run_seeds(config, workdir)
    from kd_jax.train import trainer
    return trainer.train_and_evaluate(config, workdir)


def main(argv=None) -> None:
    try:
        _main(argv)
    except KeyboardInterrupt:   # Ctrl-C while the config is read or the trainer imported
        errors.exit_with_error(_INTERRUPTED, code=130)


def _main(argv=None) -> None:
    try:
        args = cli.parse(sys.argv if argv is None else argv)
    except cli.UsageError as e:
        errors.exit_with_error(e)
    quiet_logging()
    with exits_on_failure(lambda: args.config):
        with cli.workdir_removed_on_failure(args.workdir):
            run(args.config, args.workdir)


def quiet_logging() -> None:
    logging.use_absl_handler()   # what app.run would do: absl's log format on stderr
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO


@contextlib.contextmanager
def exits_on_failure(config_of: Callable[[], Any]) -> Iterator[None]:
    """How a training command ends on a failure: an expected one (bad value, missing file,
    workdir in use, ...) in one `kd_jax: error:` line and exit 2; a stop (SIGTERM, Ctrl-C) as
    the signal would (130, 143); out of memory in one line naming the batch sizes of the
    config being trained (`config_of()`)."""
    from kd_jax.data.base import DataFileError, DataNotFoundError
    from kd_jax.errors import StorageError
    from kd_jax.train.checkpoint import DamagedCheckpointError
    from kd_jax.train.config_validation import ConfigError
    from kd_jax.train.finite import NonFiniteError
    from kd_jax.train.summary import BrokenJSONError
    from kd_jax.train.trainer import RunStopped
    from kd_jax.train.workdir_lock import WorkdirInUse
    from kd_jax.train.workdir_storage import UnsupportedWorkdir

    try:
        yield
    except (cli.UsageError, ConfigError, DataNotFoundError, DataFileError, NonFiniteError,
            StorageError, DamagedCheckpointError, WorkdirInUse, UnsupportedWorkdir,
            BrokenJSONError) as e:
        # Expected failures: one clear message, no traceback (the message names the fix);
        # one caused by the storage (a download to a full disk) says so.
        errors.exit_with_error(errors.message(e, then=_RESUMES) or e)
    except RunStopped as e:
        # SIGTERM or Ctrl-C: the step is saved; exit as the signal would (130, 143).
        errors.exit_with_error(f"stopped by {e}", code=128 + e.signum)
    except Exception as e:   # noqa: BLE001  re-raised unless storage, out of memory, Ctrl-C
        # A full disk, by the errno in the chain: before out of memory (the same status).
        storage = errors.message(e, then=_RESUMES)
        if storage is not None:
            errors.exit_with_error(storage)
        if _out_of_memory(e):
            errors.exit_with_error(_oom_message(config_of(), e), code=1)
        if not _caused_by_ctrl_c(e):
            raise
        errors.exit_with_error(_INTERRUPTED, code=130)
    except KeyboardInterrupt:
        # A second Ctrl-C, or one outside the training loop (setup, compilation, evaluation).
        errors.exit_with_error(_INTERRUPTED, code=130)


_RESUMES = "run the same command: it goes on from the last checkpoint"
_INTERRUPTED = ("interrupted; the same command (same --workdir) resumes from the last "
                "checkpoint, if one was saved")


def _out_of_memory(error: BaseException) -> bool:
    """A host MemoryError, or XLA's own runtime error with the status RESOURCE_EXHAUSTED
    (device memory), anywhere in the chain. By the error's type, not its text alone:
    tensorstore reports a full disk with the same status (errors.storage_cause tells it)."""
    import jax

    return any(isinstance(e, MemoryError) or (isinstance(e, jax.errors.JaxRuntimeError)
                                              and "RESOURCE_EXHAUSTED" in str(e)[:2000])
               for e in errors.chain(error, past_from_none=True))


def _oom_message(config, error: BaseException) -> str:
    where = "host" if isinstance(error, MemoryError) else "device"
    n = len(config.get("students") or {})
    students = f", {n} students in lockstep" if n > 1 else ""
    eval_batch = config.get("eval_batch_size") or _auto_eval_batch_size(config)
    detail = " ".join(str(error).split("\n")[0].split())[:160]
    return (f"out of {where} memory with batch_size={config.batch_size} (global, "
            f"eval_batch_size={eval_batch}{students}) ({detail}): "
            "lower --config.batch_size (or --config.eval_batch_size for evaluation), or use "
            "--config.compute_dtype=bfloat16 or more devices; the same command (same "
            "--workdir) resumes from the last checkpoint")


def _auto_eval_batch_size(config) -> int:
    """eval_batch_size=0 as the trainer resolves it on this platform (before the cap by the
    test set, which the config does not know)."""
    import jax

    from kd_jax.train import platform_defaults
    size = config.dataset.get("image_size") or 0
    return platform_defaults.eval_batch_size(0, config.batch_size, (size, size, 3),
                                             jax.devices()[0].platform, 1 << 62,
                                             jax.device_count())


def _caused_by_ctrl_c(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in the error's chain: Python turns one raised inside
    some hooks (an import's class creation, __set_name__) into a RuntimeError."""
    return any(isinstance(e, KeyboardInterrupt)
               for e in errors.chain(error, past_from_none=True))


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:
        errors.exit_now(e.code)
