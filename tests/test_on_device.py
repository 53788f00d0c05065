"""The training set on the devices (kd_jax.data.on_device) and k steps per call.

Expected values come from the host path (kd_jax.data.in_memory, numpy), which
tests/test_data.py checks against a per-example torchvision-style reference:
- the device batch equals the host batch of the same (seed, epoch, step) bit for bit
  (geometry, normalised float32 images, labels), with XLA's optimisations off and on; on 1
  device, on 2 simulated devices (a subprocess) and on 2 processes (jax.distributed over
  gloo, each process checking its own slice of the global batch);
- a run on the device path equals a run on the host path to 1e-6 (losses, every state leaf),
  in lockstep (two students, one gather shared), across an epoch end;
- k steps per call (the last call of each epoch padded to k and masked) equal k = 1 bit
  for bit, state and log records, and compile the train step once per run segment.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax import data, recipes
from kd_jax.data import augment, on_device
from kd_jax.train import config_validation, trainer
from kd_jax.train.config_validation import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import test_train_multihost as multihost  # noqa: E402  (its 2-process launcher)

# (seed, epoch, step) triples checked; batch 16 of 40 images: 2 steps per epoch.
CASES = [(0, 1, 0), (0, 1, 1), (3, 2, 0), (7, 5, 1)]


def synthetic(process_index=0, process_count=1, image_size=16):
    return data.get_dataset({"name": "synthetic", "num_train": 40, "num_test": 8,
                             "image_size": image_size, "num_classes": 10},
                            process_index=process_index, process_count=process_count)


def compare_batches(ds, mesh, batch_size=16):
    """Max ulp distance of the device batch from the host batch over CASES (0: asserts the
    geometry, the labels and the images are identical); the device batch is this host's
    slice."""
    train_set = on_device.put_on_mesh(ds, mesh)
    sharding = NamedSharding(mesh, P("data"))
    geometry = jax.jit(on_device.crop_flip_gather, out_shardings=sharding)
    batch = jax.jit(on_device.train_batch, out_shardings=sharding)
    images, _ = ds.train_arrays
    mean, std, pad = ds.augmentation
    worst = 0
    for seed, epoch, step in CASES:
        draws = on_device.pack_draws(
            [next(ds.train_draws(epoch, batch_size, seed, start_step=step))])[0]
        device_draws = data.to_global_array(draws, sharding)
        host = next(ds.train_batches(epoch, batch_size, seed, start_step=step))
        draw = next(ds.train_draws(epoch, batch_size, seed, start_step=step))
        local = lambda x: np.concatenate([np.asarray(s.data) for s in x.addressable_shards])
        np.testing.assert_array_equal(local(geometry(train_set, device_draws)),
                                      augment.pad_crop_flip(images[draw.index], draw.params, pad))
        got = batch(train_set, device_draws)
        assert got["image"].dtype == np.float32 and got["image"].shape[0] == batch_size
        np.testing.assert_array_equal(local(got["label"]), host["label"])
        np.testing.assert_array_equal(local(got["image"]), host["image"])
        worst = max(worst, int(np.max(np.abs(local(got["image"]).view(np.int32)
                                             - host["image"].view(np.int32)))))
    return worst


@pytest.mark.parametrize("optimized", [False, True])
def test_device_batch_equals_host_batch_one_device(optimized):
    """Also with XLA's optimisations on (the trainer's; the tests run with most of them off):
    there ``x * scale - shift`` in the step would be fused into one multiply-add, up to 128
    ulp from numpy's two roundings; the table lookup is exact either way."""
    ds = synthetic()
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", not optimized)
    jax.clear_caches()   # JAX's in-memory compile cache does not key on the flag
    try:
        compare_batches(ds, trainer.make_mesh())
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
        jax.clear_caches()
    # The crops reach into the padding (offsets 0 and 8 of 0..8) and both flips occur.
    draws = on_device.pack_draws(list(ds.train_draws(1, 16, 0)))
    assert {0, 8} <= set(draws[..., 1].ravel()) and set(draws[..., 3].ravel()) == {0, 1}


