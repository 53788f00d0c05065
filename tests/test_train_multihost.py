"""Multi-host: 2 processes x 1 CPU device (jax.distributed, gloo collectives over localhost)
train exactly like 1 process with 2 devices, through a checkpoint and a resume.

Reference: one process with 2 simulated devices trains 4 SD-DKD steps (3 steps per epoch, so
the run crosses an epoch end with its evaluation and checkpoint). Multi-host: two processes
started through kd_jax.main.run with config.multihost=True (kd_jax.train.multihost reads
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) train 2 steps and stop; two
new processes resume from the checkpoint in the same workdir and finish. Both sides then
restore their last checkpoint (every process takes part in the restore) and write it out.

Tolerance 1e-5 (absolute, losses, parameters, BatchNorm statistics, momentum buffers): the
global batch, the mesh and the program are the same; only the reduction order of the
cross-device sums may differ (in-process vs gloo).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240
TOTAL_STEPS = 4

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax
    import numpy as np
    jax.config.update("jax_disable_most_optimizations", True)  # as tests/conftest.py
    import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
    from kd_jax import data, main, recipes
    from kd_jax.train import config_validation, trainer
    from kd_jax.train.checkpoint import Checkpointer

    workdir, total_steps, out, multihost = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = recipes.build_config("sdd", data.CIFAR100, None, default_pair="resnet32x4-ShuffleV1")
    c.dataset.update(name="synthetic", num_train=48, num_test=16, num_classes=10, image_size=16)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.num_epochs, c.total_steps = 16, 2, total_steps
    c.log_every_steps, c.tensorboard, c.progress_bar = 1, False, False
    c.multihost = multihost == "1"
    summary = main.run(c, workdir)          # initializes jax.distributed when multihost
    like = trainer.build(c, config_validation.validate(c), 10).state
    ckpt = Checkpointer(workdir)
    state, meta = ckpt.restore(like)        # all processes restore
    ckpt.close()
    if jax.process_index() == 0:
        np.savez(out, *[np.asarray(x) for x in jax.tree.leaves(state.students)])
    print("RESULT " + json.dumps({
        "process": jax.process_index(), "processes": jax.process_count(),
        "devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "step": int(np.asarray(state.step)), "top1": summary["last_top1"]}), flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(script, workdir, total_steps, out, *, devices=1, process=None, port=None,
          processes=2):
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    if process is not None:
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
                   JAX_PROCESS_ID=str(process))
    return subprocess.Popen(
        [sys.executable, str(script), str(workdir), str(total_steps), str(out),
         "0" if process is None else "1"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs):
    """Waits for all; kills every one of them if any fails or times out. Returns results."""
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, stderr[-4000:]
            line = [l for l in stdout.splitlines() if l.startswith("RESULT ")][-1]
            results.append(json.loads(line[len("RESULT "):]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def load(path):
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def train_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        return [(r["step"], r["loss"]) for r in map(json.loads, fh) if r["kind"] == "train"]


def test_two_processes_equal_one_process_with_two_devices(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ref_dir, mh_dir = tmp_path / "ref", tmp_path / "multihost"

    # The reference runs while the first multi-host segment trains (2 steps, then stop).
    port = free_port()
    ref = start(script, ref_dir, TOTAL_STEPS, tmp_path / "ref.npz", devices=2)
    first = [start(script, mh_dir, 2, tmp_path / "first.npz", process=i, port=port)
             for i in range(2)]
    (r_ref,) = finish([ref])
    r_first = finish(first)
    assert [r["step"] for r in r_first] == [2, 2]
    # New processes resume from step 2 in the same workdir and finish.
    port = free_port()
    r_mh = finish([start(script, mh_dir, TOTAL_STEPS, tmp_path / "mh.npz", process=i, port=port)
                   for i in range(2)])

    assert (r_ref["processes"], r_ref["devices"], r_ref["local_devices"]) == (1, 2, 2)
    assert sorted(r["process"] for r in r_mh) == [0, 1]
    assert all((r["processes"], r["devices"], r["local_devices"]) == (2, 2, 1) for r in r_mh)
    assert r_ref["step"] == TOTAL_STEPS and all(r["step"] == TOTAL_STEPS for r in r_mh)
    assert all(r["top1"] == r_ref["top1"] for r in r_mh)

    # Process 0 alone logs: one record per step, steps 1-2 from the first segment, 3-4 from
    # the resumed one (a restart from scratch would log steps 1 and 2 again).
    ref_losses, mh_losses = train_losses(ref_dir), train_losses(mh_dir)
    assert [s for s, _ in ref_losses] == [s for s, _ in mh_losses] == [1, 2, 3, 4]
    np.testing.assert_allclose([l for _, l in mh_losses], [l for _, l in ref_losses],
                               rtol=0, atol=1e-5)

    ref_leaves, mh_leaves = load(tmp_path / "ref.npz"), load(tmp_path / "mh.npz")
    assert len(ref_leaves) == len(mh_leaves) > 10
    for a, b in zip(ref_leaves, mh_leaves):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)

    # The export (every process takes part in its orbax save) and the summary exist once.
    with open(mh_dir / "final_model" / "teacher.json") as fh:
        assert json.load(fh)["arch"] == "tiny_cnn"
    with open(mh_dir / "summary.json") as fh:
        summary = json.load(fh)
    assert summary["finished"] and summary["steps"] == TOTAL_STEPS
    assert len(summary["segments"]) == 2
