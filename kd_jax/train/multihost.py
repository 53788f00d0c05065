"""Multi-host runs: one process per host (TPU pod slice) or per accelerator (SLURM GPUs).

`config.multihost=True` makes `python -m kd_jax.main` call `initialize()` before anything
touches a device. Every process runs the same command; each reads its own slice of every
global batch (kd_jax.data), all of them take part in the jitted step and in each checkpoint
save and restore (orbax needs every process), and only process 0 writes logs, summaries and
the exported model.

Where the processes come from:
- TPU pod slices, SLURM, Open MPI, GKE: jax.distributed.initialize() detects the
  coordinator, the process count and this process's id from the environment.
- Anywhere else (e.g. several processes on one machine): set JAX_COORDINATOR_ADDRESS=host:port
  (read by JAX itself), JAX_NUM_PROCESSES and JAX_PROCESS_ID (read here); JAX_LOCAL_DEVICE_IDS
  optionally restricts the process to some local accelerators.
On CPU, cross-process collectives go through gloo (TCP), so the multi-host path can be
tested on one machine with CPU processes.
"""

from __future__ import annotations

import os

import jax

NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def _int_env(name: str):
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected an integer") from None


def initialize() -> None:
    """jax.distributed.initialize(), with the process count and id from the environment when
    they are set there. Call once per process, before the first computation; a second call
    does nothing."""
    if jax.distributed.is_initialized():
        return
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    num_processes, process_id = _int_env(NUM_PROCESSES_ENV), _int_env(PROCESS_ID_ENV)
    if num_processes is not None:
        kwargs["num_processes"] = num_processes
    if process_id is not None:
        kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)
