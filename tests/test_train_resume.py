"""Checkpoint/resume exactness, SIGTERM and Ctrl-C, SIGKILL, the refusal to resume with another batch
size, the non-finite-loss stop, and the prefetch thread of an epoch that raised.

Tiny KD runs (tiny_cnn <- random tiny_cnn_wide, batch 8) on synthetic data; all runs share
one compiled step through the persistent compilation cache.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax import data, recipes
from kd_jax.methods import registry
from kd_jax.train import trainer
from kd_jax.train.checkpoint import Checkpointer
from kd_jax.train.config_validation import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(total_steps, method="kd"):
    c = recipes.build_config(method, data.CIFAR100, None, default_pair="resnet32x4-resnet8x4")
    c.dataset.update(name="synthetic", num_train=24, num_test=8, num_classes=10, image_size=16)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.num_epochs, c.total_steps = 8, 3, total_steps
    c.optimizer.milestones = (1,)   # lr changes after epoch 1: resume must pick the right one
    c.log_every_steps, c.tensorboard, c.progress_bar, c.export_model = 2, False, False, False
    return c


def train_steps_logged(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        return [r["step"] for r in map(json.loads, fh) if r["kind"] == "train"]


def assert_states_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """5 steps in one go: ends mid-epoch 2."""
    wd = str(tmp_path_factory.mktemp("uninterrupted"))
    summary, state = trainer.train(tiny_config(5), wd)
    assert summary["steps"] == 5
    return state


def test_resume_mid_epoch_equals_uninterrupted(tmp_path, uninterrupted):
    wd = str(tmp_path)
    _, first = trainer.train(tiny_config(2), wd)         # stops mid-epoch 1, saves step 2
    assert int(first.step) == 2
    assert Checkpointer(wd).latest_step() == 2
    summary, state = trainer.train(tiny_config(5), wd)   # resumes: steps 3 (epoch 1), 4, 5
    assert summary["steps"] == 5 and int(state.step) == 5
    # It really resumed (a run from scratch would log steps 2, 3, 4, 5 again).
    assert train_steps_logged(wd) == [2, 3, 4, 5]
    assert_states_equal(state, uninterrupted)


def _signal_at_step_1(monkeypatch, signum):
    """The dataset sends `signum` to this process when epoch 1's batch 1 is taken (its batch
    on the host path, its draws on the on-device path: the stop comes at the end of the call
    holding step 1)."""
    real_get_dataset = data.get_dataset
    sent = []   # one signal: train_batches draws through train_draws, and both are wrapped

    def get_dataset(*args, **kwargs):
        ds = real_get_dataset(*args, **kwargs)

        def signalling(real):
            def batches(epoch, global_batch_size, seed, start_step=0):
                for i, batch in enumerate(real(epoch, global_batch_size, seed, start_step)):
                    if epoch == 1 and start_step + i == 1 and not sent:
                        sent.append(signum)
                        os.kill(os.getpid(), signum)
                    yield batch
            return batches

        ds.train_batches = signalling(ds.train_batches)
        ds.train_draws = signalling(ds.train_draws)
        return ds

    monkeypatch.setattr(data, "get_dataset", get_dataset)


@pytest.fixture
def sigint_default():
    """SIGINT as an interactive shell hands it over. A test runner started in the background
    (nohup, `&`) inherits it ignored, and a run rightly leaves an ignored SIGINT ignored
    (kd_jax.train.stops): without this the Ctrl-C case would test nothing there."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_and_resume_equals_uninterrupted(tmp_path, uninterrupted,
                                                           monkeypatch, signum, sigint_default):
    """SIGTERM or Ctrl-C during the run: the loop saves the current step and raises
    RunStopped; resuming finishes with the uninterrupted parameters."""
    wd = str(tmp_path)
    _signal_at_step_1(monkeypatch, signum)
    with pytest.raises(trainer.RunStopped, match=rf"{signum.name}: saved step \d of 5 in ") as e:
        trainer.train(tiny_config(5), wd)
    monkeypatch.undo()
    assert e.value.signum == signum
    summary = e.value.summary
    stopped = summary["steps"]
    assert not summary["finished"] and 1 <= stopped < 5
    assert Checkpointer(wd).latest_step() == stopped
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handlers restored
    summary, state = trainer.train(tiny_config(5), wd)
    assert summary["finished"]
    steps = train_steps_logged(wd)
    assert steps == sorted(set(steps)) and steps[-1] == 5   # no step trained twice
    assert_states_equal(state, uninterrupted)


