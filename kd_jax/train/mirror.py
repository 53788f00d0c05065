"""Keeps a run's latest checkpoint on slow or quota-limited storage (Google Drive) while the
run itself writes to fast local disk.

    with Mirror(workdir, "/content/drive/MyDrive/kd_jax/runs/x", every_s=600):
        trainer.train_and_evaluate(config, workdir)

A background thread, every `every_s` seconds and once more at exit, packs the run directory
with only its newest finished checkpoint (orbax renames a checkpoint to its step number when
it is complete) into one tar file on the mirror. The run's small files (config.json,
metrics.jsonl, summary.json, tb/) and its final model are in the tar too. `restore(mirror,
workdir)` unpacks it into an empty workdir after a disconnect; the trainer then resumes from
that checkpoint.

A disconnect can come at any byte, so a tar is never written under the name restore reads
first (`pack`): it is written as `run.tar.part`, ends with a marker member (MARKER: the
step), and is then renamed to `run.tar`, the previous `run.tar` becoming `run.prev.tar`.
Restore takes the newest complete copy among them (a copy without its marker was cut short)
and says so when it falls back. Nothing is ever deleted or overwritten by a rename on the
mirror, so nothing lands in Drive's trash (which counts against the quota): the four names
rotate (run.prev.tar -> run.tar.old -> run.tar.part, the next scratch file, overwritten in
place). At most three tars on the mirror: the newest, the previous and the scratch.
"""

from __future__ import annotations

import io
import json
import os
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


PREVIOUS, PART, OLD = "run.prev.tar", TAR + ".part", TAR + ".old"
MARKER = "kd_jax_mirror.json"   # the last member of a complete tar: {"step": ...}


def pack(workdir: str, mirror: str) -> int | None:
    """Writes <mirror>/run.tar: workdir with only its newest checkpoint; returns that step.
    Written as run.tar.part, then renamed (module docstring): a cut leaves run.tar whole."""
    step = newest_checkpoint(workdir)
    keep = os.path.join("checkpoints", str(step)) if step is not None else None
    os.makedirs(mirror, exist_ok=True)

    def only_newest(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = info.name.split("/")
        if len(parts) >= 2 and parts[0] == "checkpoints":
            if keep is None or "/".join(parts[:2]) != keep:
                return None
        return info

    marker = json.dumps({"step": step}).encode()
    if os.path.exists(os.path.join(mirror, OLD)) and not os.path.exists(
            os.path.join(mirror, PART)):   # a rotation cut before its last rename
        os.rename(os.path.join(mirror, OLD), os.path.join(mirror, PART))
    with open(os.path.join(mirror, PART), "wb") as fh:   # in place: no delete, no trash
        with tarfile.open(fileobj=fh, mode="w") as tar:
            for entry in sorted(os.listdir(workdir)):
                tar.add(os.path.join(workdir, entry), arcname=entry, filter=only_newest)
            info = tarfile.TarInfo(MARKER)
            info.size, info.mtime = len(marker), int(time.time())
            tar.addfile(info, io.BytesIO(marker))
        fh.flush()
        os.fsync(fh.fileno())
    _rotate(mirror)
    with open(os.path.join(mirror, "run.json"), "w") as fh:
        json.dump({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
    return step


def _rotate(mirror: str) -> None:
    """run.tar.part (just written) -> run.tar -> run.prev.tar -> run.tar.part (the next
    scratch), through run.tar.old: every rename to a free name, so none replaces a file."""
    path = lambda name: os.path.join(mirror, name)   # noqa: E731
    if os.path.exists(path(PREVIOUS)) and not os.path.exists(path(OLD)):
        os.rename(path(PREVIOUS), path(OLD))
    if os.path.exists(path(TAR)) and not os.path.exists(path(PREVIOUS)):
        os.rename(path(TAR), path(PREVIOUS))
    if not os.path.exists(path(TAR)):
        os.rename(path(PART), path(TAR))
    if os.path.exists(path(OLD)) and not os.path.exists(path(PART)):
        os.rename(path(OLD), path(PART))


def _complete_step(path: str) -> tuple[bool, int | None]:
    """(complete, step) of a mirror tar: complete when it reads to its marker."""
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            if not members or members[-1].name != MARKER:
                return False, None
            return True, json.loads(tar.extractfile(members[-1]).read())["step"]
    except (OSError, tarfile.TarError, ValueError, KeyError):
        return False, None


def restore(mirror: str, workdir: str) -> int | None:
    """Unpacks the newest complete tar of <mirror> (run.tar, else the previous copy) into
    workdir if workdir holds no checkpoint yet; returns the restored step (None: nothing to
    restore, or workdir already has its own checkpoints)."""
    if newest_checkpoint(workdir) is not None:
        return None
    found = []
    for name in (TAR, PREVIOUS, OLD, PART):   # a cut rotation leaves copies under any name
        path = os.path.join(mirror, name)
        if os.path.isfile(path):
            complete, step = _complete_step(path)
            found.append((name, path, complete, step))
    complete = [f for f in found if f[2]]
    if not complete:
        if found:
            print(f"mirror: no complete copy in {mirror} ({', '.join(f[0] for f in found)} "
                  "cut short); starting without it", flush=True)
        return None
    name, path, _, step = max(complete, key=lambda f: -1 if f[3] is None else f[3])
    if name != TAR:
        print(f"mirror: {TAR} in {mirror} is missing or cut short; restoring {name} "
              f"(step {step})", flush=True)
    os.makedirs(workdir, exist_ok=True)
    with tarfile.open(path) as tar:
        tar.extractall(workdir, members=[m for m in tar.getmembers() if m.name != MARKER],
                       filter="data")
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
