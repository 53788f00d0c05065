"""Published teachers: where they are installed, and `teacher.checkpoint=published`.

    python -m kd_jax.teachers list | fetch NAME...|all [--from FILE] | path NAME

Teachers live in `teachers_dir()/<arch>/` (a directory written by kd_jax.convert plus the
fetch's verification record in teacher.json). This module is light (no jax, no torch): the
config validation and the trainer use it to resolve `published`; the fetching is in
kd_jax.teachers.fetch.
"""

from __future__ import annotations

import os

from kd_jax.cache import cache_dir

TEACHERS_ENV = "KD_JAX_TEACHERS"
PUBLISHED = "published"   # teacher.checkpoint value: <teachers_dir()>/<teacher.arch>


def teachers_dir(override: str | None = None) -> str:
    """`override`, else $KD_JAX_TEACHERS, else <cache_dir()>/teachers; absolute."""
    path = override or os.environ.get(TEACHERS_ENV, "").strip() or os.path.join(
        cache_dir(), "teachers")
    return os.path.abspath(os.path.expanduser(path))


def fetch_command(name: str, directory: str | None = None) -> str:
    """The command that installs teacher `name` (into `directory` if given)."""
    where = f" --dir {directory}" if directory else ""
    return f"python -m kd_jax.teachers{where} fetch {name}"


def published_path(arch: str, directory: str | None = None) -> str:
    """The installed teacher `arch`; FileNotFoundError naming the fetch command if absent."""
    from kd_jax.teachers import catalog  # here, not above: it imports kd_jax.data (jax)

    if arch not in catalog.TEACHERS:
        raise FileNotFoundError(
            f"no published teacher for arch {arch!r}; published teachers: "
            f"{', '.join(catalog.TEACHERS)} (or give a .pth file or a converted directory)")
    path = os.path.join(teachers_dir(directory), arch)
    if not os.path.isfile(os.path.join(path, "teacher.json")):
        raise FileNotFoundError(f"the published teacher {arch} is not in {teachers_dir(directory)};"
                                f" fetch it with `{fetch_command(arch, directory)}`")
    return path
