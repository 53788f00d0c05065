"""Shared test settings: the CPU backend, a persistent XLA compilation cache and fast compiles.

The tests run on CPU (JAX_PLATFORMS=cpu), whatever accelerators the machine has: their
tolerances (the 1e-5 and 1e-6 parity tests) assume float32 arithmetic, which a GPU does not
give by default (XLA uses TF32 matmuls there). KD_JAX_TEST_PLATFORM=gpu (or tpu, cuda, ...)
runs them on that platform instead, with matmuls at full float32 precision ("highest").
"""

import os

TEST_PLATFORM_ENV = "KD_JAX_TEST_PLATFORM"
TEST_PLATFORM = os.environ.get(TEST_PLATFORM_ENV, "").strip() or "cpu"
os.environ["JAX_PLATFORMS"] = TEST_PLATFORM   # also what subprocesses of the tests inherit

# Persistent compilation cache: CI reruns on the same machine reuse compiled programs.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "kd_jax", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_platforms", TEST_PLATFORM)   # in case a plugin imported jax first
if TEST_PLATFORM != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")
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


# --- the fault-injection matrix (tests/test_faults.py, issue 31) -------------------------------

FAULTS_REASON = ("the fault-injection matrix (every write site under ENOSPC, EACCES, EROFS and "
                 "SIGKILL; minutes on 2 cores) runs as its own CI step: python -m pytest -q -n 2 "
                 "--faults -m faults tests/test_faults.py")


def pytest_addoption(parser):
    parser.addoption("--faults", action="store_true",
                     help="run the tests marked faults (the fault-injection matrix)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--faults"):
        return
    skip = pytest.mark.skip(reason=FAULTS_REASON)
    for item in items:
        if "faults" in item.keywords:
            item.add_marker(skip)
