"""Downloads one file with a progress bar, verifies its published md5, and only then puts it
in place (atomically: a killed download leaves a part file, never a truncated archive).

The two writes are `write_part` (the bytes, into a part file named for this host and
process, so that processes downloading the same file at once never share one) and
`put_in_place` (the rename); the part files of killed processes are removed first
(`remove_stale_parts`). A file already at the target with the published md5 is used as
it is. Which process downloads in a multi-process run: kd_jax.data.processes.

No tensorflow and no tfds: urllib and hashlib only.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import urllib.request

from kd_jax.data.base import DataNotFoundError

CHUNK = 1 << 20


def md5sum(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def part_path(path: str) -> str:
    """This process's part file for `path`: <path>.part-<host>-<pid>."""
    return f"{path}.part-{socket.gethostname()}-{os.getpid()}"


def remove_stale_parts(path: str) -> None:
    """Removes the part files of `path` left by processes of this host that are gone (killed
    while writing: an archive or a cache can be gigabytes). Other hosts' part files, and
    those of live processes, are left alone."""
    prefix = f"{os.path.basename(path)}.part-{socket.gethostname()}-"
    directory = os.path.dirname(os.path.abspath(path))
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not _running(int(pid)):
            _remove(os.path.join(directory, name))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def download(url: str, path: str, md5: str, *, timeout: float = 30.0) -> str:
    """Fetches `url` into `path` (its folder created) and checks its md5; returns `path`.

    A file already at `path` with this md5 is kept and nothing is fetched. Progress: a tqdm
    bar on a terminal or notebook, one line at start and end otherwise. Raises
    DataNotFoundError (network error, or an md5 that differs from the published one: the bad
    bytes are deleted) with the url and the target path.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.isfile(path) and md5sum(path) == md5:
        return path
    remove_stale_parts(path)
    part = part_path(path)
    try:
        write_part(url, part, timeout=timeout, label=path)
    except OSError as error:   # URLError, HTTPError, timeouts and disk errors are OSErrors
        _remove(part)
        raise DataNotFoundError(f"downloading {url} to {path} failed ({type(error).__name__}: "
                                f"{error})") from error
    except BaseException:
        _remove(part)
        raise
    got = md5sum(part)
    if got != md5:
        _remove(part)
        raise DataNotFoundError(f"{url}: md5 {got} differs from the published {md5} (a "
                                f"corrupted or changed download; nothing was kept)")
    put_in_place(part, path)
    print(f"downloaded {os.path.basename(path)} ({os.path.getsize(path) / 2**20:.1f} MiB, md5 "
          f"verified)", file=sys.stderr, flush=True)
    return path


def write_part(url: str, part: str, *, timeout: float, label: str) -> None:
    """Streams `url` into the file `part` (created or truncated), with a progress bar."""
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        print(f"downloading {url} -> {label}", file=sys.stderr, flush=True)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=os.path.basename(label), file=sys.stderr,
                  disable=not (sys.stderr.isatty() or "ipykernel" in sys.modules)) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))


def put_in_place(part: str, path: str) -> None:
    """Renames the verified `part` to `path` (atomic; replaces an identical file another
    process may have put there meanwhile)."""
    os.replace(part, path)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