def test_stop_signal_ends_a_seeds_run(tmp_path, monkeypatch):
    """A seeds run stopped in its first seed does not go on to the next one."""
    from kd_jax.train import seeds

    c = tiny_config(5)
    c.seeds = "0,1"
    _signal_at_step_1(monkeypatch, signal.SIGTERM)
    with pytest.raises(trainer.RunStopped):
        seeds.run_seeds(c, str(tmp_path))
    assert os.path.isdir(tmp_path / "seed_0") and not os.path.exists(tmp_path / "seed_1")


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    spec = registry.get("kd")

    def build(hp):
        compute_loss = spec.build(hp)

        def nan_from_epoch_2(student, teacher, labels, epoch, extra):
            loss, terms = compute_loss(student, teacher, labels, epoch, extra)
            return jnp.where(epoch >= 2, jnp.nan, loss), terms

        return nan_from_epoch_2

    monkeypatch.setitem(registry._SPECS, "kd", dataclasses.replace(spec, build=build))
    wd = str(tmp_path)
    with pytest.raises(trainer.NonFiniteLossError,
                       match=r"non-finite loss at step 4 \(epoch 2\): .*kd=.*last good checkpoint is step 3"):
        trainer.train(tiny_config(6), wd)
    assert Checkpointer(wd).latest_step() == 3


def test_resume_with_another_batch_size_is_refused(tmp_path):
    """Batch 7 instead of 8 keeps 3 steps per epoch (24 images): only the batch size differs."""
    wd = str(tmp_path)
    trainer.train(tiny_config(2), wd)                  # a checkpoint at step 2, batch 8
    c = tiny_config(5)
    c.batch_size = 7
    with pytest.raises(ConfigError, match=r"holds a run with batch_size=8.*this config gives "
                                          r"batch_size=7.*use another --workdir"):
        trainer.train(c, wd)
    assert Checkpointer(wd).latest_step() == 2        # nothing was overwritten
    assert train_steps_logged(wd) == [2]


# --- SIGKILL -----------------------------------------------------------------------------------

KILL_STEPS_PER_EPOCH, KILL_EPOCHS = 6, 3


def kill_config():
    """KD, 3 epochs of 6 steps, a checkpoint per epoch, every step logged."""
    c = tiny_config(0)
    c.dataset.num_train = 8 * KILL_STEPS_PER_EPOCH
    c.num_epochs = KILL_EPOCHS
    c.optimizer.milestones = (2,)
    c.log_every_steps, c.checkpoint_every_epochs, c.keep_checkpoints = 1, 1, 3
    # The kill points hold the host path's batch iterator at one step; resumption itself is
    # the same on both paths (tests/test_on_device.py resumes the on-device path).
    c.dataset.on_device = False
    return c


# The run to kill, in its own process. "hold N": the data pipeline stops before batch N
# (0-based, over the whole run) and writes <workdir>/holding; the trainer has then taken
# steps 1..N and waits for data, mid-epoch, until the test kills the process.
# "kill_in_save S": the process SIGKILLs itself as soon as the asynchronous save of step S
# has created its temporary directory.
KILL_RUN = textwrap.dedent("""
    import os, signal, sys, time
    import jax
    jax.config.update("jax_disable_most_optimizations", True)  # as tests/conftest.py
    sys.path.insert(0, sys.argv[4])
    from test_train_resume import KILL_STEPS_PER_EPOCH, kill_config
    from kd_jax import data
    from kd_jax.train import checkpoint, trainer
    workdir, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "hold":
        real_get_dataset = data.get_dataset
        def get_dataset(*args, **kwargs):
            ds = real_get_dataset(*args, **kwargs)
            real_train_batches = ds.train_batches
            def train_batches(epoch, batch_size, seed, start_step=0):
                batches = real_train_batches(epoch, batch_size, seed, start_step)
                for i, batch in enumerate(batches):
                    if (epoch - 1) * KILL_STEPS_PER_EPOCH + start_step + i == n:
                        open(os.path.join(workdir, "holding"), "w").close()
                        while True:
                            time.sleep(1)
                    yield batch
            ds.train_batches = train_batches
            return ds
        data.get_dataset = get_dataset
    else:
        real_save = checkpoint.Checkpointer.save
        def save(self, step, state, meta):
            real_save(self, step, state, meta)
            if step == n:   # kill once the async writer has started on the step's files
                for _ in range(10000):
                    if any(e.startswith(f"{n}.") or e == str(n)
                           for e in os.listdir(self.directory)):
                        break
                    time.sleep(0.001)
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.Checkpointer.save = save
    trainer.train(kill_config(), workdir)
""")


