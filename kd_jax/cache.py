"""kd_jax's cache directory: downloaded dataset archives, published teachers, compiled steps.

    cache_dir()            -> $KD_JAX_CACHE if set, else ~/.cache/kd_jax
    cache_dir("cifar")     -> <that>/cifar

One home for this fact: every module that caches something on disk asks here.
"""

from __future__ import annotations

import os

CACHE_ENV = "KD_JAX_CACHE"


def cache_dir(*parts: str) -> str:
    """The cache directory (or a subdirectory of it), as an absolute path; not created."""
    root = os.environ.get(CACHE_ENV, "").strip()
    if not root:
        root = os.path.join(os.path.expanduser("~"), ".cache", "kd_jax")
    return os.path.abspath(os.path.join(os.path.expanduser(root), *parts))
