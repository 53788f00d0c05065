"""Model zoo against the reference PyTorch dumps (tests/data/torch_state_dicts/<name>.txt).

Structural checks (parameter counts, state_dict keys and shapes, feature shapes) run on
abstract models (nnx.eval_shape) for every registered model that has a dump, so they cost
tracing only. Every dumped model also runs once for real, at the dump's input shape, to
check its features' shapes and the signs the dump's `min over feats[...]` lines imply
(test_feature_signs_match_the_dump). Forwards/backwards run for one small model per family.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import models

DUMP_DIR = Path(__file__).parent / "data" / "torch_state_dicts"
Shape = tuple[int, ...]

# Flax leaf name -> PyTorch state_dict leaf name.
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var"}


# --- Reference dumps ---

@dataclass(frozen=True)
class Dump:
    parameter_count: int
    input_shape: Shape               # NCHW
    logits_shape: Shape
    feats: dict[str, list[Shape]]    # "feats", "preact_feats" (if present): NCHW shapes
    mins: dict[str, list[str]]       # "feats", ...: each entry's minimum as printed ("+0.000")
    pooled_shape: Shape
    state: dict[str, Shape]          # key -> shape, without num_batches_tracked


def _shape(text: str) -> Shape:
    return tuple(int(d) for d in re.findall(r"\d+", text))


@functools.lru_cache(maxsize=None)
def load_dump(name: str) -> Dump:
    path = DUMP_DIR / f"{name}.txt"
    text = path.read_text()
    lines = text.splitlines()
    count = re.search(r"^parameter_count: (\d+)", text, re.M)
    inp = re.search(r"^forward input: \(([\d,]+)\)", text, re.M)
    logits = re.search(r"^logits: \(([\d,]+)\)", text, re.M)
    pooled = re.search(r"^feats\['pooled_feat'\]: \(([\d,]+)\)", text, re.M)
    if not (count and inp and logits and pooled):
        raise ValueError(f"{path}: missing a parameter_count / forward input / logits / "
                         "pooled_feat line")
    feats = {}
    for key, shapes in re.findall(r"^feats\['(\w+)'\]: list\[\d+\] = \[(.*)\]$", text, re.M):
        feats[key] = [_shape(s) for s in re.findall(r"\(([\d,]+)\)", shapes)]
    mins = {key: [m.strip() for m in values.split(",")] for key, values in re.findall(
        r"^\s*min over feats\['(\w+)'\] entries: \[(.*)\]$", text, re.M)}
    start = lines.index("# state_dict (key  shape  dtype)") + 1
    state = {}
    for line in lines[start:]:
        if not line.strip():
            continue
        key, shape, _ = line.split("\t")
        if not key.endswith("num_batches_tracked"):
            state[key] = _shape(shape)
    return Dump(int(count.group(1)), _shape(inp.group(1)), _shape(logits.group(1)), feats,
                mins, _shape(pooled.group(1)), state)


def dumped_names() -> list[str]:
    """Registered names with a reference dump (CIFAR <name>.txt, ImageNet imagenet_<name>.txt)."""
    return [n for n in models.names(reference_only=True) if (DUMP_DIR / f"{n}.txt").exists()]


def nhwc(shape: Shape) -> Shape:
    b, c, h, w = shape
    return (b, h, w, c)


def torch_key_and_shape(path: tuple, shape: Shape) -> tuple[str, Shape]:
    """Flax state path/shape -> PyTorch state_dict key/shape.

    Conv kernels HWIO -> OIHW, linear kernels (in, out) -> (out, in).
    """
    leaf = path[-1]
    if leaf not in LEAF_NAMES:
        raise KeyError(f"unexpected leaf {leaf!r} at {'.'.join(map(str, path))}")
    key = ".".join([str(p) for p in path[:-1]] + [LEAF_NAMES[leaf]])
    if leaf == "kernel" and len(shape) == 4:
        shape = (shape[3], shape[2], shape[0], shape[1])
    elif leaf == "kernel" and len(shape) == 2:
        shape = (shape[1], shape[0])
    return key, tuple(shape)


def torch_view(model: nnx.Module) -> dict[str, Shape]:
    """The model's Param/BatchStat leaves as a PyTorch-style {key: shape}."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    return dict(torch_key_and_shape(path, tuple(var.shape)) for path, var in flat)


