"""Keeps a run's latest checkpoint on slow or quota-limited storage (Google Drive) while the
run itself writes to fast local disk.

    with Mirror(workdir, "/content/drive/MyDrive/kd_jax/runs/x", every_s=600):
        trainer.train_and_evaluate(config, workdir)

A background thread, every `every_s` seconds and once more at exit, packs the run directory
with only its newest finished checkpoint (orbax renames a checkpoint to its step number when
it is complete) into one tar file on the mirror, `run.tar`, overwritten in place: files are
never deleted there, so nothing lands in Drive's trash (which counts against the quota).
The run's small files (config.json, metrics.jsonl, summary.json, tb/) and its final model
are in the tar too. `restore(mirror, workdir)` unpacks it into an empty workdir after a
disconnect; the trainer then resumes from that checkpoint.

At most `tar size + a copy while writing` bytes on the mirror: `run.tar` is written as
`run.tar.part` (overwritten in place as well) and then copied over `run.tar`.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import threading
import time

TAR = "run.tar"


def newest_checkpoint(workdir: str) -> int | None:
    """The largest finished checkpoint step in <workdir>/checkpoints, or None."""
    directory = os.path.join(workdir, "checkpoints")
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()] \
        if os.path.isdir(directory) else []
    return max(steps, default=None)


def pack(workdir: str, mirror: str) -> int | None:
    """Writes <mirror>/run.tar: workdir with only its newest checkpoint; returns that step."""
    step = newest_checkpoint(workdir)
    keep = os.path.join("checkpoints", str(step)) if step is not None else None
    os.makedirs(mirror, exist_ok=True)

    def only_newest(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = info.name.split("/")
        if len(parts) >= 2 and parts[0] == "checkpoints":
            if keep is None or "/".join(parts[:2]) != keep:
                return None
        return info

    part = os.path.join(mirror, TAR + ".part")
    with open(part, "wb") as fh:   # in place: no delete, no trash
        with tarfile.open(fileobj=fh, mode="w") as tar:
            for entry in sorted(os.listdir(workdir)):
                tar.add(os.path.join(workdir, entry), arcname=entry, filter=only_newest)
    with open(part, "rb") as src, open(os.path.join(mirror, TAR), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    with open(os.path.join(mirror, "run.json"), "w") as fh:
        json.dump({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
    return step


def restore(mirror: str, workdir: str) -> int | None:
    """Unpacks <mirror>/run.tar into workdir if workdir holds no checkpoint yet; returns the
    restored step (None: nothing to restore, or workdir already has its own checkpoints)."""
    path = os.path.join(mirror, TAR)
    if not os.path.isfile(path) or newest_checkpoint(workdir) is not None:
        return None
    os.makedirs(workdir, exist_ok=True)
    with tarfile.open(path) as tar:
        tar.extractall(workdir, filter="data")
    return newest_checkpoint(workdir)


class Mirror:
    """Context manager: packs the run every `every_s` seconds (when a newer checkpoint exists)
    and at exit (always: the final files)."""

    def __init__(self, workdir: str, mirror: str, every_s: float = 600.0):
        self.workdir, self.mirror, self.every_s = workdir, mirror, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.synced_step: int | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            step = newest_checkpoint(self.workdir)
            if step is not None and step != self.synced_step:
                try:
                    self.synced_step = pack(self.workdir, self.mirror)
                except OSError as error:   # a full or unmounted Drive must not stop training
                    print(f"mirror: copying the checkpoint to {self.mirror} failed ({error})",
                          flush=True)

    def __enter__(self) -> "Mirror":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if os.path.isdir(self.workdir):
            self.synced_step = pack(self.workdir, self.mirror)
