"""HTTP(S) downloads into a cache: progress bar, resume of partial files, atomic completion.

    path = download(url, dest)   # dest appears only once complete; dest + ".part" meanwhile

A partial file (`dest.part`, left by an interrupted or killed download) is resumed with an
HTTP Range request; a server that ignores it (200 instead of 206) restarts the file. A
connection that drops mid-way is retried from where it stopped (`retries` times) before
giving up with DownloadError; the partial file is kept for the next command to resume.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from typing import Optional

from tqdm.auto import tqdm

from kd_jax.errors import storage_cause

CHUNK = 1 << 20
TIMEOUT_S = 30.0     # per socket operation: a stalled server fails instead of hanging
RETRIES = 3


class DownloadError(OSError):
    """The file could not be downloaded (no network, HTTP error, connection dropped)."""


def _content_total(resp, offset: int) -> Optional[int]:
    """Total size of the file from a 200 (Content-Length) or 206 (Content-Range) response."""
    if resp.status == 206:
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if m and m[3] != "*":
            return int(m[3])
        length = resp.headers.get("Content-Length")
        return None if length is None else offset + int(length)
    length = resp.headers.get("Content-Length")
    return None if length is None else int(length)


def _attempt(url: str, part: str, timeout: float, desc: str) -> bool:
    """One request, appending to `part`; True when the file is complete."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "kd_jax"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:   # the range starts at the end: nothing left to get
            return True
        raise
    with resp:
        if offset and resp.status != 206:
            offset = 0                  # the server ignored the range: start over
        total = _content_total(resp, offset)
        mode = "ab" if offset else "wb"
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=desc, file=sys.stderr,
                                         disable=None, leave=False) as bar:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    size = os.path.getsize(part)
    if total is not None and size < total:
        return False                    # the connection closed early
    return True


def download(url: str, dest: str, *, timeout: float = TIMEOUT_S, retries: int = RETRIES,
             log=print) -> str:
    """Downloads `url` to `dest` (resuming dest + '.part'); returns dest.

    Raises DownloadError naming the URL if it cannot be completed.
    """
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    if os.path.exists(part) and os.path.getsize(part):
        log(f"resuming {url} at {os.path.getsize(part)} bytes")
    else:
        log(f"downloading {url}")
    last_error = "the connection closed before the end of the file"
    for _ in range(retries + 1):
        try:
            if _attempt(url, part, timeout, os.path.basename(dest)):
                os.replace(part, dest)
                log(f"  saved {dest} ({os.path.getsize(dest)} bytes)")
                return dest
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            reason = e.reason
            if not (os.path.exists(part) and os.path.getsize(part)):
                raise DownloadError(f"{url}: {reason}") from e
            last_error = str(reason)    # dropped mid-way: retry from the partial file
        except (OSError, EOFError, http.client.HTTPException) as e:
            if storage_cause(e):   # the disk, not the connection: retrying cannot help
                raise
            # timeouts, connection resets, http.client.IncompleteRead
            last_error = f"{type(e).__name__}: {e}"
        part_size = os.path.getsize(part) if os.path.exists(part) else 0
        log(f"  interrupted at {part_size} bytes ({last_error}); resuming")
    raise DownloadError(f"{url}: {last_error} (partial file kept in {part}; the same command "
                        "resumes it)")
