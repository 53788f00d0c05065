"""The CPU convolution formulations of kd_jax.models.layers against XLA's convolution.

Oracle: jax.lax.conv_general_dilated (XLA's convolution, the formulation GPUs and TPUs
keep), independent of layers.conv_im2col's slices and products. Every distinct convolution
of the CIFAR zoo (kd_jax.models.shapes.conv_shapes: kernel, stride, padding, groups,
channels, map) at batch 2: the output and the input and kernel gradients of <conv(x, w), g>
for random x, w, g. float32: max |im2col - xla| <= 1e-5 * max(1, max |xla|) per tensor;
bfloat16: both run in bfloat16 against the float32 XLA result, and im2col's error stays
within 2x XLA's own plus a few bfloat16 ulps. The zoo's PyTorch parity on both formulations
is tests/test_model_parity.py (parametrised over cpu_conv).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import machine, models
from kd_jax.models import families, layers
from kd_jax.models.shapes import ConvShape, conv_shapes
from kd_jax.train import config_validation

CIFAR = [a for a in models.names(reference_only=True) if families.family_of(a) == families.CIFAR]
AVX2 = {"sse4_2": True, "avx": True, "fma": True, "avx2": True, "avx512f": False,
        "avx512_bf16": False, "amx_bf16": False}
AVX512 = {**AVX2, "avx512f": True, "avx512_bf16": True}


def zoo_shapes() -> list[ConvShape]:
    return sorted({s for arch in CIFAR for s in conv_shapes(arch)})


def _xla(x, w, s: ConvShape):
    return jax.lax.conv_general_dilated(
        x, w, (s.stride, s.stride), ((s.padding, s.padding),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=s.groups)


def _im2col(x, w, s: ConvShape):
    return layers.conv_im2col(x, w, s.stride, s.padding, s.groups)


def _inputs(s: ConvShape, seed: int = 0):
    """Random x (2, H, W, C), w (fan-in scaled) and output cotangent g, float32."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (2, s.height, s.width, s.in_channels))
    fan_in = s.kernel * s.kernel * s.in_channels // s.groups
    w = jax.random.normal(kw, (s.kernel, s.kernel, s.in_channels // s.groups,
                               s.out_channels)) / np.sqrt(fan_in)
    oh, ow = ((n + 2 * s.padding - s.kernel) // s.stride + 1 for n in (s.height, s.width))
    g = jax.random.normal(kg, (2, oh, ow, s.out_channels))
    return x, w, g


def _value_and_grads(fns, s: ConvShape, dtype):
    """[(y, dL/dx, dL/dw) per fn] of L = <fn(x, w), g>, computed in `dtype`, as float32;
    one compiled program for all fns (compiles dominate this test's time)."""
    def run(x, w, g):
        out = []
        for fn in fns:
            y, vjp = jax.vjp(lambda x, w, fn=fn: fn(x, w, s), x.astype(dtype), w.astype(dtype))
            out.append((y,) + vjp(g.astype(y.dtype)))
        return out
    return [[np.asarray(a, np.float32) for a in r] for r in jax.jit(run)(*_inputs(s))]


def _err(a, b) -> float:
    return float(np.max(np.abs(a - b)))


def test_zoo_shapes_cover_every_kind_of_convolution():
    shapes = zoo_shapes()
    kinds = {(s.kernel, s.stride, s.groups == s.in_channels, s.groups > 1) for s in shapes}
    assert {(3, 1, False, False), (3, 2, False, False), (1, 1, False, False),
            (1, 2, False, False), (1, 1, False, True), (3, 1, True, True),
            (3, 2, True, True)} <= kinds, kinds
    assert len(shapes) > 80


def test_im2col_equals_xla_for_every_zoo_shape_float32():
    """Values and both gradients, every distinct CIFAR-zoo convolution."""
    bad = []
    for s in zoo_shapes():
        got, want = _value_and_grads((_im2col, _xla), s, jnp.float32)
        for name, a, b in zip(("y", "dx", "dw"), got, want):
            assert a.shape == b.shape, (s, name, a.shape, b.shape)
            if _err(a, b) > 1e-5 * max(1.0, float(np.max(np.abs(b)))):
                bad.append(f"{s.label()} {name}: {_err(a, b):.2e} (max |xla| "
                           f"{np.max(np.abs(b)):.2e})")
    assert not bad, "\n".join(bad)


# One shape of each kind (dense 3x3 at both strides, 1x1 at both strides, grouped 1x1,
# depthwise at both strides, the RGB stem): bfloat16 compiles are slow on CPU.
BF16_SHAPES = [
    ConvShape(3, 1, 1, 1, 3, 16, 32, 32), ConvShape(3, 1, 1, 1, 64, 64, 8, 8),
    ConvShape(3, 2, 1, 1, 32, 64, 16, 16), ConvShape(1, 1, 0, 1, 48, 96, 8, 8),
    ConvShape(1, 2, 0, 1, 64, 128, 16, 16), ConvShape(1, 1, 0, 3, 60, 240, 8, 8),
    ConvShape(3, 1, 1, 58, 58, 58, 8, 8), ConvShape(3, 2, 1, 24, 24, 24, 16, 16),
]


@pytest.mark.parametrize("s", BF16_SHAPES, ids=lambda s: s.label().replace(" ", "_"))
def test_im2col_bfloat16_within_its_precision(s):
    """bfloat16 im2col is as close to the float32 result as XLA's bfloat16 convolution."""
    (exact,) = _value_and_grads((_xla,), s, jnp.float32)
    xla16, im16 = _value_and_grads((_xla, _im2col), s, jnp.bfloat16)
    for name, e, a, b in zip(("y", "dx", "dw"), exact, im16, xla16):
        assert a.dtype == np.float32 and a.shape == e.shape
        ulp = 2.0 ** -8 * max(1.0, float(np.max(np.abs(e))))   # bfloat16: 8 mantissa bits
        assert _err(a, e) <= 2 * _err(b, e) + 4 * ulp, (name, _err(a, e), _err(b, e), ulp)


def test_im2col_returns_the_input_dtype():
    s = BF16_SHAPES[1]
    x = jnp.ones((1, s.height, s.width, s.in_channels), jnp.bfloat16)
    w = jnp.ones((3, 3, s.in_channels, s.out_channels), jnp.bfloat16)
    assert _im2col(x, w, s).dtype == jnp.bfloat16


def test_im2col_rejects_a_kernel_that_does_not_fit():
    with pytest.raises(ValueError, match=r"kernel \(3, 3, 5, 8\) does not fit input"):
        layers.conv_im2col(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 5, 8)), 1, 1)


