"""Shared test settings: the CPU backend, a persistent XLA compilation cache, fast compiles,
the skips of tests that need an optional stack (torch, TensorFlow) where it is not installed,
and the --faults switch of the fault-injection matrix.

The tests run on CPU (JAX_PLATFORMS=cpu), whatever accelerators the machine has: their
tolerances (the 1e-5 and 1e-6 parity tests) assume float32 arithmetic, which a GPU does not
give by default (XLA uses TF32 matmuls there). KD_JAX_TEST_PLATFORM=gpu (or tpu, cuda, ...)
runs them on that platform instead, with matmuls at full float32 precision ("highest").
"""

import importlib.util
import os
import traceback

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


# The optional stacks. The lean CI legs (Python 3.12 and 3.13 in .ci/run) install neither: a
# test whose own code imports one that is not installed is skipped, with the reason "needs
# torch" (or "needs tensorflow") at the line of that import, whether it is at module level, in
# a fixture or in the test body. New tests get this with no marker; a leg runs everything that
# does not skip. Only an import written in tests/ counts: kd_jax or a library importing one
# fails as before (the core needs neither: tests/test_no_tensorflow.py, tests/test_wheel.py).
OPTIONAL_STACKS = ("torch", "tensorflow")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def missing_stack_skip(error: BaseException | None) -> tuple[str, int, str] | None:
    """A skip report's (file, line, "Skipped: needs torch") if `error` is a tests/ file's
    failed import of an optional stack that is not installed, else None."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    stack = error.name.partition(".")[0]
    if stack not in OPTIONAL_STACKS or importlib.util.find_spec(stack) is not None:
        return None
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith("<frozen ")]
    if not frames or os.path.dirname(os.path.abspath(frames[-1].filename)) != TESTS_DIR:
        return None
    return frames[-1].filename, frames[-1].lineno, f"Skipped: needs {stack}"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs(stack): the test needs torch or tensorflow without importing it "
        "itself (kd_jax checks for it first); skipped with the reason 'needs <stack>' where "
        "that is not installed")


def pytest_collection_modifyitems(config, items):
    """Applies @pytest.mark.needs("torch") (see pytest_configure), and skips the tests marked
    faults unless --faults is given."""
    faults_skip = None if config.getoption("--faults") else pytest.mark.skip(
        reason=FAULTS_REASON)
    for item in items:
        if faults_skip is not None and "faults" in item.keywords:
            item.add_marker(faults_skip)
        for mark in item.iter_markers("needs"):
            for stack in mark.args:
                assert stack in OPTIONAL_STACKS, f"{item.nodeid}: needs({stack!r})"
                if importlib.util.find_spec(stack) is None:
                    item.add_marker(pytest.mark.skip(reason=f"needs {stack}"))


@pytest.hookimpl(tryfirst=True)
def pytest_make_collect_report(collector):
    """A test module whose import needs a missing optional stack: one skip, not an error."""
    if not isinstance(collector, pytest.Module):
        return None
    try:
        collector.obj  # imports the module; pytest's own hook reuses it
    except collector.CollectError as error:
        skip = missing_stack_skip(error.__cause__)
        if skip:
            return pytest.CollectReport(collector.nodeid, "skipped", skip, [])
    except (Exception, pytest.skip.Exception):  # noqa: BLE001
        pass  # pytest's own hook imports the module again and reports it as usual
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A fixture or test that failed on importing a missing optional stack: skipped."""
    report = yield
    skip = report.failed and call.excinfo and missing_stack_skip(call.excinfo.value)
    if skip:
        report.outcome, report.longrepr = "skipped", skip
    return report