def test_geometry_is_the_host_gather_at_every_offset():
    """All 9 x 9 offsets and both flips on 32x32 images with distinct pixels."""
    ds = synthetic(image_size=32)
    images, _ = ds.train_arrays
    oy, ox, flip = np.meshgrid(np.arange(9), np.arange(9), [0, 1], indexing="ij")
    n = oy.size
    index = np.arange(n) % len(images)
    params = augment.CropFlipParams(oy.ravel(), ox.ravel(), flip.ravel().astype(bool))
    draws = np.stack([index, oy.ravel(), ox.ravel(), flip.ravel()], -1).astype(np.int32)
    train_set = on_device.put_on_mesh(ds, trainer.make_mesh())
    got = jax.jit(on_device.crop_flip_gather)(train_set, draws)
    np.testing.assert_array_equal(np.asarray(got),
                                  augment.pad_crop_flip(images[index], params, 4))


def test_train_set_is_rows_and_the_step_gathers_whole_rows():
    """The set is on the devices as uint8 rows (N, H*W*C); the compiled batch reads B whole
    rows (one gather of slice (1, 3072)), not B*H*W pixels of C bytes (slice (1, 1, 1, 3))."""
    ds = synthetic(image_size=32)
    train_set = on_device.put_on_mesh(ds, trainer.make_mesh())
    assert train_set.images.shape == (40, 32 * 32 * 3) and train_set.images.dtype == np.uint8
    draws = on_device.pack_draws([next(ds.train_draws(1, 16, 0))])[0]
    hlo = jax.jit(on_device.train_batch).lower(train_set, draws).compile().as_text()
    gathers = re.findall(r"= (\w+\[[\d,]*\])\S* gather\(.*?slice_sizes=\{([\d,]*)\}", hlo)
    assert ("u8[16,1,3072]", "1,3072") in gathers, gathers   # the rows of the batch
    assert not [g for g in gathers if g[1].endswith(",3") and g[1] != "1,32,32,3"], gathers
    # What the set takes on the device, as the runtime reports it (CPU: the logical bytes).
    assert on_device.held_bytes(train_set) == on_device.train_set_bytes(ds, "cpu") == 40 * 3076


def test_device_bytes_follow_the_tpu_tiling():
    """Expected bytes by hand: TPU pads the minor dimension to 128 lanes and the second-minor
    to 8 rows of 4 bytes (16 of 2, 32 of 1); CPU and GPU hold the logical bytes."""
    cifar100 = (50000, 32, 32, 3)
    assert on_device.device_bytes(cifar100, np.uint8, "gpu") == 153_600_000
    # As images: 3 bytes per pixel take 128 lanes; W = 32 rows of 1 byte fill one tile.
    assert on_device.device_bytes(cifar100, np.uint8, "tpu") == 50000 * 32 * 32 * 128
    # As rows: 3072 = 24 * 128 lanes; N rounded up to 32 rows.
    assert on_device.device_bytes((50000, 3072), np.uint8, "tpu") == 50016 * 3072
    assert on_device.device_bytes((50000,), np.int32, "tpu") == 50176 * 4
    assert on_device.device_bytes((5, 3), np.float32, "tpu") == 8 * 128 * 4
    assert on_device.device_bytes((5, 3), jax.numpy.bfloat16, "tpu") == 16 * 128 * 2
    assert on_device.device_bytes((2, 3, 200), np.uint8, "tpu") == 2 * 32 * 256
    ds = synthetic(image_size=32)    # 40 rows of 3072 bytes + 40 labels
    assert on_device.train_set_bytes(ds, "tpu") == 64 * 3072 + 1024 * 4
    print("CIFAR-100 train set per device: logical", 153_600_000 + 200_000, "B; on TPU as "
          "images", on_device.device_bytes(cifar100, np.uint8, "tpu"), "B, as rows",
          on_device.device_bytes((50000, 3072), np.uint8, "tpu"), "B")


def test_dispatches_chunk_the_draws_of_an_epoch():
    ds = synthetic()   # 40 images, batch 8: 5 steps per epoch
    reference = on_device.pack_draws(list(ds.train_draws(2, 8, 1)))
    chunks = list(on_device.dispatches(ds, 2, 8, 1, start_step=1, stop_step=5,
                                       steps_per_dispatch=3))
    assert [c.shape for c in chunks] == [(3, 8, 4), (1, 8, 4)]
    assert all(c.dtype == np.int32 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), reference[1:])
    with pytest.raises(ValueError, match="steps_per_dispatch=0"):
        next(on_device.dispatches(ds, 2, 8, 1, 0, 5, 0))


