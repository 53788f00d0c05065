"""The cache directory of kd_jax: downloaded archives and, by default, fetched teachers.

    cache_dir()  ->  $KD_JAX_CACHE, else ~/.cache/kd_jax (not created here)
"""

from __future__ import annotations

import os

CACHE_ENV = "KD_JAX_CACHE"


def cache_dir() -> str:
    """$KD_JAX_CACHE if set and non-empty, else ~/.cache/kd_jax; absolute, user-expanded."""
    path = os.environ.get(CACHE_ENV, "").strip() or os.path.join("~", ".cache", "kd_jax")
    return os.path.abspath(os.path.expanduser(path))
