"""MSDCRD as a method of the trainer (kd_jax.methods.msdcrd, kd_jax/configs/cifar_msdcrd.py).

Expected values are written out here, not read back from kd_jax: the pre-pool map of every
CIFAR model (from the reference dumps in tests/data/torch_state_dicts/*.txt: the map the
final pool sees, i.e. the last stage for ResNets, VGG and ShuffleV1; WRN's relu(bn1(...)) of
the last block, same size; MobileNetV2's conv2 output 1280 x 2x2 and ShuffleV2's 1024 x 4x4,
the pooled_feat widths), the windows they give, the pairs' lr (KD's recipe) and the reconstruction's
MSDCRD defaults. The loss the trainer builds is compared with `msdcrd_objective` called
with those values and with the numpy loop reference of tests/test_losses_msdcrd.py.
"""

import json
import os
import subprocess
import sys

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
import test_losses_msdcrd as np_ref
import test_losses_reference as ref
from kd_jax import convert, losses, methods, models, recipes
from kd_jax.train import config_validation, trainer
from kd_jax.train.checkpoint import Checkpointer
from kd_jax.train.config_validation import ConfigError
from kd_jax.train.state import param_count

from test_recipes import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- the reference, written out --------------------------------------------------------------

# (H, W, C) of features["pre_pool"] on 32x32 inputs (the dumps' last feats entry, or for
# MobileNetV2 / ShuffleV2 the head conv's width = pooled_feat at the last stage's size).
PRE_POOL = {
    "resnet20": (8, 8, 64), "resnet32": (8, 8, 64), "resnet56": (8, 8, 64),
    "resnet110": (8, 8, 64), "resnet8x4": (8, 8, 256), "resnet32x4": (8, 8, 256),
    "wrn_16_2": (8, 8, 128), "wrn_40_1": (8, 8, 64), "wrn_40_2": (8, 8, 128),
    "vgg8": (4, 4, 512), "vgg13": (4, 4, 512), "ResNet50": (4, 4, 2048),
    "MobileNetV2": (2, 2, 1280), "ShuffleV1": (4, 4, 960), "ShuffleV2": (4, 4, 1024),
}
W124, W12 = (1, 2, 4), (1, 2)   # (1, 2, 4) clipped to the smaller map: 8 or 4 -> all; 2 -> (1, 2)
# pair: (lr of the pair: mdistiller's KD/DKD configs, 0.01 for ShuffleNet/MobileNetV2
# students; windows)
CIFAR = {
    "resnet56-resnet20": (0.05, W124), "resnet110-resnet32": (0.05, W124),
    "resnet32x4-resnet8x4": (0.05, W124), "wrn_40_2-wrn_16_2": (0.05, W124),
    "wrn_40_2-wrn_40_1": (0.05, W124), "vgg13-vgg8": (0.05, W124),
    "resnet32x4-ShuffleV1": (0.01, W124), "resnet32x4-ShuffleV2": (0.01, W124),
    "wrn_40_2-ShuffleV1": (0.01, W124), "vgg13-MobileNetV2": (0.01, W12),
    "ResNet50-MobileNetV2": (0.01, W12), "ResNet50-vgg8": (0.05, W124),
    "wrn_40_2-vgg8": (0.05, W124), "wrn_40_2-MobileNetV2": (0.01, W12),
    "resnet32x4-MobileNetV2": (0.01, W12), "ResNet50-ShuffleV1": (0.01, W124),
}
# The MSDCRD reconstruction: 1.0*CE + 0.8*(sample + feature), tau 0.07, complementary weight 2,
# optional KD at T=4 (off), parameter-free embedding, projection heads of 128 dims.
DEFAULTS = dict(name="msdcrd", tau=0.07, complementary_weight=2.0, ce_weight=1.0,
                contrastive_weight=0.8, kd_weight=0.0, temperature=4.0, embedding="logits",
                projection_dim=128, chunk_size=0)


