"""final_model/ and best_model/: each holds its own weights and the accuracy of THOSE weights.

A tiny KD run (tiny_cnn <- random tiny_cnn_wide, synthetic data, a high lr so that the test
accuracy goes down after its best epoch) exports:
- final_model/: the last step's weights; teacher.json top1/top5/epoch/step = the LAST
  evaluation's (the run evaluates after its last step);
- best_model/: the weights of the best evaluation (mdistiller's student_best), with that
  evaluation's accuracy, epoch and step.
Both load as teachers; each model's top-1, counted here from its own logits on the test set,
equals the top1 its teacher.json records. A run stopped after its best epoch and resumed
writes the same best_model as an uninterrupted run.
"""

import json
import os

import jax
import numpy as np
import pytest

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax import convert, data, recipes
from kd_jax.train import trainer

EPOCHS, NUM_TRAIN, NUM_TEST, BATCH = 6, 32, 40, 8
STEPS_PER_EPOCH = NUM_TRAIN // BATCH


def config(total_steps=0):
    c = recipes.build_config("kd", data.CIFAR100, None, default_pair="resnet32x4-resnet8x4")
    c.dataset.update(name="synthetic", num_train=NUM_TRAIN, num_test=NUM_TEST, num_classes=10,
                     image_size=16)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.eval_batch_size, c.num_epochs, c.total_steps = BATCH, BATCH, EPOCHS, total_steps
    c.optimizer.lr, c.optimizer.milestones = 0.5, (EPOCHS - 1,)
    c.seed = 3
    c.log_every_steps, c.tensorboard, c.progress_bar, c.export_model = 4, False, False, True
    return c


def meta(path):
    with open(os.path.join(path, "teacher.json")) as fh:
        return json.load(fh)


def counted_top1(model_dir):
    """Top-1 (%) of the saved model on the test set, counted here from its logits."""
    model = convert.load_converted(model_dir)
    ds = data.get_dataset(config().dataset)
    correct = total = 0
    for batch in ds.eval_batches(BATCH):
        logits, _ = model(batch["image"])
        hit = np.argmax(np.asarray(logits), axis=-1) == batch["label"]
        correct += int(np.sum(hit * batch["mask"]))
        total += int(np.sum(batch["mask"]))
    assert total == NUM_TEST
    return 100.0 * correct / total


def leaves(model_dir):
    model = convert.load_converted(model_dir)
    from flax import nnx
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat)))]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("uninterrupted"))
    summary, state = trainer.train(config(), wd)
    return wd, summary, state


def test_final_and_best_models_hold_their_own_accuracy(run):
    wd, summary, state = run
    history = summary["history"]
    assert len(history) == EPOCHS
    best = max(history, key=lambda h: h["top1"])
    last = history[-1]
    # The run is chosen so that the best epoch is not the last (else the test is vacuous).
    assert best["top1"] > last["top1"], history

    final = meta(os.path.join(wd, "final_model"))
    assert (final["epoch"], final["step"], final["top1"], final["top5"]) == (
        last["epoch"], last["step"], last["top1"], last["top5"])
    assert final["weights"] == "final_model" and final["arch"] == "tiny_cnn"
    best_meta = meta(os.path.join(wd, "best_model"))
    assert (best_meta["epoch"], best_meta["step"], best_meta["top1"], best_meta["top5"]) == (
        best["epoch"], best["step"], best["top1"], best["top5"])
    assert best_meta["weights"] == "best_model" and best_meta["epoch"] == summary["best_epoch"]

    # Each model's accuracy is its own: counted from its weights here.
    assert counted_top1(os.path.join(wd, "final_model")) == pytest.approx(final["top1"], abs=1e-9)
    assert counted_top1(os.path.join(wd, "best_model")) == pytest.approx(best["top1"], abs=1e-9)
    # final_model holds the last step's weights (those of the returned state).
    params = state.students["student"].params["model"]
    from flax import nnx
    want = [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(params))]
    got = convert.load_converted(os.path.join(wd, "final_model"))
    got = [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(got, nnx.Param)))]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)

    # Both load as teachers (the trainer's loader, arch and classes checked).
    for name in ("final_model", "best_model"):
        convert.load_teacher(os.path.join(wd, name), "tiny_cnn", 10)
    # The summary says which is which.
    assert summary["final_model"]["epoch"] == last["epoch"]
    assert summary["final_model"]["top1"] == last["top1"]
    assert summary["best_model"]["epoch"] == best["epoch"]
    assert summary["best_model"]["top1"] == best["top1"]
    assert summary["best_model"]["path"] == os.path.join(wd, "best_model")
    assert not any(os.path.exists(os.path.join(wd, d + s)) for d in ("final_model", "best_model")
                   for s in (".tmp", ".old"))


def test_best_model_survives_a_stop_and_resume(run, tmp_path):
    """Stopped after the best epoch's evaluation (the best_model of that segment written),
    resumed to the end: the same best_model (weights and record) as the uninterrupted run."""
    wd_ref, summary_ref, _ = run
    best_epoch = summary_ref["best_epoch"]
    assert best_epoch < EPOCHS
    wd = str(tmp_path)
    trainer.train(config(total_steps=best_epoch * STEPS_PER_EPOCH + 1), wd)
    summary, _ = trainer.train(config(), wd)
    assert len(summary["segments"]) == 2 and summary["finished"]
    assert meta(os.path.join(wd, "best_model")) == meta(os.path.join(wd_ref, "best_model"))
    for a, b in zip(leaves(os.path.join(wd, "best_model")),
                    leaves(os.path.join(wd_ref, "best_model"))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_train_records_hold_the_pre_clip_gradient_norm(run):
    """metrics.jsonl train records (4 steps each here): grad_norm, the mean pre-clip norm of
    the record's steps, and grad_norm_max, the largest, which is >= the mean."""
    wd, _, _ = run
    with open(os.path.join(wd, "metrics.jsonl")) as fh:
        train = [r for r in map(json.loads, fh) if r["kind"] == "train"]
    assert len(train) == EPOCHS * STEPS_PER_EPOCH // 4
    assert all(0 < r["grad_norm"] <= r["grad_norm_max"] for r in train)
    assert any(r["grad_norm"] < r["grad_norm_max"] for r in train)
