"""Where a workdir can live: a POSIX filesystem, not an object store.

A run finalises every checkpoint by renaming a directory (orbax), moves each export into
place by renaming (kd_jax.train.exports), holds the workdir by flock(2)
(kd_jax.train.workdir_lock) and appends to its logs. An object store has no atomic rename
(on a flat bucket gcsfuse renames a directory only when mounted with --rename-dir-limit, and
then copies and deletes object by object: a crash can leave half a checkpoint under its
final name), no lock that other hosts see and no append. So a workdir given as a URL (gs://,
s3://, ...; before, os.path.abspath made it a local directory named "gs:") or lying on an
object-store FUSE mount (gcsfuse, s3fs, ...) is refused with one line before anything is
written. What works: a local disk, or a POSIX shared filesystem (NFS, Filestore, Lustre)
mounted at the same path on every host; copy a finished workdir to a bucket afterwards
(gcloud storage cp -r).

Importing this module does not import JAX: the command line checks --workdir first.
"""

from __future__ import annotations

import os
import re
from typing import Optional

MOUNTS_FILE = "/proc/mounts"
# FUSE filesystem types of object stores, as /proc/mounts names them.
OBJECT_STORE_FILESYSTEMS = {
    "fuse.gcsfuse": "gcsfuse (Cloud Storage)", "fuse.s3fs": "s3fs (S3)",
    "fuse.goofys": "goofys (S3)", "fuse.mountpoint-s3": "mountpoint-s3 (S3)",
    "fuse.blobfuse": "blobfuse (Azure Blob)", "fuse.blobfuse2": "blobfuse2 (Azure Blob)",
    "fuse.rclone": "rclone"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WHY = ("a run renames directories (checkpoints, exports), holds an flock and appends to its "
        "logs, which object stores do not provide")
_FIX = ("use a local disk, or a shared POSIX filesystem (NFS, Filestore) mounted at the same "
        "path on every host, and copy the finished workdir to the bucket")


class UnsupportedWorkdir(ValueError):
    """The workdir is on storage a run cannot use (an object store)."""


def _unescape(field: str) -> str:
    """A /proc/mounts field: spaces, tabs, newlines and backslashes are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_of(path: str, mounts_file: str = MOUNTS_FILE) -> Optional[tuple[str, str]]:
    """(mount point, filesystem type) of the mount holding `path` (which need not exist yet:
    its nearest existing parent decides), or None where the mount table cannot be read."""
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as fh:
            mounts = [line.split() for line in fh]
    except OSError:
        return None
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    path = os.path.realpath(path)
    best = None
    for fields in mounts:
        if len(fields) < 3:
            continue
        point, kind = _unescape(fields[1]), fields[2]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, kind)   # the last of equal mount points is the visible one
    return best


def problem(workdir: str, mounts_file: str = MOUNTS_FILE) -> Optional[str]:
    """Why `workdir` cannot hold a run (one line, naming the fix), or None."""
    if _URL.match(workdir):
        return f"--workdir {workdir}: object-store URLs are not supported ({_WHY}); {_FIX}"
    found = filesystem_of(workdir, mounts_file)
    if found and found[1] in OBJECT_STORE_FILESYSTEMS:
        point, kind = found
        return (f"--workdir {workdir} is on an object-store mount ({kind} at {point}: "
                f"{OBJECT_STORE_FILESYSTEMS[kind]}), which cannot hold a run ({_WHY}); {_FIX}")
    return None


def check(workdir: str) -> None:
    """Raises UnsupportedWorkdir (one line) where `workdir` cannot hold a run."""
    why = problem(workdir)
    if why:
        raise UnsupportedWorkdir(why)