@functools.lru_cache(maxsize=None)
def abstract_model(name: str, num_classes: int, dtype=jnp.float32) -> nnx.Module:
    model = nnx.eval_shape(lambda: models.create(name, num_classes=num_classes, dtype=dtype))
    model.eval()
    return model


def abstract_forward(model: nnx.Module, input_shape: Shape):
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return nnx.eval_shape(lambda m, x: m(x), model, x)


# --- Structure of every dumped model (abstract: tracing only) ---

def test_every_non_cub_model_has_a_dump():
    missing = [n for n in models.names(reference_only=True)
               if not n.startswith("cub_") and n not in dumped_names()]
    assert not missing, f"registered models without a reference dump in {DUMP_DIR}: {missing}"


@pytest.mark.parametrize("name", dumped_names())
def test_state_keys_shapes_and_parameter_count(name):
    dump = load_dump(name)
    model = abstract_model(name, dump.logits_shape[1])
    ours = torch_view(model)
    assert set(ours) == set(dump.state), (
        f"{name}: keys only in Flax: {sorted(set(ours) - set(dump.state))[:10]}; "
        f"only in PyTorch: {sorted(set(dump.state) - set(ours))[:10]}")
    wrong = {k: (ours[k], dump.state[k]) for k in ours if ours[k] != dump.state[k]}
    assert not wrong, f"{name}: shape mismatches (ours, torch): {dict(list(wrong.items())[:10])}"
    count = sum(v.size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert count == dump.parameter_count


@pytest.mark.parametrize("name", dumped_names())
def test_output_and_feature_shapes(name):
    dump = load_dump(name)
    b, _, h, w = dump.input_shape
    model = abstract_model(name, dump.logits_shape[1])
    logits, feats = abstract_forward(model, (b, h, w, 3))
    assert logits.shape == dump.logits_shape and logits.dtype == jnp.float32
    assert set(feats) == {"stages", "preact_stages", "pooled", "pre_pool"}
    assert [f.shape for f in feats["stages"]] == [nhwc(s) for s in dump.feats["feats"]]
    if "preact_feats" in dump.feats:
        expected = [nhwc(s) for s in dump.feats["preact_feats"]]
        assert [f.shape for f in feats["preact_stages"]] == expected
    else:
        assert feats["preact_stages"] is None
    assert feats["pooled"].shape == dump.pooled_shape
    pre_pool = feats["pre_pool"].shape
    assert len(pre_pool) == 4 and pre_pool[0] == b and pre_pool[-1] == dump.pooled_shape[1]
    assert isinstance(model.head, nnx.Linear)
    assert model.head.kernel.shape == (dump.pooled_shape[1], dump.logits_shape[1])


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "ResNet50"])
def test_num_classes_sets_head(name):
    model = abstract_model(name, 7)
    assert model.head.kernel.shape[1] == 7 and model.head.bias.shape == (7,)
    logits, _ = abstract_forward(model, (2, 32, 32, 3))
    assert logits.shape == (2, 7)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = abstract_model("resnet8", 100, jnp.bfloat16)
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    dtypes = {v.dtype for _, v in nnx.to_flat_state(state)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    logits, feats = abstract_forward(model, (2, 32, 32, 3))
    assert logits.dtype == jnp.float32
    assert feats["stages"][-1].dtype == jnp.bfloat16


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model 'resnet9'") as err:
        models.create("resnet9")
    for known in ("resnet8", "wrn_40_2", "vgg13", "ResNet50"):
        assert known in str(err.value)


# --- Feature signs of every dumped model (a real forward at the dump's input shape) ---

# Dump feature list -> kd_jax features key.
FEATURE_KEYS = {"feats": "stages", "preact_feats": "preact_stages"}


def expected_sign(printed: str) -> str:
    """What a dump's printed minimum (3 decimals, explicit sign) says about the feature.

    "+0.000": the reference's minimum is exactly 0 (a "-" is printed for any negative value,
    however small: "-0.000" is a tiny negative minimum), so the feature is a ReLU output:
    "relu". Any "-" value: the feature has negative entries: "negative". The dumps hold no
    positive minimum; one would fail here rather than be guessed at.
    """
    value = float(printed)
    if printed.startswith("-"):
        return "negative"
    if printed.startswith("+") and value == 0.0:
        return "relu"
    raise ValueError(f"unhandled minimum {printed!r} in a dump")


def test_dump_minimum_parser():
    dump = load_dump("MobileNetV2")
    assert dump.mins == {"feats": ["+0.000", "-0.111", "-0.012", "-0.000", "-0.000"]}
    assert [expected_sign(m) for m in dump.mins["feats"]] == [
        "relu", "negative", "negative", "negative", "negative"]
    assert set(load_dump("imagenet_ResNet18").mins) == {"feats", "preact_feats"}
    assert all(set(load_dump(n).mins) == set(load_dump(n).feats) for n in dumped_names())


def numpy_random_model(name: str, num_classes: int, seed: int = 0) -> nnx.Module:
    """The model `name` in eval mode with generic random weights drawn by NumPy (no XLA init
    programs to compile): kernels N(0, 1/fan_in), biases N(0, 0.1^2), BatchNorm scale
    U(0.5, 1.5), bias N(0, 0.1^2), running mean N(0, 0.1^2), running var U(0.5, 1.5)."""
    model = nnx.eval_shape(lambda: models.create(name, num_classes=num_classes))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
        shape, leaf = tuple(var.shape), path[-1]
        if leaf == "kernel":
            value = rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[:-1]))
        elif leaf in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            value = 0.1 * rng.standard_normal(shape, np.float32)
        var.set_value(jnp.asarray(value, jnp.float32))
    model.eval()
    return model


