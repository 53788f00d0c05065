"""bfloat16 compute (config.compute_dtype='bfloat16'): the models run in bf16, everything the
run keeps stays float32.

- A bf16 run trains, and its loss stays within TOLERANCE (relative) of the float32 run on
  the same batches, over every one of the first steps.
- Parameters, BatchNorm statistics, optimizer state and step metrics are float32 in memory,
  and so are the arrays written to checkpoints and to the exported model (read back from
  the files' metadata); the convolutions of the bf16 step really are bf16.
- BatchNorm computes its statistics in float32 from a bf16 input (compared with float64).

TOLERANCE = 2**-7, one bfloat16 ulp at 1 (bf16 keeps 8 significant bits): a bf16 loss
cannot be asked to be closer to the float32 loss than a single bf16 number is to its
float32 value. The losses are computed in float32 from bf16 activations whose rounding
errors (2**-9 relative each) largely average out over the batch and the classes; measured
on this CPU the relative difference stays under 5e-4 over 12 SD-DKD steps of resnet8 (about
15x below the tolerance) and under 1.5e-4 for the tiny CNN. Over many steps the
trajectories diverge as any two floating-point runs do: only the first steps are compared.
"""

import jax
import jax.numpy as jnp
import chex
import numpy as np
import orbax.checkpoint as ocp
import pytest

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax import data, recipes
from kd_jax.models import layers
from kd_jax.train import config_validation, trainer
from kd_jax.testing import random_batch

TOLERANCE = 2.0 ** -7
LR, EPOCH = np.float32(0.05), np.int32(30)   # epoch 30: SD-DKD's 20-epoch warmup is over

# (student, teacher, image size, steps): the tiny test CNN and a model of the zoo.
CASES = {"tiny_cnn": ("tiny_cnn", "tiny_cnn_wide", 16, 8),
         "resnet8": ("resnet8", "resnet8", 32, 12)}
# What "trains" asks of each case on its fixed batch, in both dtypes: the lowest of the last
# 4 losses below `ratio` x the first, and the batch top-1 up by `gain` (measured: tiny_cnn
# 0.89 and +0.16, resnet8 0.59 and +0.75).
TRAINS = {"tiny_cnn": {"ratio": 0.95, "gain": 0.1}, "resnet8": {"ratio": 0.75, "gain": 0.5}}


def sdd_config(student, teacher, dtype, image_size):
    c = recipes.build_config("sdd", data.CIFAR100, None, default_pair="resnet32x4-resnet8x4")
    c.dataset.update(name="synthetic", num_train=48, num_test=16, num_classes=10,
                     image_size=image_size)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = student, teacher, "random"
    c.compute_dtype = dtype
    return c


def fixed_batch_run(case, dtype):
    """`steps` SD-DKD steps of the trainer's jitted step on one fixed random batch of 32."""
    student, teacher, size, steps = CASES[case]
    c = sdd_config(student, teacher, dtype, size)
    built = trainer.build(c, config_validation.validate(c), 10)
    batch = random_batch(built.mesh, 32, 10, size)
    hlo = built.train_step.lower(built.state, built.teacher_state, batch, LR, EPOCH).as_text()
    state, history = built.state, []
    for _ in range(steps):
        state, metrics = built.train_step(state, built.teacher_state, batch, LR, EPOCH)
        history.append(metrics["student"])
    return {"state": state, "metrics": jax.device_get(history), "hlo": hlo}


@pytest.fixture(scope="module", params=sorted(CASES))
def runs(request):
    return {"case": request.param,
            **{dtype: fixed_batch_run(request.param, dtype) for dtype in ("float32", "bfloat16")}}


def losses(run):
    return np.array([float(m["loss"]) for m in run["metrics"]])


def test_bf16_loss_tracks_float32(runs):
    l32, l16 = losses(runs["float32"]), losses(runs["bfloat16"])
    assert np.all(np.isfinite(l16))
    rel = np.abs(l16 - l32) / np.abs(l32)
    assert np.max(rel) <= TOLERANCE, rel
    # bf16 compute is really in use: the losses are not bit-identical.
    assert np.any(l16 != l32)


def test_bf16_run_trains(runs):
    """On a fixed batch the student starts to fit it: the loss falls, the batch top-1 rises."""
    want = TRAINS[runs["case"]]
    for dtype in ("float32", "bfloat16"):
        l = losses(runs[dtype])
        top1 = [float(m["top1"]) for m in runs[dtype]["metrics"]]
        assert np.min(l[-4:]) < want["ratio"] * l[0], (dtype, l)
        assert top1[-1] >= top1[0] + want["gain"], (dtype, top1)