def msdcrd_config(pair="resnet32x4-ShuffleV1", **method):
    c = load_config("cifar_msdcrd", pair)
    c.teacher.checkpoint = "random"
    for key, value in method.items():
        c.method[key] = value
    return c


def compute_loss_of(config):
    (plan,) = config_validation.validate(config, num_devices=1, check_files=False).students
    return plan


# --- 1. the resolved config ------------------------------------------------------------------

def test_every_pair_resolves_the_recipe():
    """One test for all pairs, so that one worker traces the model shapes (cached)."""
    for arch, shape in PRE_POOL.items():
        assert models.pre_pool_shape(arch, 100, 32) == shape, arch
    for pair, (lr, windows) in CIFAR.items():
        c = load_config("cifar_msdcrd", pair)
        assert c.method.to_dict() == {**DEFAULTS, "windows": windows}, pair
        teacher, student = pair.split("-")
        assert (c.teacher.arch, c.student.arch, c.dataset.name) == (teacher, student,
                                                                    "cifar100")
        o = c.optimizer
        assert (o.lr, o.weight_decay, tuple(o.milestones), o.momentum, o.decay_rate) == (
            lr, 5e-4, (150, 180, 210), 0.9, 0.1), pair
        assert (c.num_epochs, c.batch_size, o.schedule) == (240, 64, "multistep"), pair


def test_the_config_offers_exactly_the_cifar_pairs():
    assert {f"{t}-{s}" for t, s in recipes.pairs("cifar100", "msdcrd")} == set(CIFAR)
    assert recipes.pairs("imagenet2012", "msdcrd") == []
    assert recipes.pairs("caltech_birds2011", "msdcrd") == []
    assert load_config("cifar_msdcrd").recipe == "resnet32x4-ShuffleV1"
    with pytest.raises(ValueError, match="unknown cifar100 pair 'resnet8-resnet9' for MSDCRD"):
        load_config("cifar_msdcrd", "resnet8-resnet9")


# --- 2. the objective the trainer builds -----------------------------------------------------

BATCH, K = 4, 10
S_SHAPE, T_SHAPE = (4, 4, 6), (8, 8, 9)   # heterogeneous: student 4x4 C=6, teacher 8x8 C=9


def _outputs(seed, s_shape=S_SHAPE, t_shape=T_SHAPE):
    r = np.random.default_rng(seed)

    def out(shape, scale):
        pre = np.abs(r.normal(size=(BATCH, *shape))).astype(np.float32)
        kernel = (scale * r.normal(size=(shape[2], K))).astype(np.float32)
        bias = r.normal(size=(K,)).astype(np.float32)
        logits = pre.mean(axis=(1, 2)) @ kernel + bias
        return methods.ModelOutput(logits, {"pre_pool": pre}, (kernel, bias))

    student, teacher = out(s_shape, 2.0), out(t_shape, 3.0)
    labels = r.integers(0, K, BATCH).astype(np.int32)
    dim = DEFAULTS["projection_dim"]
    extra = {"student": ((0.5 * r.normal(size=(s_shape[2], dim))).astype(np.float32),
                         (0.1 * r.normal(size=(dim,))).astype(np.float32)),
             "teacher": ((0.5 * r.normal(size=(t_shape[2], dim))).astype(np.float32),
                         (0.1 * r.normal(size=(dim,))).astype(np.float32))}
    return student, teacher, labels, extra


def reference(student, teacher, labels, extra, windows, projection, chunk_size=None,
              kd_weight=0.0):
    """msdcrd_objective with the values written above (no trainer code)."""
    s_head, t_head = (extra["student"], extra["teacher"]) if projection else (student.head,
                                                                              teacher.head)
    return losses.msdcrd_objective(
        student.logits, teacher.logits, labels, student.features["pre_pool"],
        teacher.features["pre_pool"], s_head, t_head, teacher_local_classifier=teacher.head,
        windows=windows, tau=0.07, complementary_weight=2.0, chunk_size=chunk_size,
        ce_weight=1.0, contrastive_weight=0.8, kd_weight=kd_weight, temperature=4.0,
        teacher_head_trainable=projection)


