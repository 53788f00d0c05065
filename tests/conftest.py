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


import socket  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Every socket.create_connection fails as with no DNS; returns the (host, port) list of
    the connections tried, so a test can check there was one probe and no download."""
    connects = []

    def refuse(address, *args, **kwargs):
        connects.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return connects