def test_bf16_state_and_metrics_are_float32(runs):
    s32, s16 = runs["float32"]["state"], runs["bfloat16"]["state"]
    chex.assert_trees_all_equal_dtypes(s16, s32)
    chex.assert_trees_all_equal_shapes(s16, s32)
    student = s16.students["student"]
    for part in (student.params, student.model_state, student.opt_state):
        floats = [x for x in jax.tree.leaves(part) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats
        chex.assert_type(floats, jnp.float32)
    for m in runs["bfloat16"]["metrics"]:
        chex.assert_type(list(m.values()), np.float32)


def _convolution_types(hlo):
    """The element types of the results of the StableHLO convolutions of a program."""
    lines = [l for l in hlo.splitlines() if "stablehlo.convolution" in l]
    return {t for l in lines for t in ("bf16", "f32") if f"x{t}>" in l.rsplit("->", 1)[-1]}


def test_bf16_step_convolves_in_bf16(runs):
    assert _convolution_types(runs["bfloat16"]["hlo"]) == {"bf16"}
    assert _convolution_types(runs["float32"]["hlo"]) == {"f32"}


def test_batchnorm_statistics_in_float32_from_bf16_input():
    rng = np.random.default_rng(0)
    # Large mean and small spread: bf16 sums or squares would lose them (8 bits).
    x = jnp.asarray(100.0 + rng.normal(size=(64, 4, 4, 3)), jnp.bfloat16)
    bn = layers.BatchNorm(3, dtype=jnp.bfloat16)
    y = bn(x)
    assert y.dtype == jnp.bfloat16
    assert bn.mean[...].dtype == bn.var[...].dtype == jnp.float32
    xd = np.asarray(x, np.float64).reshape(-1, 3)   # the exact values the layer received
    n = xd.shape[0]
    mean, var = xd.mean(0), xd.var(0)
    np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    expected = (xd - mean) / np.sqrt(var + 1e-5)
    # The output is the float32 result rounded once to bf16 (relative error <= 2**-9).
    np.testing.assert_allclose(np.asarray(y, np.float64).reshape(-1, 3), expected,
                               rtol=2.0 ** -8, atol=1e-3)


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet8"])
def test_bf16_classifier_head_is_float32(arch):
    """Under bf16 compute the head is a float32 matmul of the (bf16) pooled features: the
    logits equal the float64 product to float32 rounding (a bf16 matmul misses by ~1e-3),
    and the program's last dot_general takes float32 operands."""
    from flax import nnx

    from kd_jax import models

    model = models.create(arch, 10, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    model.eval()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 3)), jnp.bfloat16)
    graphdef, variables = nnx.split(model)
    forward = lambda v, images: nnx.merge(graphdef, v)(images)  # noqa: E731
    logits, features = jax.jit(forward)(variables, x)
    assert features["pooled"].dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    pooled = np.asarray(features["pooled"], np.float64)
    kernel, bias = (np.asarray(v[...], np.float64) for v in (model.head.kernel, model.head.bias))
    want = pooled @ kernel + bias
    np.testing.assert_allclose(np.asarray(logits), want, rtol=0,
                               atol=1e-6 * np.max(np.abs(want)))
    jaxpr = jax.make_jaxpr(forward)(variables, x)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert [v.aval.dtype for v in dots[-1].invars] == [jnp.float32, jnp.float32]


def _saved_dtypes(directory):
    tree = ocp.StandardCheckpointer().metadata(directory).item_metadata.tree
    return {jax.tree_util.keystr(path): np.dtype(m.dtype)
            for path, m in jax.tree_util.tree_leaves_with_path(tree)}


def test_bf16_checkpoint_and_export_are_float32(tmp_path):
    c = sdd_config("tiny_cnn", "tiny_cnn_wide", "bfloat16", 16)
    c.batch_size, c.num_epochs, c.total_steps = 16, 1, 2
    c.log_every_steps, c.tensorboard, c.progress_bar = 1, False, False
    summary, state = trainer.train(c, str(tmp_path))
    assert summary["finished"] and np.isfinite(summary["last_top1"])
    saved = _saved_dtypes(str(tmp_path / "checkpoints" / "2" / "state"))
    exported = _saved_dtypes(str(tmp_path / trainer.FINAL_MODEL_DIR / "state"))
    # Every array of the state is on disk: one entry per leaf, floats in float32.
    assert len(saved) == len(jax.tree.leaves(state))
    floats = {k: v for k, v in saved.items() if np.issubdtype(v, np.floating)}
    assert any("opt_state" in k for k in floats) and any("model_state" in k for k in floats)
    assert set(floats.values()) == {np.dtype(np.float32)}
    assert len(exported) == 12   # tiny_cnn: 2 convs, 2 BN (4 each), fc (2)
    assert set(exported.values()) == {np.dtype(np.float32)}
