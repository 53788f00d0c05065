"""Downloads one file with a progress bar, verifies its published md5, and only then puts it
in place (atomically: a killed download leaves a `.part` file, never a truncated archive).

No tensorflow and no tfds: urllib and hashlib only.
"""

from __future__ import annotations

import hashlib
import os
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


def download(url: str, path: str, md5: str, *, timeout: float = 30.0) -> str:
    """Fetches `url` into `path` (its folder created) and checks its md5; returns `path`.

    Progress: a tqdm bar on a terminal or notebook, one line at start and end otherwise.
    Raises DataNotFoundError (network error, or an md5 that differs from the published one:
    the bad bytes are deleted) with the url and the target path.
    """
    from tqdm.auto import tqdm

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = f"{path}.part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            print(f"downloading {url} -> {path}", file=sys.stderr, flush=True)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=os.path.basename(path), file=sys.stderr,
                      disable=not (sys.stderr.isatty() or "ipykernel" in sys.modules)) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
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
    os.replace(part, path)
    print(f"downloaded {os.path.basename(path)} ({os.path.getsize(path) / 2**20:.1f} MiB, md5 "
          f"verified)", file=sys.stderr, flush=True)
    return path


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
