"""The core install needs no TensorFlow: a training run on CIFAR-10/100 (archives), Fashion-MNIST
(IDX files) or synthetic data, TensorBoard events included, never imports it.

Each run goes through `python -m kd_jax.main`'s entry point in a fresh interpreter (nothing
imported by other tests), 2 steps of a tiny model; then `tensorflow` and `tensorflow_datasets`
must be absent from sys.modules.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_data_cifar import make  # noqa: E402  the archive writer of the CIFAR tests

FASHION_DIR = "/usr/share/datasets/fashion-mnist"

RUN = """
import json, sys
import kd_jax.testing  # registers tiny_cnn / tiny_cnn_wide
from kd_jax import main
main.main(["kd_jax.main"] + sys.argv[1:])
tf = ("tensorflow", "tensorflow_datasets")
print(json.dumps({"tensorflow": sorted(m for m in sys.modules if m.split(".")[0] in tf)}))
"""

COMMON = ["--config=cifar_kd.py:resnet32x4-resnet8x4", "--config.student.arch=tiny_cnn",
          "--config.teacher.arch=tiny_cnn_wide", "--config.teacher.checkpoint=random",
          "--config.batch_size=4", "--config.total_steps=2", "--config.log_every_steps=1",
          "--config.tensorboard=True", "--config.progress_bar=False",
          "--config.export_model=False", "--config.dataset.limit_train=16",
          "--config.dataset.limit_test=8"]


def core_env(tmp_path) -> dict:
    """The environment of a fresh interpreter running this tree's kd_jax on CPU, offline, with
    its own cache (tests/test_no_torch.py uses it too)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               KD_JAX_OFFLINE="1", KD_JAX_CACHE=str(tmp_path / "cache"))
    return env


def run(tmp_path, *args):
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", RUN, *COMMON, f"--workdir={workdir}", *args],
                          cwd=tmp_path, env=core_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "summary.json") as fh:
        assert json.load(fh)["finished"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tb"))
    return json.loads(proc.stdout.strip().splitlines()[-1])["tensorflow"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_run_imports_no_tensorflow(tmp_path, name):
    make(name, "python", tmp_path, np.random.default_rng(0))
    assert run(tmp_path, f"--config.dataset.name={name}",
               f"--config.dataset.data_dir={tmp_path}") == []


@pytest.mark.slow
def test_synthetic_run_imports_no_tensorflow(tmp_path):
    assert run(tmp_path, "--config.dataset.name=synthetic", "--config.dataset.num_train=16",
               "--config.dataset.num_test=8", "--config.dataset.num_classes=10") == []


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                    reason=f"needs Debian's dataset-fashion-mnist ({FASHION_DIR}; .ci/run "
                           "installs it)")
def test_fashion_mnist_run_imports_no_tensorflow(tmp_path):
    assert run(tmp_path, "--config.dataset.name=fashion_mnist") == []


def test_the_check_sees_tensorflow_when_it_is_imported(tmp_path):
    """The check itself can fail: the same module listing after importing tfds names it."""
    # This tree's kd_jax (as `run` does), not whichever one the interpreter has installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = ROOT
    probe = RUN.replace('main.main(["kd_jax.main"] + sys.argv[1:])', "import tensorflow_datasets")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tensorflow_datasets" in json.loads(proc.stdout.strip().splitlines()[-1])["tensorflow"]