# --- the rule and the switch ---

@pytest.mark.parametrize("isa,kernel,groups,want", [
    (AVX2, 3, 1, "im2col"), (AVX2, 1, 1, "im2col"), (AVX2, 3, 58, "im2col"),
    (AVX512, 3, 1, "xla"), (AVX512, 1, 1, "xla"), (AVX512, 1, 3, "im2col"),
    (AVX512, 3, 58, "im2col"),
    ({}, 3, 1, "xla"), ({}, 1, 1, "xla"), ({}, 3, 58, "xla"),   # no x86 flags: unmeasured
])
def test_auto_rule(isa, kernel, groups, want):
    assert layers.cpu_conv_formulation(kernel, 1, groups, 64, 64, isa) == want


@pytest.mark.parametrize("choice", ["xla", "im2col"])
def test_forced_choice_overrides_the_rule(choice):
    for isa in (AVX2, AVX512, {}):
        assert layers.cpu_conv_formulation(3, 1, 1, 64, 64, isa, choice) == choice


def test_bad_choice_is_one_clear_error():
    with pytest.raises(ValueError, match=r"cpu_conv='fast'; allowed: auto, xla, im2col"):
        layers.set_cpu_conv("fast")
    assert layers.get_cpu_conv() == "auto"


def _uses_xla_conv(module, x) -> bool:
    return "conv_general_dilated" in str(jax.make_jaxpr(lambda x: module(x))(x))


def test_switch_picks_the_formulation_when_traced(monkeypatch):
    conv = layers.conv(8, 16, 3, stride=2, padding=1, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 9, 9, 8))
    with layers.cpu_conv("im2col"):
        assert not _uses_xla_conv(conv, x)
    with layers.cpu_conv("xla"):
        assert _uses_xla_conv(conv, x)
    # auto follows the rule on the detected (here: patched) processor.
    for isa, want_xla in ((AVX512, True), (AVX2, False)):
        monkeypatch.setattr(machine, "xla_isa", lambda isa=isa: dict(isa))
        with layers.cpu_conv("auto"):
            assert _uses_xla_conv(conv, x) == want_xla
    assert layers.get_cpu_conv() == "auto"