@pytest.mark.parametrize("name", dumped_names())
def test_feature_signs_match_the_dump(name):
    """The Flax model (generic random weights, eval mode) on a N(0, 1) batch of the dump's
    input shape has every feature's shape and the dump's sign pattern.

    The dump's numbers come from the reference's init (torch seed 0), ours from other random
    weights, so only signs are compared, with this rule per list entry: a "+0.000" minimum
    (a ReLU output) -> our minimum is exactly 0 (nothing negative, something clipped); a
    negative minimum -> our feature has negative entries. Both hold for generic weights.
    """
    dump = load_dump(name)
    b, _, h, w = dump.input_shape
    model = numpy_random_model(name, dump.logits_shape[1])
    x = jax.random.normal(jax.random.key(0), (b, h, w, 3))
    logits, feats = nnx.jit(lambda m, x: m(x))(model, x)
    chex.assert_shape(logits, dump.logits_shape)
    chex.assert_shape(feats["pooled"], dump.pooled_shape)
    assert np.all(np.isfinite(logits))
    if "preact_feats" not in dump.feats:
        assert feats["preact_stages"] is None
    checked = 0
    for key, shapes in dump.feats.items():
        ours = feats[FEATURE_KEYS[key]]
        assert len(ours) == len(shapes) == len(dump.mins[key]), key
        for i, (feature, shape, printed) in enumerate(zip(ours, shapes, dump.mins[key])):
            chex.assert_shape(feature, nhwc(shape))
            low = float(jnp.min(feature))
            if expected_sign(printed) == "relu":
                assert low == 0.0, f"{name} {key}[{i}]: dump min {printed}, ours {low:.4g}"
            else:
                assert low < 0.0, f"{name} {key}[{i}]: dump min {printed}, ours {low:.4g} >= 0"
            checked += 1
    assert checked == sum(len(v) for v in dump.feats.values())


# --- Real forwards / backwards on CPU (one small model per family) ---

def _inputs(batch: int = 2, size: int = 32, seed: int = 0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (batch, size, size, 3)), jax.random.randint(ky, (batch,), 0, 100)


@functools.lru_cache(maxsize=None)
def train_step_result(name: str):
    """One jitted train-mode forward+backward of `name` on a (2, 32, 32, 3) batch.

    Returns (model (unchanged), loss, grads, logits, features, batch stats after the step).
    """
    model = models.create(name, rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x, y = _inputs()

    @jax.jit
    def step(params, rest, x, y):
        def loss_fn(params, rest):
            m = nnx.merge(graphdef, params, rest, copy=True)
            logits, feats = m(x)
            log_p = jax.nn.log_softmax(logits)
            loss = -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))
            return loss, (logits, feats, nnx.state(m, nnx.BatchStat))
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        return loss, grads, aux

    loss, grads, (logits, feats, stats) = step(params, rest, x, y)
    return model, loss, grads, logits, feats, stats


