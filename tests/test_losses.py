"""Tests of the base losses (KD, DKD, NKD, CLKD, CE) and the objectives in kd_jax.losses.

Expected values come from the loop-based numpy code in test_losses_reference.py.
Tolerances: float64 inputs (under jax.enable_x64) are compared at rtol 1e-10. float32
inputs are compared with a float64 numpy reference at rtol 1e-5: float32 carries ~6e-8
relative rounding per operation, and a log-softmax over K classes followed by a K-term
sum accumulates O(K) of them (plus cancellation in log p^T - log p^S), so 1e-6 against a
float64 reference is too tight for some values, while 1e-5 still catches any formula
error (those change values at the 1e-2 level).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.test_util import check_grads

import kd_jax.losses as L
import test_losses_reference as ref

T = 4.0
B, K = 6, 7
ALPHA, BETA, GAMMA = 1.0, 8.0, 2.0
# CLKD's recipe (kd_jax.methods.clkd) but the correlation.
CLKD_WEIGHTS = dict(ce_weight=0.1, instance_weight=0.5, class_weight_beta=2.0,
                    correlation_weight=0.4, reduction="mean")


def _data(seed: int = 0, b: int = B, k: int = K, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(b, k)) * scale
    t = rng.normal(size=(b, k)) * scale
    y = rng.integers(0, k, size=b)
    return s, t, y


# name -> (jax loss(s, t, y), numpy reference(s, t, y)); all scalars.
CASES = {
    "kd": (lambda s, t, y: L.kd_loss(s, t, T), lambda s, t, y: ref.kd_per_example(s, t, T).mean()),
    "dkd": (
        lambda s, t, y: L.dkd_loss(s, t, y, ALPHA, BETA, T),
        lambda s, t, y: ref.dkd_per_example(s, t, y, ALPHA, BETA, T).mean(),
    ),
    "dkd_stable": (
        lambda s, t, y: L.dkd_loss(s, t, y, ALPHA, BETA, T, stable=True),
        lambda s, t, y: ref.dkd_per_example(s, t, y, ALPHA, BETA, T).mean(),
    ),
    "dkd_T1": (
        lambda s, t, y: L.dkd_loss(s, t, y, 1.0, 0.5, 1.0),
        lambda s, t, y: ref.dkd_per_example(s, t, y, 1.0, 0.5, 1.0).mean(),
    ),
    "nkd": (
        lambda s, t, y: L.nkd_loss(s, t, y, GAMMA, T),
        lambda s, t, y: ref.nkd_per_example(s, t, y, GAMMA, T).mean(),
    ),
    "ce": (lambda s, t, y: L.ce_loss(s, y), lambda s, t, y: ref.ce(s, y)),
    # CLKD cases return the dict of the three terms.
    "clkd_batch": (
        lambda s, t, y: L.clkd_terms(s, t, "batch", reduction="mean"),
        lambda s, t, y: ref.clkd_terms(s, t, "batch"),
    ),
    "clkd_class": (
        lambda s, t, y: L.clkd_terms(s, t, "class", reduction="mean"),
        lambda s, t, y: ref.clkd_terms(s, t, "class"),
    ),
}


def _assert_close(got, expected, rtol):
    """Scalar or dict-of-scalars comparison (CLKD returns its three terms)."""
    if isinstance(expected, dict):
        assert set(got) == set(expected)
        for key in expected:
            _assert_close(got[key], expected[key], rtol)
        return
    assert got.shape == ()
    np.testing.assert_allclose(float(got), expected, rtol=rtol)


# Jitted once per case: eager op-by-op dispatch would cost more than compiling here.
CASES = {name: (jax.jit(fn), expected) for name, (fn, expected) in CASES.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_numpy_float64(name):
    fn, expected_fn = CASES[name]
    s, t, y = _data()
    expected = expected_fn(s, t, y)
    with jax.enable_x64(True):
        got = fn(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y))
        assert all(v.dtype == jnp.float64 for v in jax.tree.leaves(got))
        _assert_close(got, expected, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_numpy_float32(name):
    fn, expected_fn = CASES[name]
    s, t, y = _data(seed=1)
    s32, t32 = s.astype(np.float32), t.astype(np.float32)
    expected = expected_fn(s32.astype(np.float64), t32.astype(np.float64), y)
    got = fn(jnp.asarray(s32), jnp.asarray(t32), jnp.asarray(y, jnp.int32))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(got))
    _assert_close(got, expected, rtol=1e-5)


def test_bfloat16_inputs_are_computed_in_float32():
    s, t, y = _data(seed=2)
    got = CASES["dkd"][0](jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16), y)
    assert got.dtype == jnp.float32
    s16 = np.asarray(jnp.asarray(s, jnp.bfloat16).astype(jnp.float32), np.float64)
    t16 = np.asarray(jnp.asarray(t, jnp.bfloat16).astype(jnp.float32), np.float64)
    np.testing.assert_allclose(
        float(got), ref.dkd_per_example(s16, t16, y, ALPHA, BETA, T).mean(), rtol=1e-5
    )


def test_per_example_forms_average_to_batch_losses():
    s, t, y = _data(seed=3)

    @jax.jit
    def per_example_and_batch(s, t, y):
        return [
            (L.kd_per_example(s, t, T), L.kd_loss(s, t, T)),
            (L.dkd_per_example(s, t, y, ALPHA, BETA, T), L.dkd_loss(s, t, y, ALPHA, BETA, T)),
            (L.nkd_per_example(s, t, y, GAMMA, T), L.nkd_loss(s, t, y, GAMMA, T)),
        ]

    with jax.enable_x64(True):
        for per_example, batch in per_example_and_batch(s, t, y):
            assert per_example.shape == (B,)
            np.testing.assert_allclose(float(jnp.mean(per_example)), float(batch), rtol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_equals_tckd_plus_weighted_nckd_per_sample(temperature):
    s, t, y = _data(seed=4)
    p_teacher_target = np.array([ref.softmax(z / temperature)[label] for z, label in zip(t, y)])

    @jax.jit
    def kd_and_terms(s, t, y):
        return L.kd_per_example(s, t, temperature), [
            L.dkd_terms_per_example(s, t, y, temperature, stable=stable) for stable in (False, True)
        ]

    with jax.enable_x64(True):
        kd, all_terms = kd_and_terms(s, t, y)
        for tckd, nckd in all_terms:
            np.testing.assert_allclose(
                np.asarray(tckd + (1 - p_teacher_target) * nckd), np.asarray(kd), rtol=1e-10
            )


def test_kd_gradient_has_closed_form():
    # d KD / d z^S = T * (p^S - p^T) / B: an analytic check independent of autodiff rules.
    s, t, _ = _data(seed=5)
    expected = np.stack([T * (ref.softmax(zs / T) - ref.softmax(zt / T)) for zs, zt in zip(s, t)])
    with jax.enable_x64(True):
        got = jax.jit(jax.grad(L.kd_loss))(jnp.asarray(s), jnp.asarray(t), T)
    np.testing.assert_allclose(np.asarray(got), expected / B, rtol=1e-10, atol=1e-14)


GRAD_FNS = {
    "kd": lambda s, t, y: L.kd_loss(s, t, T),
    "dkd": lambda s, t, y: L.dkd_loss(s, t, y, ALPHA, BETA, T),
    "dkd_stable": lambda s, t, y: L.dkd_loss(s, t, y, ALPHA, BETA, T, stable=True),
    "nkd": lambda s, t, y: L.nkd_loss(s, t, y, GAMMA, T),
    "clkd": lambda s, t, y: L.clkd_objective(s, t, y, correlation="class", **CLKD_WEIGHTS)[0],
}


GRAD_FNS = {name: jax.jit(fn) for name, fn in GRAD_FNS.items()}


@pytest.mark.parametrize("name", sorted(GRAD_FNS))
def test_student_gradients_match_finite_differences(name):
    fn = GRAD_FNS[name]
    s, t, y = _data(seed=6, b=3, k=5)
    with jax.enable_x64(True):
        s, t, y = jnp.asarray(s), jnp.asarray(t), jnp.asarray(y)
        check_grads(
            jax.jit(lambda z: fn(z, t, y)),
            (s,),
            order=1,
            modes=("rev",),
            eps=1e-6,
            atol=1e-7,
            rtol=1e-7,
        )


def test_dkd_gradient_matches_a_hand_written_central_difference():
    s, t, y = _data(seed=6, b=3, k=5)
    fn = GRAD_FNS["dkd"]
    with jax.enable_x64(True):
        direction = np.random.default_rng(0).normal(size=s.shape)
        h = 1e-6
        fd = (fn(s + h * direction, t, y) - fn(s - h * direction, t, y)) / (2 * h)
        analytic = np.sum(np.asarray(jax.jit(jax.grad(fn))(s, t, y)) * direction)
    np.testing.assert_allclose(analytic, float(fd), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(GRAD_FNS))
def test_teacher_receives_no_gradient(name):
    s, t, y = _data(seed=7)
    grad_t = jax.jit(jax.grad(GRAD_FNS[name], argnums=1))(jnp.asarray(s), jnp.asarray(t), y)
    assert not np.any(np.asarray(grad_t)), "teacher logits must be under stop_gradient"


def test_jit_and_vmap():
    s, t, y = _data(seed=8)
    fn = lambda s, t, y: L.dkd_loss(s, t, y, ALPHA, BETA, T)  # noqa: E731
    expected = ref.dkd_per_example(s, t, y, ALPHA, BETA, T).mean()
    np.testing.assert_allclose(jax.jit(fn)(s, t, y), expected, rtol=1e-5)
    # vmap over a leading axis of independent batches == one loss per batch.
    stacked = [_data(seed=9 + i) for i in range(3)]
    ss, ts, ys = (np.stack(parts) for parts in zip(*stacked))
    batched = jax.jit(jax.vmap(fn))(ss, ts, ys)
    np.testing.assert_allclose(batched, [jax.jit(fn)(*d) for d in stacked], rtol=1e-6)
    # Traced temperature inside jit (its value check is skipped, not an error).
    jitted = jax.jit(lambda s, t, temp: L.kd_loss(s, t, temp))
    np.testing.assert_allclose(
        jitted(s, t, jnp.float32(T)), ref.kd_per_example(s, t, T).mean(), rtol=1e-5
    )


# --- DKD numerics: the reference's inf quirk and the stable option ----------------------


def _extreme_case():
    """T = 1 and a student so sure of the target that its non-target bin underflows in f32."""
    s = np.zeros((2, 5), np.float32)
    s[:, 0] = 200.0  # exp(-200) = 1.4e-87 underflows to 0 in float32
    t = np.array([[2.0, 1.0, 0.5, 0.0, -1.0], [0.0, 1.0, 2.0, 3.0, 4.0]], np.float32)
    y = np.array([0, 0])
    return s, t, y


def test_dkd_reference_quirk_inf_when_bin_underflows():
    s, t, y = _extreme_case()
    loss = jax.jit(L.dkd_loss)(s, t, y, 1.0, 8.0, 1.0)
    assert np.isposinf(float(loss)), "stable=False must reproduce the reference's inf"


def test_dkd_stable_is_finite_and_correct_when_bin_underflows():
    s, t, y = _extreme_case()
    loss, grad = jax.jit(jax.value_and_grad(L.dkd_loss), static_argnames="stable")(
        s, t, y, 1.0, 8.0, 1.0, stable=True
    )
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    # Expected in float64 log space: log b^S_other = logsumexp of the non-target log-probs.
    expected = 0.0
    for zs, zt, label in zip(s.astype(np.float64), t.astype(np.float64), y):
        log_ps, pt = ref.log_softmax(zs), ref.softmax(zt)
        others = [k for k in range(5) if k != label]
        log_bs = [log_ps[label], np.logaddexp.reduce(log_ps[others])]
        bt = np.array([pt[label], pt[others].sum()])
        tckd = ref.kl(bt, log_bs)
        nckd = ref.kl(ref.softmax(zt[others]), ref.log_softmax(zs[others]))
        expected += (tckd + 8.0 * nckd) / len(y)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_dkd_stable_gradients_equal_reference_gradients_on_ordinary_inputs():
    s, t, y = _data(seed=10)
    grad = jax.jit(jax.grad(L.dkd_loss), static_argnames="stable")
    with jax.enable_x64(True):
        g_ref = grad(s, t, y, ALPHA, BETA, T, stable=False)
        g_stable = grad(s, t, y, ALPHA, BETA, T, stable=True)
    np.testing.assert_allclose(np.asarray(g_stable), np.asarray(g_ref), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("stable", [False, True])
def test_dkd_rejects_fewer_than_three_classes(stable):
    s, t, y = _data(k=2)
    with pytest.raises(ValueError, match="at least 3 classes.*K=2"):
        L.dkd_loss(s, t, y, 1.0, 8.0, T, stable=stable)


# --- input validation ---------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    s, t, y = _data()
    with pytest.raises(ValueError, match="same shape"):
        L.kd_loss(s, t[:, :-1], T)
    with pytest.raises(ValueError, match=r"student_logits must be a float array of shape \(B, K\)"):
        L.kd_loss(s[0], t[0], T)
    with pytest.raises(ValueError, match="student_logits must be a float"):
        L.kd_loss(s.astype(np.int32), t, T)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be"):
            L.kd_loss(s, t, bad)
    with pytest.raises(ValueError, match=r"labels must be an integer array of shape \(6,\)"):
        L.dkd_loss(s, t, y[:-1], 1.0, 8.0, T)
    with pytest.raises(ValueError, match="labels must be an integer"):
        L.nkd_loss(s, t, y.astype(np.float32), GAMMA, T)
    with pytest.raises(ValueError, match=r"labels .* shape \(6,\)"):
        L.ce_loss(s, y[:, None])
    with pytest.raises(ValueError, match="beta must be a scalar"):
        L.dkd_loss(s, t, y, 1.0, jnp.ones(2), T)
    with pytest.raises(ValueError, match="unknown correlation 'feature'"):
        L.clkd_terms(s, t, "feature", reduction="mean")
    with pytest.raises(ValueError, match="unknown reduction"):
        L.clkd_terms(s, t, "batch", reduction="sum")


# --- CLKD options --------------------------------------------------------------------------


def test_clkd_sum_per_row_reduction_scales_the_mean():
    s, t, _ = _data(seed=11)
    mean_terms = L.clkd_terms(s, t, "batch", reduction="mean")
    sum_terms = L.clkd_terms(s, t, "batch", reduction="sum_per_row")
    np.testing.assert_allclose(sum_terms["instance"], K * mean_terms["instance"], rtol=1e-5)
    np.testing.assert_allclose(sum_terms["class"], B * mean_terms["class"], rtol=1e-5)
    np.testing.assert_allclose(sum_terms["correlation"], mean_terms["correlation"], rtol=1e-6)


# --- objectives ----------------------------------------------------------------------------


def test_warmup_factor():
    for epoch, warmup, expected in [
        (1, 20, 0.05),
        (10, 20, 0.5),
        (20, 20, 1.0),
        (240, 20, 1.0),
        (1, 1, 1.0),
        (3, 0, 1.0),
    ]:
        np.testing.assert_allclose(L.warmup_factor(epoch, warmup), expected, rtol=1e-7)
    traced = jax.jit(L.warmup_factor, static_argnums=1)
    np.testing.assert_allclose(traced(jnp.int32(5), 20), 0.25, rtol=1e-7)
    np.testing.assert_allclose(jax.jit(L.warmup_factor)(jnp.int32(5), jnp.int32(0)), 1.0)
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        L.warmup_factor(1, -1)
    with pytest.raises(ValueError, match="epoch must be an integer scalar"):
        L.warmup_factor(np.array([1, 2]), 20)


def test_objectives_combine_terms_as_the_recipes():
    s, t, y = _data(seed=12)
    ce = ref.ce(s, y)
    with jax.enable_x64(True):
        s_, t_, y_ = jnp.asarray(s), jnp.asarray(t), jnp.asarray(y)
        epoch = jnp.int32(5)  # a traced-style epoch: warmup 5/20
        loss, terms = L.kd_objective(s_, t_, y_, temperature=4.0, ce_weight=0.1, kd_weight=0.9)
        kd = ref.kd_per_example(s, t, 4.0).mean()
        np.testing.assert_allclose(float(loss), 0.1 * ce + 0.9 * kd, rtol=1e-10)
        assert set(terms) == {"ce", "kd"}
        np.testing.assert_allclose(float(terms["kd"]), kd, rtol=1e-10)

        loss, terms = jax.jit(functools.partial(
            L.dkd_objective, alpha=1.0, beta=8.0, temperature=4.0, ce_weight=0.7,
            warmup_epochs=20, stable=False))(s_, t_, y_, epoch)
        tckd, nckd = ref.dkd_terms_per_example(s, t, y, 4.0)
        dkd = (1.0 * tckd + 8.0 * nckd).mean()
        # ce_weight 0.7 (the recipes' is 1): a dropped weight would go unnoticed at 1.
        np.testing.assert_allclose(float(loss), 0.7 * ce + 0.25 * dkd, rtol=1e-10)
        np.testing.assert_allclose(
            [float(terms[k]) for k in ("tckd", "nckd", "dkd", "ce")],
            [tckd.mean(), nckd.mean(), dkd, ce],
            rtol=1e-10,
        )
        np.testing.assert_allclose(float(terms["warmup"]), 0.25, rtol=1e-7)

        loss, terms = L.nkd_objective(s_, t_, y_, 30, gamma=0.5, temperature=1.0, ce_weight=1.0,
                                        warmup_epochs=1)
        nkd = ref.nkd_per_example(s, t, y, 0.5, 1.0).mean()
        np.testing.assert_allclose(float(loss), ce + nkd, rtol=1e-10)
        np.testing.assert_allclose(float(terms["nkd"]), nkd, rtol=1e-10)
        loss, terms = L.nkd_objective(s_, t_, y_, epoch, gamma=0.5, temperature=1.0,
                                      ce_weight=1.3, warmup_epochs=20)   # mid-warmup: 5/20
        np.testing.assert_allclose(float(loss), 1.3 * ce + 0.25 * nkd, rtol=1e-10)
        np.testing.assert_allclose(float(terms["warmup"]), 0.25, rtol=1e-7)

        loss, terms = L.clkd_objective(s_, t_, y_, correlation="batch", **CLKD_WEIGHTS)
        c = ref.clkd_terms(s, t)
        expected = 0.1 * ce + 0.5 * (c["instance"] + 2.0 * c["class"]) + 0.4 * c["correlation"]
        np.testing.assert_allclose(float(loss), expected, rtol=1e-10)
        assert set(terms) == {"ce", "instance", "class", "correlation"}


def test_torch_formulas_agree_if_torch_is_available():
    """Secondary check against the reference's torch expressions (numpy is the primary one)."""
    torch = pytest.importorskip("torch", reason="needs torch: a second reference after numpy")
    import torch.nn.functional as F

    s, t, y = _data(seed=13)
    ts, tt = torch.tensor(s), torch.tensor(t)
    ty = torch.tensor(y)
    kd = (
        F.kl_div(F.log_softmax(ts / T, 1), F.softmax(tt / T, 1), reduction="none").sum(1).mean()
        * T**2
    )
    gt = torch.zeros_like(ts).scatter_(1, ty[:, None], 1).bool()

    def cat_mask(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * ~gt).sum(1, keepdim=True)], 1)

    ps, pt = cat_mask(F.softmax(ts / T, 1)), cat_mask(F.softmax(tt / T, 1))
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * T**2 / B
    nckd = (
        F.kl_div(
            F.log_softmax(ts / T - 1000.0 * gt, 1),
            F.softmax(tt / T - 1000.0 * gt, 1),
            reduction="sum",
        )
        * T**2
        / B
    )
    with jax.enable_x64(True):
        np.testing.assert_allclose(float(L.kd_loss(s, t, T)), kd.item(), rtol=1e-10)
        np.testing.assert_allclose(
            float(L.dkd_loss(s, t, y, ALPHA, BETA, T)),
            (ALPHA * tckd + BETA * nckd).item(),
            rtol=1e-10,
        )
