"""The tests run on the CPU backend unless KD_JAX_TEST_PLATFORM names another (tests/conftest.py):
on a machine with a GPU they would otherwise run there, with TF32 matmuls under float32
tolerances."""

import os

import jax


def test_tests_run_on_the_pinned_platform():
    want = os.environ.get("KD_JAX_TEST_PLATFORM", "").strip() or "cpu"
    assert os.environ["JAX_PLATFORMS"] == want and jax.config.jax_platforms == want
    if want == "cpu":
        assert {d.platform for d in jax.devices()} == {"cpu"}
    else:
        assert jax.config.jax_default_matmul_precision == "highest"
