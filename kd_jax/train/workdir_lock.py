"""One run per workdir: a live run holds <workdir>/kd_jax.lock.

    with workdir_lock.hold(workdir):
        ...   # a second run on the same workdir raises WorkdirInUse naming this one

The lock is an flock(2) on the file, which records the holder (host, pid, start time). The
kernel releases an flock when its process ends, however it ends (SIGKILL, out of memory), so
a lock file left by a dead process is stale: the next run takes it over and says whose it
was. On release the file is removed. Two runs of the same command on one workdir would
otherwise both resume from the same checkpoint, write the same steps and crash in orbax's
save (or, started a little apart, silently train the same steps twice).

Several processes (multi-host): process 0 takes the lock and every process learns the
outcome (an all-gather), so all of them refuse together. The guarantee needs a filesystem
whose locks every host sees: a local disk (one host), or NFS and Filestore, where Linux
takes flock as a whole-file lock held by the server; object stores are refused
(kd_jax.train.workdir_storage).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator, Optional

import jax
import numpy as np

from kd_jax.train import workdir_storage

LOCK_FILE = "kd_jax.lock"


class WorkdirInUse(RuntimeError):
    """Another live run holds the workdir."""


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on host {holder.get('host')!r} (started "
            f"{holder.get('started')})")


def _read(fd: int) -> Optional[dict]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def _acquire(path: str) -> int:
    """An fd of `path` holding its flock; raises WorkdirInUse if a live process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise WorkdirInUse(
                f"--workdir {os.path.dirname(path)} is in use by a run of "
                f"{_describe(holder)}: one run per workdir. Wait for it to end (or stop it), "
                "or use another --workdir") from None
        try:   # the holder may have removed the file between our open and flock: retry
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds the workdir's lock for the block (creating workdir; removed again on exit if it
    was created here and is left empty). An object-store workdir raises UnsupportedWorkdir
    first (kd_jax.train.workdir_storage: its flock would not be seen by other hosts)."""
    workdir_storage.check(workdir)
    workdir = os.path.abspath(workdir)
    created = not os.path.exists(workdir)
    fd, refused = None, None
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, LOCK_FILE)
        try:
            fd = _acquire(path)
        except WorkdirInUse as e:
            refused = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        ok = np.asarray(multihost_utils.process_allgather(np.int32(refused is None)))
        if refused is None and not ok.all():
            if fd is not None:
                os.close(fd)
            raise WorkdirInUse(f"--workdir {workdir} is in use by another run (see process 0)")
    if refused is not None:
        raise refused
    try:
        if fd is not None:
            stale = _read(fd)
            if stale:
                print(f"kd_jax: note: took over the lock of {workdir} left by "
                      f"{_describe(stale)}, which is no longer running", file=sys.stderr,
                      flush=True)
            record = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(workdir, LOCK_FILE))   # while still holding it
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(workdir)   # only if empty: a run that wrote nothing
