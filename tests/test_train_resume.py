"""Checkpoint/resume exactness, SIGTERM, and the non-finite-loss stop.

Tiny KD runs (tiny_cnn <- random tiny_cnn_wide, batch 8, 3 steps per epoch) on synthetic
data; all runs share one compiled step through the persistent compilation cache.
"""

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kd_jax.train.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax import data, recipes
from kd_jax.methods import registry
from kd_jax.train import trainer
from kd_jax.train.checkpoint import Checkpointer


def tiny_config(total_steps, method="kd"):
    c = recipes.build_config(method, data.CIFAR100, None, default_pair="resnet32x4-resnet8x4")
    c.dataset.update(name="synthetic", num_train=24, num_test=8, num_classes=10, image_size=16)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.num_epochs, c.total_steps = 8, 3, total_steps
    c.optimizer.milestones = (1,)   # lr changes after epoch 1: resume must pick the right one
    c.log_every_steps, c.tensorboard, c.progress_bar, c.export_model = 2, False, False, False
    return c


def train_steps_logged(workdir):
    import json
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


def test_sigterm_saves_and_resume_equals_uninterrupted(tmp_path, uninterrupted, monkeypatch):
    """SIGTERM during the run: the loop saves the current step and exits; resuming finishes."""
    wd = str(tmp_path)
    real_get_dataset = data.get_dataset

    def get_dataset(*args, **kwargs):
        ds = real_get_dataset(*args, **kwargs)
        real_train_batches = ds.train_batches

        def train_batches(epoch, global_batch_size, seed, start_step=0):
            for i, batch in enumerate(real_train_batches(epoch, global_batch_size, seed, start_step)):
                if epoch == 1 and start_step + i == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

        ds.train_batches = train_batches
        return ds

    monkeypatch.setattr(data, "get_dataset", get_dataset)
    summary, _ = trainer.train(tiny_config(5), wd)
    monkeypatch.undo()
    stopped = summary["steps"]
    assert not summary["finished"] and 1 <= stopped < 5
    assert Checkpointer(wd).latest_step() == stopped
    summary, state = trainer.train(tiny_config(5), wd)
    assert summary["finished"]
    steps = train_steps_logged(wd)
    assert steps == sorted(set(steps)) and steps[-1] == 5   # no step trained twice
    assert_states_equal(state, uninterrupted)


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