def test_auto_steps_per_dispatch():
    assert on_device.steps_per_dispatch(0, "cpu") == 1
    assert on_device.steps_per_dispatch(0, "gpu") == on_device.steps_per_dispatch(0, "tpu") == 8
    assert on_device.steps_per_dispatch(5, "cpu") == 5


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_budget_decides_the_default_path_on_accelerators(platform, monkeypatch):
    ds = synthetic()
    c = tiny_config(None, 1)
    assert trainer.use_on_device(c, ds, platform)
    monkeypatch.setattr(on_device, "DEVICE_BUDGET_BYTES",
                        on_device.train_set_bytes(ds, platform) - 1)
    assert not trainer.use_on_device(c, ds, platform)
    c.dataset.on_device = True
    assert trainer.use_on_device(c, ds, platform)


def test_the_default_path_on_a_cpu_is_the_host_path():
    """On a CPU the host path's augmentation overlaps with the step in the prefetch thread;
    the device path's runs on the step's cores (platform_defaults.on_device). True still
    forces the device path there."""
    ds = synthetic()
    c = tiny_config(None, 1)
    assert not trainer.use_on_device(c, ds, "cpu")
    c.dataset.on_device = True
    assert trainer.use_on_device(c, ds, "cpu")


@pytest.mark.parametrize("key,value,match", [
    ("steps_per_dispatch", -1, "steps_per_dispatch=-1"),
    ("dataset.on_device", "yes", "dataset.on_device='yes'"),
    ("dataset.input_threads", -1, "dataset.input_threads=-1: expected an integer >= 0"),
])
def test_bad_input_settings_name_the_key(key, value, match):
    c = tiny_config(None, 1)
    if key.startswith("dataset."):   # on_device: a bool FieldReference; bypass its type check
        c.dataset = dict(c.dataset.to_dict(), **{key.split(".")[1]: value})
    else:
        c[key] = value
    with pytest.raises(ConfigError, match=match):
        config_validation.validate(c)


def test_on_device_true_for_a_tf_data_set_is_an_error():
    c = recipes.build_config("kd", data.IMAGENET, None, default_pair="ResNet34-ResNet18")
    c.teacher.checkpoint = "random"
    c.dataset.on_device = True
    with pytest.raises(ConfigError, match="dataset.on_device=True: imagenet2012"):
        config_validation.validate(c)


# --- whole runs ------------------------------------------------------------------------------

def tiny_config(on, k, lockstep=False, total_steps=0):
    """SD-DKD (or SD-DKD + KD in lockstep), 40 images, batch 8: 5 steps per epoch, 2 epochs."""
    c = recipes.build_config("sdd", data.CIFAR100, None, default_pair="resnet32x4-ShuffleV1")
    if lockstep:
        kd = recipes.build_config("kd", data.CIFAR100, None, default_pair="resnet32x4-ShuffleV1")
        c.students = {"sdd": {"method": c.method}, "kd": {"method": kd.method}}
        del c.method
    c.dataset.update(name="synthetic", num_train=40, num_test=8, num_classes=10, image_size=16)
    c.dataset.on_device, c.steps_per_dispatch = on, k
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    c.batch_size, c.num_epochs, c.total_steps = 8, 2, total_steps
    c.log_every_steps, c.tensorboard, c.progress_bar, c.export_model = 1, False, False, False
    return c


def run(config, workdir, train_step_compiles=1):
    """(summary, state leaves, train records) of a run that compiles its train step (the
    on-device path's multi_step) `train_step_compiles` times."""
    with kd_jax.testing.compiled_programs() as names:
        summary, state = trainer.train(config, str(workdir))
    if config.dataset.on_device:
        assert names.count("jit(multi_step)") == train_step_compiles, names
    records = []
    for root, _, files in sorted(os.walk(workdir)):
        if "metrics.jsonl" in files:
            with open(os.path.join(root, "metrics.jsonl")) as fh:
                where = "" if root == str(workdir) else os.path.basename(root)
                records += [(where, r) for r in map(json.loads, fh)
                            if r["kind"] == "train"]
    return summary, [np.asarray(x) for x in jax.tree.leaves(state)], records


def losses(records):
    return {(where, r["step"]): r["loss"] for where, r in records}


def assert_leaves_close(a, b, atol):
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def test_device_path_equals_host_path_in_lockstep(tmp_path):
    _, host, host_log = run(tiny_config(False, 1, lockstep=True), tmp_path / "host")
    _, dev, dev_log = run(tiny_config(True, 1, lockstep=True), tmp_path / "device")
    assert sorted({w for w, _ in dev_log}) == ["kd", "sdd"]
    assert losses(dev_log).keys() == losses(host_log).keys() and len(dev_log) == 20
    np.testing.assert_allclose(list(losses(dev_log).values()), list(losses(host_log).values()),
                               rtol=0, atol=1e-6)
    assert_leaves_close(dev, host, 1e-6)