def _with(student, s_map, s_head):
    """The student's outputs with a new map/head (the logits follow the map)."""
    logits = s_map.mean(axis=(1, 2)) @ s_head[0] + s_head[1]
    return methods.ModelOutput(logits, {"pre_pool": s_map}, s_head)


def value_and_grads(fn):
    """jit((student, teacher, labels, extra, epoch) -> (value, terms, gradients w.r.t. the
    student's map and head and `extra`)); the epoch is traced (one compile for all)."""
    @jax.jit
    def run(student, teacher, labels, extra, epoch):
        def loss(s_map, s_head, extra):
            return fn(_with(student, s_map, s_head), teacher, labels, epoch, extra)
        (value, terms), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            student.features["pre_pool"], student.head, extra)
        return value, terms, grads
    return run


def _assert_trees_close(got, want, rtol, atol=0.0):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


@pytest.mark.parametrize("pair,embedding", [("resnet32x4-ShuffleV1", "logits"),
                                            ("resnet32x4-ShuffleV1", "projection"),
                                            ("vgg13-MobileNetV2", "logits"),
                                            ("vgg13-MobileNetV2", "projection")])
def test_trainer_objective_equals_the_reference(pair, embedding):
    """Value, terms and gradients (student map and head, projection heads) at epochs 1/10/30;
    the terms against the numpy loop reference."""
    projection = embedding == "projection"
    plan = compute_loss_of(msdcrd_config(pair, embedding=embedding))
    windows = CIFAR[pair][1]
    # vgg13-MobileNetV2 windows (1, 2) on 2x2 student maps; the other pair on 4x4.
    s_shape = (2, 2, 6) if windows == W12 else S_SHAPE
    student, teacher, labels, extra = _outputs(len(pair), s_shape=s_shape)
    extra_arg = extra if projection else None
    trained = value_and_grads(plan.spec.build(plan.hparams))
    library = value_and_grads(lambda s, t, y, _, x: reference(s, t, y, x, windows, projection))
    for epoch in (1, 10, 30):
        e = np.int32(epoch)
        got, got_terms, got_grads = trained(student, teacher, labels, extra_arg, e)
        want, want_terms, want_grads = library(student, teacher, labels, extra_arg, e)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6, err_msg=f"epoch {epoch}")
        assert set(got_terms) == set(want_terms) == {"ce", "sample", "feature"}
        _assert_trees_close(got_terms, want_terms, rtol=1e-6)
        _assert_trees_close(got_grads, want_grads, rtol=1e-5, atol=1e-7)
    if projection:  # both projection heads learn; the teacher's too (CRD-style)
        for side in ("student", "teacher"):
            assert all(np.any(np.asarray(g)) for g in got_grads[2][side]), side
    # The terms against the float64 numpy loop reference (of the float32 inputs).
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    s_head, t_head = (extra["student"], extra["teacher"]) if projection else (student.head,
                                                                              teacher.head)
    expected = np_ref.np_msdcrd(
        f64(student.features["pre_pool"]), f64(teacher.features["pre_pool"]),
        tuple(map(f64, s_head)), tuple(map(f64, t_head)), labels, f64(teacher.logits),
        windows=windows, tau=0.07, cw=2.0, classifier=tuple(map(f64, teacher.head)))
    for key in ("sample", "feature"):
        np.testing.assert_allclose(float(got_terms[key]), expected[key], rtol=2e-5)
    np.testing.assert_allclose(float(got_terms["ce"]), ref.ce(f64(student.logits), labels),
                               rtol=1e-5)
    np.testing.assert_allclose(
        float(got), float(got_terms["ce"]) + 0.8 * (expected["sample"] + expected["feature"]),
        rtol=2e-5)


