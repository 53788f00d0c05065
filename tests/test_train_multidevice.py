"""Data parallelism: 8 simulated CPU devices give the same run as 1 device (same global batch).

The 8-device run is a subprocess (XLA_FLAGS must be set before JAX initialises). Tolerance
1e-5 (absolute, on losses, parameters, BatchNorm statistics and momentum buffers): the
only difference is the order of the cross-device reductions.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def tiny_config():
    from kd_jax import data, recipes
    c = recipes.build_config("sdd", data.CIFAR100, None, default_pair="resnet32x4-ShuffleV1")
    c.dataset.update(name="synthetic", num_train=48, num_test=16, num_classes=10, image_size=16)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.num_epochs, c.total_steps = 16, 2, 3
    c.log_every_steps, c.tensorboard, c.progress_bar, c.export_model = 1, False, False, False
    return c


def train(workdir):
    """SD-DKD, 3 steps; returns ({"devices", "losses", "top1"}, state leaves)."""
    import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
    from kd_jax.train import trainer
    summary, state = trainer.train(tiny_config(), workdir)
    leaves = [np.asarray(x) for x in
              jax.tree.leaves(state.students)]
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        losses = [r["loss"] for r in map(json.loads, fh) if r["kind"] == "train"]
    return {"devices": jax.device_count(), "losses": losses, "top1": summary["last_top1"]}, leaves


RUN = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    jax.config.update("jax_disable_most_optimizations", True)  # as tests/conftest.py
    sys.path.insert(0, sys.argv[3])
    from test_train_multidevice import train
    result, leaves = train(sys.argv[1])
    np.savez(sys.argv[2], *leaves)
    print(json.dumps(result))
""")


def run(tmp_path, name, devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    script = tmp_path / "run.py"
    script.write_text(RUN)
    out = str(tmp_path / f"{name}.npz")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / name), out,
                           os.path.join(ROOT, "tests")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as z:
        leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
    return result, leaves


def test_eight_devices_equal_one(tmp_path):
    # The one-device run in this process (its JAX runtime is already up); same script.
    assert jax.device_count() == 1
    r1, l1 = train(str(tmp_path / "one"))
    eight_dir = tmp_path / "eight"
    eight_dir.mkdir()
    r8, l8 = run(eight_dir, "run", 8)
    assert (r1["devices"], r8["devices"]) == (1, 8)
    assert len(r1["losses"]) == 3
    np.testing.assert_allclose(r8["losses"], r1["losses"], rtol=0, atol=1e-5)
    assert r8["top1"] == r1["top1"]
    assert len(l1) == len(l8)
    for a, b in zip(l1, l8):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