def assert_leaves_equal(a, b):
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("log_every", [1, 2])
def test_k_steps_per_call_equal_one(tmp_path, log_every):
    """k = 3 over 5-step epochs (calls of 3 and 2 steps, the last padded to 3 and masked),
    2 epochs: ONE compile of the train step, the state of k = 1 bit for bit, and the same
    log records (their steps, and the mean over the same steps, bit for bit), fetched at
    the calls' ends."""
    configs = [tiny_config(True, k) for k in (1, 3)]
    for c in configs:
        c.log_every_steps = log_every
    s1, one, one_log = run(configs[0], tmp_path / "k1")
    s3, three, three_log = run(configs[1], tmp_path / "k3")
    assert_leaves_equal(three, one)
    assert s3["last_top1"] == s1["last_top1"] and s3["steps"] == 10
    steps = {1: list(range(1, 11)), 2: [2, 4, 5, 6, 8, 10]}[log_every]
    assert [r["step"] for _, r in one_log] == [r["step"] for _, r in three_log] == steps
    for (_, a), (_, b) in zip(one_log, three_log):
        for key in ("loss", "top1", "ce", "lr", "grad_norm"):
            assert b[key] == a[key], key


def test_k_steps_stop_at_total_steps_and_resume(tmp_path):
    """total_steps=4 (mid-epoch, with k = 3: calls of 3 and 1), then resume to the end
    (calls of 1, 3 and 2): one compile per segment, the state of k = 1 bit for bit."""
    _, full, _ = run(tiny_config(True, 1), tmp_path / "full")
    s, _, _ = run(tiny_config(True, 3, total_steps=4), tmp_path / "split")
    assert s["steps"] == 4
    s, resumed, _ = run(tiny_config(True, 3), tmp_path / "split")
    assert s["steps"] == 10 and len(s["segments"]) == 2
    assert_leaves_equal(resumed, full)


def test_non_finite_loss_names_the_step_inside_a_call(tmp_path, monkeypatch):
    """A NaN at step 2 of a 3-step call is reported as step 2."""
    c = tiny_config(True, 3)
    real = on_device.train_batch

    def poisoned(train_set, draws):
        batch = real(train_set, draws)
        # The scan traces make_batch once for all its steps: step 2 is told by its draws.
        is_step_2 = jax.numpy.all(draws[:, 0] == second_index)
        return {**batch, "image": jax.numpy.where(is_step_2, np.nan, batch["image"])}

    ds = synthetic()
    second_index = jax.numpy.asarray(next(ds.train_draws(1, 8, 0, start_step=1)).index)
    monkeypatch.setattr(on_device, "train_batch", poisoned)
    with pytest.raises(trainer.NonFiniteLossError, match="at step 2 "):
        trainer.train(c, str(tmp_path))


# --- several devices, several processes -------------------------------------------------------

TWO_DEVICES = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    sys.path.insert(0, sys.argv[1])
    import test_on_device as t
    from kd_jax.train import trainer
    assert jax.device_count() == 2
    print("ULP", t.compare_batches(t.synthetic(), trainer.make_mesh()))
""")


def test_device_batch_equals_host_batch_two_devices(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(TWO_DEVICES)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), os.path.join(ROOT, "tests")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ULP " in proc.stdout


TWO_PROCESSES = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    from kd_jax.train import multihost
    multihost.initialize()
    sys.path.insert(0, sys.argv[3])
    import test_on_device as t
    from kd_jax.train import trainer
    ds = t.synthetic(jax.process_index(), jax.process_count())
    ulp = t.compare_batches(ds, trainer.make_mesh())
    print("RESULT " + json.dumps({"process": jax.process_index(),
                                  "processes": jax.process_count(), "ulp": ulp}), flush=True)
""")


def test_device_batch_equals_host_batch_two_processes(tmp_path):
    """Each process compares its own 8 of the 16 examples with its host path's slice."""
    script = tmp_path / "two_processes.py"
    script.write_text(TWO_PROCESSES)
    port = multihost.free_port()
    # start() passes (workdir, total_steps, out, multihost) as argv: argv[3] is our tests dir.
    results = multihost.finish([multihost.start(script, tmp_path, 0, os.path.join(ROOT, "tests"),
                                                process=i, port=port) for i in range(2)])
    assert sorted(r["process"] for r in results) == [0, 1]
    assert all(r["processes"] == 2 and r["ulp"] == 0 for r in results)