@pytest.mark.parametrize("embedding", ["logits", "projection"])
def test_chunked_loss_equals_unchunked(embedding):
    """chunk_size 7 (does not divide S = 4*16, 4*9 or 4*1) vs 0: same value and gradients."""
    student, teacher, labels, extra = _outputs(3)
    extra = extra if embedding == "projection" else None
    results = []
    for chunk in (0, 7):
        plan = compute_loss_of(msdcrd_config(embedding=embedding, chunk_size=chunk))
        loss = plan.spec.build(plan.hparams)
        results.append(value_and_grads(loss)(student, teacher, labels, extra, np.int32(1)))
    (v0, t0, g0), (v1, t1, g1) = results
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    _assert_trees_close(t1, t0, rtol=1e-6)
    _assert_trees_close(g1, g0, rtol=1e-5, atol=1e-7)
    # And the chunked step really streams: no S x S similarity (S = 64 at window 1, 36 at 2)
    # in the forward or backward of the trainer's loss; the unchunked one has them.
    square = {(64, 64), (36, 36)}
    for chunk, expect in ((7, set()), (0, square)):
        plan = compute_loss_of(msdcrd_config(embedding=embedding, chunk_size=chunk))
        jaxpr = jax.make_jaxpr(value_and_grads(plan.spec.build(plan.hparams)))(
            student, teacher, labels, extra, np.int32(1))
        assert _shapes(jaxpr.jaxpr, set()) & square == expect, chunk


def _shapes(jaxpr, out):
    """Every value shape in a jaxpr, sub-jaxprs (jit, scan, remat) included."""
    for eqn in jaxpr.eqns:
        out.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    _shapes(sub.jaxpr, out)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    _shapes(sub, out)
    return out


def test_kd_option_and_no_categorisation():
    """kd_weight 1 adds KD at T=4; complementary_weight 1 is the unweighted mean."""
    student, teacher, labels, extra = _outputs(4)
    plan = compute_loss_of(msdcrd_config(kd_weight=1.0))
    loss = plan.spec.build(plan.hparams)
    got, got_terms, _ = value_and_grads(loss)(student, teacher, labels, None, np.int32(1))
    want, want_terms, _ = value_and_grads(
        lambda s, t, y, _, x: reference(s, t, y, x, W124, False, kd_weight=1.0))(
            student, teacher, labels, None, np.int32(1))
    assert set(got_terms) == set(want_terms) == {"ce", "sample", "feature", "kd"}
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    kd = float(np.mean(ref.kd_per_example(np.float64(student.logits),
                                          np.float64(teacher.logits), 4.0)))
    np.testing.assert_allclose(float(got_terms["kd"]), kd, rtol=1e-5)
    plan = compute_loss_of(msdcrd_config(complementary_weight=1.0))
    loss = plan.spec.build(plan.hparams)
    _, terms, _ = value_and_grads(loss)(student, teacher, labels, None, np.int32(1))
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    expected = np_ref.np_msdcrd(
        f64(student.features["pre_pool"]), f64(teacher.features["pre_pool"]),
        tuple(map(f64, student.head)), tuple(map(f64, teacher.head)), labels,
        f64(teacher.logits), windows=W124, tau=0.07, cw=1.0)
    np.testing.assert_allclose(float(terms["sample"]), expected["sample"], rtol=2e-5)