def model_head_name(model: nnx.Module) -> str:
    """The attribute name of the model's head (the reference's fc / classifier / linear)."""
    return next(name for name in ("fc", "classifier", "linear")
                if getattr(model, name, None) is model.head)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8"])
def test_train_step_compiles_and_local_logits_region0(name):
    model, loss, grads, logits, feats, _ = train_step_result(name)
    assert np.isfinite(float(loss))
    grad_leaves = jax.tree.leaves(grads)
    assert len(grad_leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert all(np.all(np.isfinite(g)) for g in grad_leaves)
    head_grad = grads[model_head_name(model)]["kernel"][...]
    assert float(jnp.abs(head_grad).sum()) > 0
    # Region 0 of SDD's local logits: the head applied to the pooled map is the logits.
    pooled = np.asarray(feats["pre_pool"], np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(pooled, np.asarray(feats["pooled"]), rtol=1e-5, atol=1e-6)
    expected = pooled @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-5)


def test_large_resnet_forward():
    model = models.create("ResNet18", rngs=nnx.Rngs(0))
    model.eval()
    x, _ = _inputs()
    logits, feats = jax.jit(lambda s, x: nnx.merge(nnx.graphdef(model), s)(x))(nnx.state(model), x)
    assert logits.shape == (2, 100) and np.all(np.isfinite(logits))
    np.testing.assert_allclose(feats["pre_pool"].mean(axis=(1, 2)), feats["pooled"],
                               rtol=1e-5, atol=1e-6)


def _stats_snapshot(state) -> dict:
    """A copy of the running statistics as nested dicts of NumPy arrays."""
    return jax.tree.map(np.array, nnx.to_pure_dict(state))


def test_batchnorm_train_updates_and_eval_does_not():
    model, _, _, _, _, stats_after_train = train_step_result("resnet8")
    before = _stats_snapshot(nnx.state(model, nnx.BatchStat))
    after_train = _stats_snapshot(stats_after_train)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after_train)
    assert all(jax.tree.leaves(changed)), "train mode must update every running statistic"

    model.eval()
    try:
        x, _ = _inputs(seed=1)
        nnx.jit(lambda m, x: m(x))(model, x)
    finally:
        model.train()
    after_eval = _stats_snapshot(nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, after_eval)


def _bn_update(x: np.ndarray, mean0: float, var0: float,
               calls: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's running-stat update (momentum 0.1, unbiased variance), applied `calls` times."""
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    mu, var = x.mean(axis=0), x.var(axis=0, ddof=1)
    mean, run_var = np.full_like(mu, mean0), np.full_like(var, var0)
    for _ in range(calls):
        mean, run_var = 0.9 * mean + 0.1 * mu, 0.9 * run_var + 0.1 * var
    return mean, run_var


def test_wrn_double_batchnorm_update():
    """block2.layer.0.bn1, block3.layer.0.bn1 and bn1 take two updates per step; others one."""
    _, _, _, _, feats, stats = train_step_result("wrn_16_1")
    f0, f1, f2, f3 = feats["stages"]
    cases = [  # (BN, its input, number of calls per step)
        (stats["block1"]["layer"][0]["bn1"], f0, 1),
        (stats["block2"]["layer"][0]["bn1"], f1, 2),
        (stats["block3"]["layer"][0]["bn1"], f2, 2),
        (stats["bn1"], f3, 2),
    ]
    for bn, x, calls in cases:
        mean, var = _bn_update(np.asarray(x), 0.0, 1.0, calls)
        np.testing.assert_allclose(bn["mean"][...], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn["var"][...], var, rtol=1e-4, atol=1e-5)


def test_pools_are_differentiable():
    """The shared pools (VGG max-pool, ShuffleV1 avg-pool, ...) must have gradients."""
    from kd_jax.models import layers

    x = jnp.arange(32.0).reshape(1, 4, 4, 2)  # increasing: each window's max is its last cell
    grad_avg = jax.grad(lambda x: layers.avg_pool(x, 2).sum())(x)
    np.testing.assert_allclose(grad_avg, np.full(x.shape, 0.25))
    grad_max = jax.grad(lambda x: layers.max_pool(x, 2).sum())(x)
    expected = np.zeros(x.shape)
    expected[:, 1::2, 1::2, :] = 1.0
    np.testing.assert_array_equal(grad_max, expected)
