"""Agreed stops on several hosts: SIGTERM to ONE of 2 processes (jax.distributed, gloo over
localhost) at a random train step, during an evaluation or during a save. Both processes
must stop at the same step, save it together and exit through the real command line with
the documented line and code 143 (a hang fails the test through its timeout); 2 new
processes then resume and end with the parameters of an uninterrupted run, the checkpoint
timer (checkpoint_every_minutes) running out in one of them only: both save at every sync
point (the timer is agreed like a stop).

The processes run `python -m kd_jax.main` on a config file written here; the config file
itself installs the signal hook in the process whose environment asks for it
(KD_TEST_SIGNAL=train:N | eval:N | save:N, given to process 1 only):
  train:N  SIGTERM when the batch (host path) or the draws (on-device path, the default
           here) after step N are taken (the prefetch thread runs ahead);
  eval:N   SIGTERM at the first batch of the N-th evaluation;
  save:N   SIGTERM as soon as the save of step N has started.
Reference: one process with 2 CPU devices, uninterrupted (same global batch and mesh), so
the final checkpoints agree to 1e-5 (only cross-device reduction order differs).
"""

import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
STEPS_PER_EPOCH, EPOCHS = 3, 3
TOTAL = STEPS_PER_EPOCH * EPOCHS

CONFIG = textwrap.dedent("""
    import os, signal
    import jax
    jax.config.update("jax_disable_most_optimizations", True)  # as tests/conftest.py
    import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
    from kd_jax import data, recipes
    from kd_jax.train import checkpoint, setup

    def _install_hook(spec):
        kind, n = spec.split(":")
        n = int(n)
        term = lambda: os.kill(os.getpid(), signal.SIGTERM)
        if kind == "save":
            real_save = checkpoint.Checkpointer.save
            def save(self, step, state, meta):
                real_save(self, step, state, meta)
                if step == n:
                    term()
            checkpoint.Checkpointer.save = save
            return
        evals = [0]
        if kind == "eval":   # whether the test set is on the devices or comes from the host
            real_eval_sums = setup.Setup.eval_sums
            def eval_sums(self, students):
                evals[0] += 1
                if evals[0] == n:
                    term()
                return real_eval_sums(self, students)
            setup.Setup.eval_sums = eval_sums
            return
        real_get_dataset = data.get_dataset
        def get_dataset(*args, **kwargs):
            ds = real_get_dataset(*args, **kwargs)
            real_train = ds.train_batches
            real_draws = getattr(ds, "train_draws", None)
            def hooked(real):
                # train_batches (host path) and train_draws (on-device path) alike.
                def train(epoch, batch_size, seed, start_step=0):
                    for i, item in enumerate(real(epoch, batch_size, seed, start_step)):
                        if kind == "train" and (epoch - 1) * {spe} + start_step + i == n:
                            term()
                        yield item
                return train
            train_batches = hooked(real_train)
            if real_draws is not None:
                ds.train_draws = hooked(real_draws)
            ds.train_batches = train_batches
            return ds
        data.get_dataset = get_dataset

    if os.environ.get("KD_TEST_SIGNAL"):
        _install_hook(os.environ["KD_TEST_SIGNAL"])

    def get_config():
        c = recipes.build_config("kd", data.CIFAR100, None, default_pair="resnet32x4-resnet8x4")
        c.dataset.update(name="synthetic", num_train={spe} * 16, num_test=16, num_classes=10,
                         image_size=16)
        c.student.arch, c.teacher.arch = "tiny_cnn", "tiny_cnn_wide"
        c.teacher.checkpoint = "random"
        c.batch_size, c.num_epochs = 16, {epochs}
        c.log_every_steps, c.tensorboard, c.progress_bar = 2, False, False
        c.export_model = False
        c.multihost = os.environ.get("KD_TEST_MULTIHOST") == "1"
        # Each process's own checkpoint timer (the clocks of several hosts differ).
        c.checkpoint_every_minutes = float(os.environ.get("KD_TEST_MINUTES", "0"))
        c.keep_checkpoints = 20
        return c
""").format(spe=STEPS_PER_EPOCH, epochs=EPOCHS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(config, workdir, *, devices=1, process=None, port=None, signal_spec=None,
          minutes=None):
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "KD_TEST_SIGNAL", "KD_TEST_MULTIHOST", "KD_TEST_MINUTES"):
        env.pop(key, None)
    if minutes is not None:
        env["KD_TEST_MINUTES"] = str(minutes)
    if process is not None:
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(process), KD_TEST_MULTIHOST="1")
    if signal_spec:
        env["KD_TEST_SIGNAL"] = signal_spec
    return subprocess.Popen([sys.executable, "-m", "kd_jax.main", "--config", str(config),
                             "--workdir", str(workdir)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_all(procs):
    """[(returncode, stderr)] of every process; all are killed if one hangs."""
    out = []
    try:
        for p in procs:
            try:
                _, stderr = p.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a process hung (no exit within {TIMEOUT_S} s)")
            out.append((p.returncode, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def final_state(config_path, workdir):
    """The workdir's latest checkpoint, restored in this process."""
    from kd_jax import cli
    from kd_jax.train import config_validation, trainer
    from kd_jax.train.checkpoint import Checkpointer

    c = cli.load_config(str(config_path))
    like = trainer.build(c, config_validation.validate(c), 10).state
    ckpt = Checkpointer(str(workdir))
    try:
        state, _ = ckpt.restore(like)
    finally:
        ckpt.close()
    return state


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agreed_stops")
    config = tmp / "stops_config.py"
    config.write_text(CONFIG)
    ref_dir = tmp / "ref"
    ((code, stderr),) = wait_all([start(config, ref_dir, devices=2)])
    assert code == 0, stderr[-4000:]
    return config, final_state(config, ref_dir)


# Sync points (log_every_steps=2, 3 steps per epoch): steps 2, 3, 4, 6, 8, 9. Each signal
# below has a later sync point, where both processes stop.
SYNC_POINTS = (2, 3, 4, 6, 8, 9)
SCENARIOS = {
    "train": lambda rng: f"train:{rng.randint(1, 7)}",
    "eval": lambda rng: f"eval:{rng.randint(1, 2)}",     # the evaluations of epochs 1, 2
    "save": lambda rng: f"save:{rng.choice([3, 6])}",    # the epoch-end checkpoints
}


@pytest.mark.parametrize("where", list(SCENARIOS))
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, setup, where):
    config, want = setup
    seed = random.randrange(10 ** 6)
    spec = SCENARIOS[where](random.Random(seed))
    wd = tmp_path / "run"
    port = free_port()
    results = wait_all([start(config, wd, process=i, port=port,
                              signal_spec=spec if i == 1 else None) for i in range(2)])
    stopped_at = []
    for i, (code, stderr) in enumerate(results):
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        assert code == 128 + signal.SIGTERM, f"{spec} (seed {seed}), process {i}: {stderr[-3000:]}"
        match = re.fullmatch(rf"kd_jax: error: stopped by SIGTERM: saved step (\d+) of {TOTAL} "
                             rf"in {re.escape(str(wd))}; run the same command \(same "
                             r"--workdir\) to resume", last)
        assert match, f"{spec}, process {i}: {last!r}"
        stopped_at.append(int(match.group(1)))
    assert stopped_at[0] == stopped_at[1] < TOTAL, (spec, stopped_at)
    from kd_jax.train.checkpoint import Checkpointer
    assert Checkpointer(str(wd)).latest_step() == stopped_at[0]

    # The resumed run: process 1's checkpoint timer runs out at once (1e-9 minutes), process
    # 0's never: both save together at every sync point after the stop (no hang).
    port = free_port()
    results = wait_all([start(config, wd, process=i, port=port, minutes=[0, 1e-9][i])
                        for i in range(2)])
    for i, (code, stderr) in enumerate(results):
        assert code == 0, f"resume after {spec}, process {i}: {stderr[-3000:]}"
    saved = sorted(int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit())
    epoch_ends = range(STEPS_PER_EPOCH, TOTAL + 1, STEPS_PER_EPOCH)
    assert saved == sorted({t for t in epoch_ends if t < stopped_at[0]} | {stopped_at[0]}
                           | {t for t in SYNC_POINTS if t > stopped_at[0]}), (spec, saved)
    got = final_state(config, wd)
    assert int(got.step) == TOTAL
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5)