def test_bad_hyperparameters_name_the_key():
    for key, value, match in [
        ("windows", (0, 2), r"method.windows=\(0, 2\): expected a non-empty tuple"),
        ("windows", (2, 2), r"method.windows=\(2, 2\)"),
        ("windows", (), r"method.windows=\(\)"),
        ("embedding", "mlp", r"method.embedding='mlp'; allowed: logits, projection"),
        ("tau", 0.0, r"method.tau=0.0: expected a finite number > 0"),
        ("temperature", -1.0, r"method.temperature"),
        ("contrastive_weight", -0.1, r"method.contrastive_weight"),
        ("chunk_size", -1, r"method.chunk_size=-1: expected an integer >= 0"),
        ("projection_dim", 0, r"method.projection_dim=0: expected an integer >= 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            compute_loss_of(msdcrd_config(**{key: value}))
    hp = {k: v for k, v in load_config("cifar_msdcrd").method.to_dict().items() if k != "name"}
    with pytest.raises(ValueError, match="missing method.chunk_size"):
        methods.get("msdcrd").build({k: v for k, v in hp.items() if k != "chunk_size"})
    with pytest.raises(ValueError, match="unexpected method.beta"):
        methods.get("msdcrd").build({**hp, "beta": 8.0})
    # Windows larger than the pair's common map (ShuffleV1 4x4, resnet32x4 8x8) fail at
    # config validation, naming the key; the loss itself checks again when traced.
    too_big = r"method.windows=\(1, 2, 8\): .* 4x4 .* 8x8 .* <= 4; e.g. " \
              r"--config.method.windows=\"\(1, 2\)\""
    with pytest.raises(ConfigError, match=too_big):
        compute_loss_of(msdcrd_config(windows=(1, 2, 8)))
    lockstep = msdcrd_config()
    lockstep.students = {"m8": {"method": {**lockstep.method.to_dict(), "windows": (1, 8)}}}
    del lockstep.method
    with pytest.raises(ConfigError, match=r"students.m8.method: method.windows=\(1, 8\)"):
        config_validation.validate(lockstep, num_devices=1, check_files=False)
    student, teacher, labels, _ = _outputs(5)
    with pytest.raises(ValueError, match=too_big):
        methods.get("msdcrd").build({**hp, "windows": (1, 2, 8)})(
            student, teacher, labels, np.int32(1), None)


# --- 3. projection heads in the train state --------------------------------------------------

def test_projection_heads_init():
    spec = methods.get("msdcrd")
    hp = {k: v for k, v in msdcrd_config(embedding="projection").method.to_dict().items()
          if k != "name"}
    shapes = methods.HeadShapes(student=(960, 100), teacher=(256, 100))
    extra = spec.init_extra(jax.random.PRNGKey(0), shapes, hp)
    assert spec.init_extra(jax.random.PRNGKey(0), shapes, {**hp, "embedding": "logits"}) is None
    assert set(extra) == {"student", "teacher"}
    for side, fan_in in (("student", 960), ("teacher", 256)):
        kernel, bias = extra[side]
        assert kernel.shape == (fan_in, 128) and bias.shape == (128,)
        assert kernel.dtype == bias.dtype == jnp.float32
        # nn.Linear's default: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / np.sqrt(fan_in)
        for x, n in ((np.asarray(kernel), fan_in * 128), (np.asarray(bias), 128)):
            assert x.min() >= -bound and x.max() <= bound
            assert abs(x.mean()) < 4 * bound / np.sqrt(3 * n)
            if n > 1000:
                np.testing.assert_allclose(x.std(), bound / np.sqrt(3), rtol=0.03)
                assert x.min() < -0.99 * bound and x.max() > 0.99 * bound
    assert not np.array_equal(np.asarray(extra["student"][0][:256]),
                              np.asarray(extra["teacher"][0]))
    _assert_trees_close(spec.init_extra(jax.random.PRNGKey(0), shapes, hp), extra, rtol=0)
    assert spec.init_extra(jax.random.PRNGKey(0), shapes, {**hp, "projection_dim": 16}
                           )["teacher"][0].shape == (256, 16)


def _tiny_projection_config():
    c = msdcrd_config(embedding="projection", chunk_size=40)
    c.student.arch, c.teacher.arch = "tiny_cnn", "tiny_cnn_wide"   # pre_pool 8x8 at 16x16
    c.dataset.update(dict(name="synthetic", num_train=16, num_test=8, num_classes=10,
                          image_size=16))
    c.batch_size, c.total_steps = 8, 2
    c.optimizer.weight_decay = 0.0   # any change of the heads comes from their gradient
    c.tensorboard, c.progress_bar = False, False
    return c


def test_projection_heads_train_checkpoint_and_are_not_exported(tmp_path):
    config = _tiny_projection_config()
    workdir = str(tmp_path)
    plan = config_validation.validate(config)
    initial = trainer.build(config, plan, 10).state
    summary, final = trainer.train(config, workdir)
    assert summary["finished"] and summary["steps"] == 2
    before = initial.students["student"].params["extra"]
    after = final.students["student"].params["extra"]
    assert jax.tree.structure(before) == jax.tree.structure(after)
    for side in ("student", "teacher"):
        for b, a in zip(before[side], after[side]):
            assert np.any(np.asarray(b) != np.asarray(a)), side   # weight decay is 0
    # The checkpoint holds them (restored into the state's structure).
    ckpt = Checkpointer(workdir)
    try:
        restored, _ = ckpt.restore(initial)
    finally:
        ckpt.close()
    _assert_trees_close(restored.students["student"].params["extra"], after, rtol=0)
    # final_model is the plain student: loads as a teacher, no projection heads in it.
    path = os.path.join(workdir, trainer.FINAL_MODEL_DIR)
    model = convert.load_teacher(path, "tiny_cnn", 10)
    params = nnx.state(model, nnx.Param)
    assert param_count(params) == param_count(final.students["student"].params["model"])
    _assert_trees_close(jax.tree.leaves(params),
                        jax.tree.leaves(final.students["student"].params["model"]), rtol=0)
    import orbax.checkpoint as ocp
    saved = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "state"))
    plain = models.create("tiny_cnn", 10)
    assert len(jax.tree.leaves(saved)) == len(jax.tree.leaves(
        nnx.state(plain, (nnx.Param, nnx.BatchStat))))
    assert not any("extra" in str(k) or "student" in str(k) for k in saved)


