"""Defaults by platform (kd_jax.train.platform_defaults), the test set on the devices
(kd_jax.data.device_test_set) and checkpoints by time.

No accelerator runs here: what a CPU can show is that the choices are what the table says,
that results do not depend on them (the device test set's batches equal the host path's bit
for bit, with and without XLA's optimisations; evaluation sums are identical for any
evaluation batch), and how many calls and bytes an evaluation takes. Expected batches come
from the host path (kd_jax.data.in_memory, numpy; tests/test_data.py checks it against a
torchvision-style reference).
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax import data, models, recipes
from kd_jax.data import device_test_set, on_device
from kd_jax.train import config_validation, platform_defaults, trainer
from kd_jax.train.config_validation import ConfigError
from kd_jax.train.step import make_eval_step, make_mesh

NUM_TEST = 37   # not a multiple of any batch below: the last batch is padded


def synthetic():
    return data.get_dataset({"name": "synthetic", "num_train": 16, "num_test": NUM_TEST,
                             "image_size": 8, "num_classes": 10})


def test_defaults_by_platform():
    cifar, imagenet = (32, 32, 3), (224, 224, 3)
    eval_batch = platform_defaults.eval_batch_size
    # CPU: as before (the train batch), capped by the test set padded to the devices.
    assert eval_batch(0, 64, cifar, "cpu", 10_000, 1) == 64
    assert eval_batch(0, 64, cifar, "cpu", 50, 4) == 52
    # GPU/TPU: 1024 for small images (at least the train batch), the train batch for large.
    assert eval_batch(0, 64, cifar, "gpu", 10_000, 1) == 1024
    assert eval_batch(0, 2048, cifar, "tpu", 10_000, 8) == 2048
    assert eval_batch(0, 64, cifar, "tpu", 10_000, 3) == 1023   # a multiple of the devices
    assert eval_batch(0, 256, imagenet, "gpu", 50_000, 1) == 256
    assert eval_batch(0, 64, cifar, "gpu", 500, 1) == 500
    assert eval_batch(128, 64, cifar, "gpu", 10_000, 1) == 128  # explicit values win
    every_epochs, every_minutes = (platform_defaults.checkpoint_every_epochs,
                                   platform_defaults.checkpoint_every_minutes)
    assert (every_epochs(None, "cpu"), every_minutes(None, "cpu")) == (1, 0.0)
    assert (every_epochs(None, "gpu"), every_minutes(None, "tpu")) == (0, 10.0)
    assert (every_epochs(3, "gpu"), every_minutes(0, "gpu")) == (3, 0.0)


@pytest.mark.parametrize("key,value,match", [
    ("checkpoint_every_epochs", -1, r"^checkpoint_every_epochs=-1: expected an integer >= 0"),
    ("checkpoint_every_minutes", -0.5, r"^checkpoint_every_minutes=-0.5: expected a number"),
])
def test_bad_checkpoint_intervals_name_the_key(key, value, match):
    c = tiny_config()
    c[key] = value
    with pytest.raises(ConfigError, match=match):
        config_validation.validate(c)


def device_batches(ds, mesh, batch_size):
    test_set = device_test_set.put_on_mesh(ds, mesh, batch_size)
    batch = jax.jit(device_test_set.eval_batch)
    return test_set, [jax.device_get(batch(test_set, np.int32(i)))
                      for i in range(test_set.num_batches)]


@pytest.mark.parametrize("optimized", [False, True])
def test_device_test_batches_equal_host_batches(optimized):
    """Images, labels and masks bit for bit, the padding included, with XLA's optimisations
    on (the trainer's) and off (the tests'): a multiply-add in the step would differ."""
    ds, mesh = synthetic(), make_mesh()
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", not optimized)
    jax.clear_caches()   # JAX's in-memory compile cache does not key on the flag
    try:
        test_set, got = device_batches(ds, mesh, 16)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
        jax.clear_caches()
    want = list(ds.eval_batches(16))
    assert len(got) == len(want) == 3 and test_set.rows.dtype == np.uint8
    for g, w in zip(got, want):
        assert g["image"].dtype == np.float32 and g["image"].shape == (16, 8, 8, 3)
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def test_normalize_table_is_the_host_normalize():
    mean, std, _ = synthetic().augmentation
    table = on_device.normalize_table(mean, std).reshape(3, 256)
    levels = np.arange(256, dtype=np.uint8)
    for c in range(3):
        want = data.augment.normalize(np.stack([levels] * 3, -1), mean, std)[:, c]
        np.testing.assert_array_equal(table[c], want)


def test_evaluation_sums_equal_for_any_batch_and_path():
    """The eval step's top-1/top-5/count sums of a (random) model: host batches of 16, the
    device test set in batches of 16 and of 40 (the whole set, padded) agree exactly, in
    3, 3 and 1 calls; the device path moves no image at evaluation time."""
    ds, mesh = synthetic(), make_mesh()
    model = models.create("tiny_cnn", 10, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    students = {"s": (params, rest)}
    host_step = make_eval_step({"s": graphdef}, mesh)
    device_step = make_eval_step({"s": graphdef}, mesh, make_batch=device_test_set.eval_batch)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def total(sums):
        return {k: float(np.sum([s["s"][k] for s in jax.device_get(sums)]))
                for k in ("top1", "top5", "count")}

    host = [host_step(students, b) for b in data.prefetch_to_mesh(ds.eval_batches(16), sharding)]
    results = {"host 16": (total(host), len(host))}
    for size in (16, 40):
        test_set = device_test_set.put_on_mesh(ds, mesh, size)
        sums = [device_step(students, test_set, np.int32(i)) for i in range(test_set.num_batches)]
        results[f"device {size}"] = (total(sums), len(sums))
        # Once, uint8: a quarter of the float32 the host path sends at every evaluation.
        assert test_set.rows.nbytes == test_set.num_batches * size * 8 * 8 * 3
    assert results["host 16"][0]["count"] == NUM_TEST
    assert 0 < results["host 16"][0]["top5"] < NUM_TEST   # not a trivial model
    assert {r for r, _ in [(json.dumps(t, sort_keys=True), n) for t, n in results.values()]} \
        == {json.dumps(results["host 16"][0], sort_keys=True)}
    assert [n for _, n in results.values()] == [3, 3, 1]


# --- whole runs ------------------------------------------------------------------------------

def tiny_config():
    """SD-DKD, 40 images, batch 8 (5 steps per epoch), 2 epochs, on the devices."""
    c = recipes.build_config("sdd", data.CIFAR100, None, default_pair="resnet32x4-ShuffleV1")
    c.dataset.update(name="synthetic", num_train=40, num_test=NUM_TEST, num_classes=10,
                     image_size=16)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.num_epochs = 8, 2
    c.log_every_steps, c.tensorboard, c.progress_bar, c.export_model = 2, False, False, False
    return c


def test_checkpoints_by_time_and_the_cpu_header(tmp_path, capsys):
    """checkpoint_every_epochs=0 and a timer that runs out at once: a checkpoint at every
    sync point (log points 2, 4, 6, 8, 10 and epoch ends 5, 10), none elsewhere; the run's
    header states the evaluation and checkpoint settings."""
    c = tiny_config()
    c.checkpoint_every_epochs, c.checkpoint_every_minutes = 0, 1e-9
    c.keep_checkpoints = 20
    summary, _ = trainer.train(c, str(tmp_path / "timed"))
    assert summary["finished"]
    saved = sorted(int(d) for d in os.listdir(tmp_path / "timed" / "checkpoints") if d.isdigit())
    assert saved == [2, 4, 5, 6, 8, 10]
    # The CPU defaults: the host path, evaluation in batches of batch_size, a checkpoint
    # every epoch.
    capsys.readouterr()
    c = tiny_config()
    c.keep_checkpoints = 20
    trainer.train(c, str(tmp_path / "default"))
    out = "".join(capsys.readouterr())
    assert ("evaluation batch 8 (from the host); checkpoints every 1 epoch(s), at "
            "the end and at stops") in out
    saved = sorted(int(d) for d in os.listdir(tmp_path / "default" / "checkpoints")
                   if d.isdigit())
    assert saved == [5, 10]