def start_kill_run(tmp_path, workdir, mode, n):
    script = tmp_path / "kill_run.py"
    script.write_text(KILL_RUN)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, str(script), workdir, mode, str(n),
                             os.path.join(ROOT, "tests")], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finalized_steps(workdir):
    """Checkpoint steps whose directories orbax has finalized (renamed from their tmp name)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


@pytest.fixture(scope="module")
def uninterrupted_kill_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("uninterrupted_kill"))
    summary, state = trainer.train(kill_config(), wd)
    assert summary["finished"] and summary["steps"] == KILL_STEPS_PER_EPOCH * KILL_EPOCHS
    return summary, state


def resume_and_compare(wd, uninterrupted_kill_run):
    want_summary, want_state = uninterrupted_kill_run
    summary, state = trainer.train(kill_config(), wd)
    assert summary["finished"] and summary["steps"] == want_summary["steps"]
    assert_states_equal(state, want_state)
    assert [(h["epoch"], h["top1"], h["top5"]) for h in summary["history"]] == [
        (h["epoch"], h["top1"], h["top5"]) for h in want_summary["history"]]
    return summary


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, uninterrupted_kill_run):
    """SIGKILL (no handler, nothing saved on the way out) in epoch 2 after step 9, with the
    epoch-1 checkpoint (step 6) on disk: the next run restores step 6, retrains 7..9, ends
    with the parameters of an uninterrupted run (1e-6)."""
    wd = str(tmp_path / "run")
    hold = KILL_STEPS_PER_EPOCH + 3
    proc = start_kill_run(tmp_path, wd, "hold", hold)
    try:
        deadline = time.monotonic() + 240
        while not (os.path.exists(os.path.join(wd, "holding"))
                   and hold in train_steps_logged(wd)):
            assert proc.poll() is None, proc.stderr.read()[-4000:]
            assert time.monotonic() < deadline, "the run never reached the kill point"
            time.sleep(0.1)
        deadline = time.monotonic() + 30   # the async save of step 6 may still be writing
        while KILL_STEPS_PER_EPOCH not in finalized_steps(wd):
            assert time.monotonic() < deadline, (
                f"no checkpoint of step {KILL_STEPS_PER_EPOCH} (end of epoch 1) on disk at "
                f"step {hold}: {os.listdir(os.path.join(wd, 'checkpoints'))}")
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert train_steps_logged(wd) == list(range(1, hold + 1))   # steps 7..9 were not saved
    assert finalized_steps(wd) == [KILL_STEPS_PER_EPOCH]
    summary = resume_and_compare(wd, uninterrupted_kill_run)
    total = KILL_STEPS_PER_EPOCH * KILL_EPOCHS
    # Steps 7..9, logged by the killed run and trained again, appear once (metrics.jsonl
    # drops the records after the restored step).
    assert train_steps_logged(wd) == list(range(1, total + 1))
    assert len(summary["segments"]) == 2                    # the killed one, as of step 6


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(tmp_path, uninterrupted_kill_run):
    """SIGKILL while the asynchronous save of step 12 is being written: the step-6
    checkpoint stays the latest usable one and the resumed run ends as an uninterrupted one."""
    wd = str(tmp_path / "run")
    save_step = 2 * KILL_STEPS_PER_EPOCH
    proc = start_kill_run(tmp_path, wd, "kill_in_save", save_step)
    try:
        assert proc.wait(timeout=240) == -signal.SIGKILL, proc.stderr.read()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    # The save really was cut short: its temporary directory is left, not finalized.
    entries = os.listdir(os.path.join(wd, "checkpoints"))
    assert str(save_step) not in entries
    assert any(e.startswith(f"{save_step}.") for e in entries), entries
    assert Checkpointer(wd).latest_step() == KILL_STEPS_PER_EPOCH
    resume_and_compare(wd, uninterrupted_kill_run)
    assert finalized_steps(wd)[-1] == KILL_STEPS_PER_EPOCH * KILL_EPOCHS


# --- the prefetch thread of an epoch that raised ----------------------------------------------

def test_epoch_that_raises_stops_its_prefetch_thread(tmp_path, monkeypatch):
    """A NaN loss, found at the logging point of step 2 of a 10-step epoch, raises mid-epoch;
    the prefetcher of that
    epoch must be closed (its thread, which the full queue would otherwise block forever,
    has exited) when the exception leaves train()."""
    spec = registry.get("kd")

    def build(hp):
        compute_loss = spec.build(hp)

        def nan_from_step_2(student, teacher, labels, epoch, extra):
            loss, terms = compute_loss(student, teacher, labels, epoch, extra)
            return jnp.where(jnp.sum(labels) >= 0, jnp.nan, loss), terms

        return nan_from_step_2

    monkeypatch.setitem(registry._SPECS, "kd", dataclasses.replace(spec, build=build))
    prefetchers = []
    real_prefetch = data.prefetch_to_mesh

    def prefetch_to_mesh(*args, **kwargs):
        prefetchers.append(real_prefetch(*args, **kwargs))
        return prefetchers[-1]

    monkeypatch.setattr(data, "prefetch_to_mesh", prefetch_to_mesh)
    c = tiny_config(0)
    c.dataset.num_train = 80                         # 10 steps: the queue (2) fills up
    c.log_every_steps = 2
    try:
        with pytest.raises(trainer.NonFiniteLossError, match="at step 1"):
            trainer.train(c, str(tmp_path))
        (train_prefetcher,) = prefetchers            # the epoch's (no eval ran)
        thread = train_prefetcher._thread
        thread.join(timeout=3.0)                     # a thread left running blocks forever
        assert not thread.is_alive(), "the epoch's prefetch thread is still running"
    finally:
        for p in prefetchers:
            p.close()