def test_accelerators_keep_xla_convolution(monkeypatch):
    """Off the CPU backend even a forced im2col traces XLA's convolution."""
    conv = layers.conv(8, 16, 1, rngs=nnx.Rngs(0))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with layers.cpu_conv("im2col"):
        assert _uses_xla_conv(conv, jnp.ones((1, 4, 4, 8)))


@pytest.mark.parametrize("arch", ["resnet8x4", "ShuffleV1", "MobileNetV2"])
def test_parameters_and_outputs_do_not_depend_on_the_switch(arch):
    """Same parameter tree (names, shapes, values) and, to 1e-5, the same logits."""
    states, logits = {}, {}
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    for choice in ("xla", "im2col"):
        with layers.cpu_conv(choice):
            model = models.create(arch, 100, rngs=nnx.Rngs(0))
            model.eval()
            states[choice] = nnx.state(model, nnx.Param)
            logits[choice] = np.asarray(model(x)[0])
    a, b = (jax.tree_util.tree_flatten_with_path(states[c])[0] for c in ("xla", "im2col"))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, u), (_, v) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=str(path))
    tol = 1e-5 * max(1.0, float(np.max(np.abs(logits["xla"]))))
    assert _err(logits["im2col"], logits["xla"]) <= tol


# --- machine and config ---

def test_xla_isa_caps_at_max_isa(monkeypatch):
    monkeypatch.setattr(machine, "_isa", lambda: tuple(AVX512.items()))
    assert machine.xla_isa("") == AVX512
    assert machine.xla_isa("--xla_cpu_max_isa=AVX2") == AVX2
    assert machine.xla_isa("--foo --xla_cpu_max_isa=avx512") == {**AVX512,
                                                                  "avx512_bf16": False}
    capped = machine.xla_isa("--xla_cpu_max_isa=SSE4_2")
    assert capped["sse4_2"] and not any(v for k, v in capped.items() if k != "sse4_2")
    assert machine.xla_isa("--xla_cpu_max_isa=BOGUS") == AVX512   # XLA's to reject


def test_config_validation_names_a_bad_cpu_conv():
    from kd_jax import data, recipes
    config = recipes.build_config("kd", data.CIFAR100, "resnet32x4-resnet8x4",
                                  default_pair="resnet32x4-resnet8x4")
    assert config.cpu_conv == "auto"
    config.teacher.checkpoint = "random"
    config.cpu_conv = "fastest"
    with pytest.raises(config_validation.ConfigError,
                       match=r"cpu_conv='fastest'; allowed: auto, xla, im2col"):
        config_validation.validate(config, num_devices=1, check_files=False)


def test_quickstart_passes_cpu_conv_to_its_runs():
    from kd_jax.recipes import quickstart
    from kd_jax.train import pipeline
    q = quickstart.config()
    assert pipeline.students_config(q, config_validation.RANDOM_TEACHER).cpu_conv == "auto"
    q.cpu_conv = "xla"
    assert pipeline.students_config(q, config_validation.RANDOM_TEACHER).cpu_conv == "xla"
    q.cpu_conv = "fast"
    with pytest.raises(config_validation.ConfigError, match=r"cpu_conv='fast'"):
        config_validation.validate(pipeline.students_config(q, config_validation.RANDOM_TEACHER),
                                   check_files=False)


def test_trainer_build_sets_the_switch_from_the_config():
    import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
    from kd_jax import data, recipes
    from kd_jax.train import trainer
    config = recipes.build_config("kd", data.CIFAR100, None, default_pair="resnet32x4-resnet8x4")
    config.dataset.update(name="synthetic", num_train=16, num_test=8, num_classes=10,
                          image_size=16)
    config.student.arch, config.teacher.arch = "tiny_cnn", "tiny_cnn_wide"
    config.teacher.checkpoint, config.batch_size = "random", 8
    plan = config_validation.validate(config, num_devices=1, check_files=False)
    try:
        for choice in ("im2col", "xla"):
            config.cpu_conv = choice
            trainer.build(config, plan, config.dataset.num_classes, devices=jax.devices()[:1])
            assert layers.get_cpu_conv() == choice
    finally:
        layers.set_cpu_conv("auto")
