"""Shared test settings: a persistent XLA compilation cache and fast compiles on CPU."""

import os

# Persistent compilation cache: CI reruns on the same machine reuse compiled programs.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "kd_jax", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

# Tests check numerics, not speed: most XLA optimisations only cost compile time here.
jax.config.update("jax_disable_most_optimizations", True)