def test_rolled_and_unrolled_calls_equal_single_steps():
    """The rolled lax.scan (accelerators) and the unrolled one (CPU) of make_multi_train_step
    give the state and per-step metrics of 3 calls of make_train_step on the host's batches,
    and with live=2 the state of 2 calls (the third step masked)."""
    from flax import nnx

    from kd_jax.train import step as step_lib
    from kd_jax.train.state import make_optimizer

    c = tiny_config(True, 3)
    built = trainer.build(c, config_validation.validate(c), 10)
    ds = data.get_dataset(c.dataset)
    mesh = built.mesh
    students = {n: step_lib.StepStudent(s.graphdef, s.compute_loss)
                for n, s in built.students.items()}
    tx = make_optimizer(c.optimizer)
    teacher_graphdef, _ = nnx.split(trainer.load_teacher(c, 10))   # the run's (random) teacher
    train_set = on_device.put_on_mesh(ds, mesh)
    draws = data.to_global_array(on_device.pack_draws(list(ds.train_draws(1, 8, 0))[:3]),
                                 on_device.draws_sharding(mesh))
    lr, epoch = np.float32(0.01), np.int32(1)
    copy = lambda: jax.tree.map(lambda x: x.copy(), built.state)  # noqa: E731  (donated)

    state, metrics, after = copy(), [], []
    for batch in list(ds.train_batches(1, 8, 0))[:3]:
        state, m = built.train_step(state, built.teacher_state,
                                    data.to_global_array(batch, NamedSharding(mesh, P("data"))),
                                    lr, epoch)
        metrics.append(m)
        after.append([np.asarray(x) for x in jax.tree.leaves(state)])
    want = after[-1]
    want_loss = [float(m["student"]["loss"]) for m in metrics]
    for unroll in (False, True):
        multi = step_lib.make_multi_train_step(students, teacher_graphdef, tx, mesh,
                                               on_device.train_batch, unroll=unroll)
        got, m = multi(copy(), built.teacher_state, train_set, draws, np.int32(3), lr, epoch)
        assert m["student"]["loss"].shape == (3,)
        np.testing.assert_allclose(np.asarray(m["student"]["loss"]), want_loss, rtol=0,
                                   atol=1e-6)
        assert_leaves_close([np.asarray(x) for x in jax.tree.leaves(got)], want, 1e-6)
        two, _ = multi(copy(), built.teacher_state, train_set, draws, np.int32(2), lr, epoch)
        assert_leaves_close([np.asarray(x) for x in jax.tree.leaves(two)], after[1], 1e-6)


def test_uint8_host_batches_are_finished_in_the_step():
    """A dataset whose train batches are uint8 with flips (a device_normalization:
    imagenet2012, caltech_birds2011) trains as on the float32 batch finished in numpy
    (mirrored, then augment.normalize): the step mirrors and normalises them
    (on_device.host_batch_finisher)."""
    c = tiny_config(False, 1)
    plan = config_validation.validate(c)
    images, labels = synthetic().train_arrays
    images, labels = images[:8], labels[:8]
    flip = np.arange(8) % 3 == 0
    stats = (augment.IMAGENET_MEAN, augment.IMAGENET_STD)
    finished = augment.normalize(np.where(flip[:, None, None, None], images[:, :, ::-1],
                                          images), *stats)
    plain = trainer.build(c, plan, 10)
    uint8_set = type("Uint8Set", (), {"device_normalization": stats})()
    prepared = trainer.build(c, plan, 10,
                             prepare_batch=on_device.host_batch_finisher(uint8_set))
    assert on_device.host_batch_finisher(synthetic()) is None   # float32 host batches
    sharding = NamedSharding(plain.mesh, P("data"))
    lr, epoch = np.float32(0.01), np.int32(1)
    want, want_metrics = plain.train_step(
        plain.state, plain.teacher_state,
        data.to_global_array({"image": finished, "label": labels}, sharding), lr, epoch)
    got, got_metrics = prepared.train_step(
        prepared.state, prepared.teacher_state,
        data.to_global_array({"image": images, "label": labels, "flip": flip}, sharding), lr,
        epoch)
    np.testing.assert_allclose(float(got_metrics["student"]["loss"]),
                               float(want_metrics["student"]["loss"]), rtol=0, atol=1e-6)
    assert_leaves_close([np.asarray(x) for x in jax.tree.leaves(got)],
                        [np.asarray(x) for x in jax.tree.leaves(want)], 1e-6)
