"""tests/conftest.py's skips for a missing optional stack (torch, TensorFlow), which the lean CI
legs rely on: a test's own import of a stack that is not installed skips it, at module level,
in a fixture or in the test body, with the reason "needs <stack>", and so does the marker
@pytest.mark.needs(stack); any other failed import fails, and so does the stack's import from
code outside tests/ (a library needing it).

An inner pytest run loads the real conftest hooks with a stack name that is never installed.
"""

import textwrap

pytest_plugins = ("pytester",)

STACK = "kd_jax_absent_stack"

INNER_CONFTEST = f"""
import importlib.util, os
spec = importlib.util.spec_from_file_location("kd_jax_conftest", {__file__.replace("test_optional_stacks.py", "conftest.py")!r})
kd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kd)
kd.OPTIONAL_STACKS = ({STACK!r}, "json")  # json: a stack that is installed
kd.TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
pytest_addoption = kd.pytest_addoption
pytest_configure = kd.pytest_configure
pytest_collection_modifyitems = kd.pytest_collection_modifyitems
pytest_make_collect_report = kd.pytest_make_collect_report
pytest_runtest_makereport = kd.pytest_runtest_makereport
"""

INNER_TESTS = {
    "test_module_level.py": f"""
        import {STACK}

        def test_never_runs():
            raise AssertionError
        """,
    "test_inside.py": f"""
        import pytest
        from lib import helper

        @pytest.fixture
        def stack():
            import {STACK}

        def test_in_body():
            import {STACK}.sub

        def test_in_fixture(stack):
            pass

        def test_runs():
            pass

        def test_other_missing_module_fails():
            import kd_jax_no_such_module

        def test_library_import_fails():
            helper.load()

        @pytest.mark.needs({STACK!r})
        def test_marked():
            raise AssertionError

        @pytest.mark.needs("json")
        def test_marked_with_an_installed_stack_runs():
            pass
        """,
    "lib/__init__.py": "",
    "lib/helper.py": f"""
        def load():
            import {STACK}
        """,
}


def test_missing_stack_skips_only_a_tests_own_import(pytester):
    pytester.makeconftest(INNER_CONFTEST)
    for name, text in INNER_TESTS.items():
        path = pytester.path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
    result = pytester.runpytest("-rsf", "-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=2, skipped=4, failed=2)
    result.stdout.fnmatch_lines_random([
        f"SKIPPED [[]1] test_module_level.py:2: needs {STACK}",
        f"SKIPPED [[]1] test_inside.py:7: needs {STACK}",   # the fixture's import
        f"SKIPPED [[]1] test_inside.py:10: needs {STACK}",  # the test's import
        f"SKIPPED [[]1] test_inside.py:24: needs {STACK}",  # the marker
        "FAILED test_inside.py::test_other_missing_module_fails*",
        "FAILED test_inside.py::test_library_import_fails*",
    ])
