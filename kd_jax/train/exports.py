"""Exports are part of finishing: a run is finished only when every export is complete.

An export directory (kd_jax.convert.save_converted) is complete when its orbax `state/` has
been finalized and its `teacher.json` written: save_converted removes teacher.json before it
overwrites anything and writes it last, so teacher.json marks a complete export. A run killed
after its last checkpoint, or whose export hit a full disk, leaves an export that is missing
or partial (an empty directory, or only `*.orbax-checkpoint-tmp*`); the next run of the same
command redoes it from the last checkpoint (kd_jax.train.trainer).

Generic over the export directories of a student (final_model today; more may follow).
"""

from __future__ import annotations

import os
from typing import Iterable

from kd_jax.convert import converted

TMP_MARK = ".orbax-checkpoint-tmp"


def is_complete(path: str) -> bool:
    """Whether `path` holds a finished export (finalized state/ and teacher.json)."""
    if not (os.path.isfile(os.path.join(path, converted.META_FILE))
            and os.path.isdir(os.path.join(path, converted.STATE_DIR))):
        return False
    return not any(TMP_MARK in name for name in os.listdir(path))


def missing(paths: Iterable[str]) -> list[str]:
    """The paths among `paths` whose export is missing or partial."""
    return [p for p in paths if not is_complete(p)]


def clear_partial(path: str) -> None:
    """Removes what an export cut short left in `path` (orbax's *.orbax-checkpoint-tmp*
    directories), before the export is redone; finished files are left alone."""
    import shutil

    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        if TMP_MARK in name:
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)
