"""How a kd_jax command fails: one `kd_jax: error: ...` line, and the storage causes a user
can fix.

    @errors.command(ModelError)   # a command's main(argv) -> exit status
    def main(argv=None) -> int:
        ...

A failure the user can fix ends in one line on stderr, `kd_jax: error: ...`, and exit code 2
(`exit_with_error`), never a traceback. A failed read or write is told by its cause, the
errno somewhere in the exception's chain (`storage_cause`): a full disk (ENOSPC, EDQUOT), no
permission (EACCES, EPERM), a read-only file system (EROFS) or a failing disk (EIO).
Libraries that write in other threads re-raise the writer's error as text, naming its errno:
orbax as Python's "[Errno 28] ...: 'PATH'", tensorstore as "... [os_error_code='28']"; the
errno is read from there. A status name is never the cause: tensorstore reports a full disk
as RESOURCE_EXHAUSTED, the status XLA uses for out of device memory.
"""

from __future__ import annotations

import dataclasses
import errno as errno_lib
import functools
import os
import re
import sys
from typing import Callable, Iterator, NoReturn, Optional

PREFIX = "kd_jax: error: "

# errno -> (what it means to the user, what to do about it). {where}: the directory.
_CAUSES = {
    errno_lib.ENOSPC: ("disk full", "free space on the disk of {where}"),
    errno_lib.EDQUOT: ("disk full", "free space on the disk of {where} (or raise the quota)"),
    errno_lib.EACCES: ("no permission", "fix the permissions of {where}"),
    errno_lib.EPERM: ("no permission", "fix the permissions of {where}"),
    errno_lib.EROFS: ("read-only", "make {where} writable (or use another directory)"),
    errno_lib.EIO: ("input/output error", "check the disk of {where}"),
}
# The errno as libraries re-raise it in a message: Python's OSError repr (orbax) and
# tensorstore's status payload; each followed or preceded by the path where they give one.
_PY_ERRNO = re.compile(r"\[Errno (\d+)\] [^:\n]*(?:: '([^'\n]*)')?")
_TS_ERRNO = re.compile(r"\[os_error_code='?(\d+)'?\]")
_TS_PATH = re.compile(r'local file "([^"\n]+)"')


class StorageError(OSError):
    """A write failed for a cause the user can fix; the message is the whole line (what
    failed, the cause, what is kept, what to do)."""


@dataclasses.dataclass(frozen=True)
class Cause:
    """A storage cause: the errno and, where the error names one, the path."""

    errno: int
    path: Optional[str] = None

    @property
    def kind(self) -> str:
        """'disk full', 'no permission', 'read-only' or 'input/output error'."""
        return _CAUSES[self.errno][0]

    def __str__(self) -> str:
        """'No space left on device (disk full)'."""
        return f"{os.strerror(self.errno)} ({self.kind})"

    def advice(self, where: Optional[str] = None) -> str:
        """What to do, e.g. 'free space on the disk of /runs/x'."""
        where = where or (os.path.dirname(self.path) if self.path else "the directory")
        return _CAUSES[self.errno][1].format(where=where)


def chain(error: Optional[BaseException], *, past_from_none: bool = False
          ) -> Iterator[BaseException]:
    """`error` and the errors it was raised from or during. Not past a `raise ... from None`
    (whose message replaces what it hides) unless `past_from_none`: a Ctrl-C or an
    out-of-memory error is one wherever it lies."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (None if error.__suppress_context__ and not past_from_none
                                    else error.__context__)


def storage_cause(error: Optional[BaseException]) -> Optional[Cause]:
    """The first fixable storage cause in `error`'s chain (an OSError's errno, or the errno a
    library wrote into a re-raised message), or None."""
    for e in chain(error):
        if isinstance(e, OSError) and e.errno in _CAUSES:
            path = e.filename if isinstance(e.filename, str) else None
            return Cause(e.errno, path)
        cause = cause_in_text(str(e))
        if cause is not None:
            return cause
    return None


def cause_in_text(text: str) -> Optional[Cause]:
    """The storage cause a library wrote into a message (see the module docstring), or None."""
    for match in _PY_ERRNO.finditer(text):
        if int(match[1]) in _CAUSES:
            return Cause(int(match[1]), match[2] or None)
    match = _TS_ERRNO.search(text)
    if match and int(match[1]) in _CAUSES:
        path = _TS_PATH.findall(text)
        return Cause(int(match[1]), path[-1] if path else None)
    return None


AGAIN = "run the same command again"


def storage_line(cause: Cause, then: str = AGAIN) -> str:
    """The one line of a storage failure that no caller described: the path, the cause,
    what to do, e.g. '/runs/x/metrics.jsonl: No space left on device (disk full); free space
    on the disk of /runs/x, then run the same command again'."""
    return f"{cause.path or 'a file'}: {cause}; {cause.advice()}, then {then}"


def one_line(text) -> str:
    return " ".join(str(text).split())


def report(message, code: int = 2) -> int:
    """Prints `message` as the command's one error line; returns `code` (its exit status)."""
    print(f"{PREFIX}{one_line(message)}", file=sys.stderr, flush=True)
    return code


def exit_with_error(message, code: int = 2) -> NoReturn:
    sys.exit(report(message, code))


def exit_now(code) -> NoReturn:
    """A command's exit with status `code` (`python -m kd_jax.X`'s last call). After a
    failure, without the interpreter's teardown: the error line is out and the files are
    closed, but a failed orbax save leaves threads that wait minutes for signals that never
    come (the interpreter joins them), and tensorstore callbacks that print tracebacks into
    a closed event loop."""
    if code in (None, 0):
        sys.exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    if "jax" in sys.modules:   # what JAX's exit handler does: leave the other processes
        sys.modules["jax"].distributed.shutdown()   # of a multi-host run in order
    os._exit(code if isinstance(code, int) else 1)


def message(error: BaseException, then: str = AGAIN) -> Optional[str]:
    """The line for `error` if it is a storage failure (a StorageError's own message, else
    storage_line), or None."""
    if isinstance(error, StorageError):
        return str(error)
    cause = storage_cause(error)
    return None if cause is None else storage_line(cause, then)


def command(*expected: type) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorates a command's `main(argv) -> exit status`: when it raises one of `expected`
    (the command's own errors, whose messages are written for the user) or anything caused
    by the storage (`message`), prints the one `kd_jax: error:` line and returns 2; other
    errors keep their traceback (a bug)."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except expected as e:   # one caused by the storage says so
                return report(message(e) or e)
            except Exception as e:  # noqa: BLE001  re-raised unless the storage caused it
                line = message(e)
                if line is None:
                    raise
                return report(line)
        return run

    return decorate
