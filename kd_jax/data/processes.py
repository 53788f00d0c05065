"""Data preparation in a multi-process run: one process downloads or prepares, the others wait.

In a run of several processes (jax.distributed: a TPU pod slice, SLURM, several CPU
processes) every process builds the dataset at the same point. Left alone, each would
download the CIFAR archive or run tfds's preparation into the same directory at once.
`leader_first(what, load)` orders them instead:

1. process 0 runs `load` (find the data; download or prepare it if absent; read it);
2. then the lowest process of every other host runs it: where the directory is shared it
   finds what process 0 left there; where each host has its own disk, it prepares that
   host's copy;
3. then every remaining process, after its host's first one.

A process waits on a key of jax.distributed's key-value store, which its predecessor sets
when done, to "ok" or to the error that stopped it: the waiting processes then raise that
error (one line, naming the process) instead of waiting forever at the next collective.
Without jax.distributed (one process, or simulated hosts in one process) `load` just runs.
"""

from __future__ import annotations

import itertools
import socket
import sys
from typing import Any, Callable, TypeVar

from kd_jax.data.base import DataFileError, DataNotFoundError, MissingExtraError

T = TypeVar("T")

# How long a process waits for its predecessor: preparing ImageNet takes hours.
WAIT_S = 24 * 3600
# How long a process waits for the others to say their hostnames (they all reach the dataset
# at about the same time: jax.distributed.initialize is itself a barrier).
HOSTNAME_WAIT_S = 600
# After this long without the predecessor's key, a waiting process says what it waits for.
QUIET_WAIT_S = 10

_OK = "ok"
_ERRORS = {cls.__name__: cls for cls in (DataNotFoundError, DataFileError, MissingExtraError)}
_calls = itertools.count()   # every process builds its datasets in the same order


def distributed_client() -> Any:
    """jax.distributed's key-value client, or None where jax.distributed is not initialised.

    A private attribute of JAX (orbax's multihost utilities read the same one): JAX has no
    public key-value API.
    """
    from jax._src import distributed
    return distributed.global_state.client


def leader_first(what: str, load: Callable[[], T], *, process_index: int, process_count: int,
                 client: Any = None) -> T:
    """Runs `load()` on this process in the order of the module docstring; returns its result.

    what: names the data in messages (e.g. "cifar100"). client: a key-value client (tests
    pass a fake one); None: jax.distributed's when process_count > 1.
    """
    if client is None and process_count > 1:
        client = distributed_client()
    if client is None:
        return load()
    prefix = f"kd_jax/data/{next(_calls)}"
    hosts = _hostnames(client, prefix, process_index, process_count)
    host_first = hosts.index(hosts[process_index])
    done = f"{prefix}/done/{{}}".format
    if host_first != process_index:   # waits for its host's first process; nobody waits for it
        _wait(client, done(host_first), what, process_index, host_first)
        return load()
    try:
        if process_index > 0:         # a host's first process waits for process 0
            _wait(client, done(0), what, process_index, 0)
        result = load()
    except BaseException as error:
        message = " ".join(str(error).split())
        client.key_value_set(done(process_index), f"{type(error).__name__}\n{message}")
        raise
    client.key_value_set(done(process_index), _OK)
    return result


def local_process_count(*, process_index: int, process_count: int, client: Any = None) -> int:
    """How many processes of the run share this host (1 without jax.distributed). Every
    process must call it at the same point (a barrier)."""
    if client is None and process_count > 1:
        client = distributed_client()
    if client is None:
        return 1
    hosts = _hostnames(client, f"kd_jax/data/{next(_calls)}", process_index, process_count)
    return hosts.count(hosts[process_index])


def _hostnames(client, prefix: str, process_index: int, process_count: int) -> list[str]:
    """Every process's hostname, by process index (each sets its own; a barrier; one read)."""
    client.key_value_set(f"{prefix}/host/{process_index}", socket.gethostname())
    client.wait_at_barrier(f"{prefix}/hosts", HOSTNAME_WAIT_S * 1000)
    hosts = dict(client.key_value_dir_get(f"{prefix}/host/"))
    return [hosts[f"{prefix}/host/{i}"] for i in range(process_count)]


def _wait(client, key: str, what: str, me: int, other: int) -> None:
    """Blocks until process `other` has set `key`; raises its error if it failed."""
    try:
        value = client.blocking_key_value_get(key, QUIET_WAIT_S * 1000)
    except Exception:   # noqa: BLE001  the client's timeout error: not there yet
        print(f"kd_jax: process {me} waits for process {other} to download or prepare {what}",
              file=sys.stderr, flush=True)
        try:
            value = client.blocking_key_value_get(key, WAIT_S * 1000)
        except Exception as error:   # noqa: BLE001  the client's timeout or a lost coordinator
            raise DataNotFoundError(
                f"process {me} waited {WAIT_S // 3600} h for process {other} to download or "
                f"prepare {what}, in vain ({' '.join(str(error).split())[:200]})") from error
    if value != _OK:
        kind, _, message = value.partition("\n")
        raise _ERRORS.get(kind, DataNotFoundError)(
            f"{message} (process {other}, which prepares {what} for process {me}, failed)")