# --- 4. the command line, real heterogeneous models ------------------------------------------

SMOKE = ["--config.dataset.name=synthetic", "--config.dataset.num_train=16",
         "--config.dataset.num_test=8", "--config.batch_size=8", "--config.total_steps=2",
         "--config.teacher.checkpoint=random", "--config.tensorboard=False"]


@pytest.mark.parametrize("extra", [[], ["--config.method.embedding=projection",
                                        "--config.method.chunk_size=40"]],
                         ids=["default", "projection_chunked"])
def test_cli_smoke_resnet32x4_shufflev1(tmp_path, extra):
    """resnet32x4 (8x8x256) -> ShuffleV1 (4x4x960) in a subprocess, as a user runs it. With
    batch 8 and windows (1, 2, 4) on the common 4x4 grid, S = 128, 72, 8: chunk 40 divides
    none of them."""
    workdir = str(tmp_path / "run")
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")   # compile speed, not numerics
    proc = subprocess.run(
        [sys.executable, "-m", "kd_jax.main",
         "--config=cifar_msdcrd.py:resnet32x4-ShuffleV1", f"--workdir={workdir}",
         *SMOKE, "--config.progress_bar=False", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(workdir, "summary.json")) as fh:
        summary = json.load(fh)
    assert summary["finished"] and summary["steps"] == 2
    with open(os.path.join(workdir, "config.json")) as fh:
        method = json.load(fh)["method"]
    assert method["windows"] == [1, 2, 4]
    assert method["embedding"] == ("projection" if extra else "logits")
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        train = [json.loads(line) for line in fh if '"train"' in line]
    assert train and all(np.isfinite(r[k]) for r in train for k in ("loss", "sample", "feature"))
    assert os.path.isdir(os.path.join(workdir, trainer.FINAL_MODEL_DIR))
