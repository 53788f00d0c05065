"""Tests of SDD in kd_jax.losses: multi-scale pooling, local logits, region weights, the
generic scale-decoupling lift and the SD-KD / SD-DKD / SD-NKD losses and objective.

Expected values come from the loop-based numpy code in test_losses_reference.py
(float64 at rtol 1e-10 under jax.enable_x64; float32 at rtol 1e-5, see test_losses.py).
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
B, N, K, C = 5, 5, 4, 3  # few classes, so that teacher regions are right and wrong


# SDD's recipes (CIFAR-100, beta 8) as sd_objective keyword arguments.
_SD_COMMON = dict(temperature=T, complementary_weight=2.0, zero_nonfinite=True)
SD_KD_RECIPE = dict(_SD_COMMON, ce_weight=0.1, kd_weight=0.9, warmup_epochs=0)
SD_RECIPES = {
    "kd": SD_KD_RECIPE,
    "dkd": dict(_SD_COMMON, ce_weight=1.0, kd_weight=1.0, warmup_epochs=20, alpha=1.0,
                beta=8.0, stable=False),
    "nkd": dict(_SD_COMMON, ce_weight=1.0, kd_weight=1.0, warmup_epochs=20, gamma=8.0),
}


def _sd_objective(base: str):
    return functools.partial(L.sd_objective, base=base, **SD_RECIPES[base])


def _local(seed: int = 0, b: int = B, n: int = N, k: int = K):
    """Student/teacher local logits whose region weights contain both 1 and 2."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(b, n, k)) * 3
    t = rng.normal(size=(b, n, k)) * 3
    y = rng.integers(0, k, size=b)
    w = ref.region_weights(t, y)
    assert (w == 2).any() and (w[:, 1:] == 1).any(), "test data must exercise both weights"
    return s, t, y


def _feature_map(h: int, seed: int = 0, b: int = 2, c: int = C):
    return np.random.default_rng(seed).normal(size=(b, h, h, c))


# --- pooling and local logits --------------------------------------------------------------


@pytest.mark.parametrize("h", [8, 7, 14, 2])
@pytest.mark.parametrize("scales", ["[1,2,4]", (1, 2), "[1]"])
def test_multiscale_pool_matches_numpy_adaptive_pooling(h, scales):
    x = _feature_map(h)
    expected = ref.multiscale_pool(x, L.parse_scales(scales))
    with jax.enable_x64(True):
        got = L.multiscale_pool(x, scales)
    assert got.shape == (2, L.num_regions(scales), C)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-14)


def test_region_order_and_global_region():
    x = _feature_map(8, seed=1)
    with jax.enable_x64(True):
        pooled = np.asarray(L.multiscale_pool(x, (1, 2, 4)))
    np.testing.assert_allclose(pooled[:, 0], x.mean(axis=(1, 2)), rtol=1e-12)  # 0: GAP
    # 1..4: the 2x2 cells row-major; 5..20: the 4x4 cells row-major.
    np.testing.assert_allclose(pooled[:, 2], x[:, :4, 4:].mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(pooled[:, 3], x[:, 4:, :4].mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(
        pooled[:, 5 + 4 * 1 + 2], x[:, 2:4, 4:6].mean(axis=(1, 2)), rtol=1e-12
    )


def test_7x7_maps_use_the_reference_overlapping_windows():
    x = _feature_map(7, seed=2)
    with jax.enable_x64(True):
        pooled = np.asarray(L.multiscale_pool(x, (1, 2, 4)))
    # 7 -> 4 windows: [0,2), [1,4), [3,6), [5,7) (sizes 2, 3, 3, 2): rows 1, 3, 5 are shared.
    np.testing.assert_allclose(pooled[:, 5], x[:, 0:2, 0:2].mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(pooled[:, 5 + 4 + 1], x[:, 1:4, 1:4].mean(axis=(1, 2)), rtol=1e-12)
    # Region 0 = mean of the 4 window means: row r weighs sum_{windows w containing r} 1/|w|.
    row = np.array([1 / 2, 1 / 2 + 1 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2]) / 4
    weights = np.outer(row, row)
    np.testing.assert_allclose(pooled[:, 0], np.einsum("bhwc,hw->bc", x, weights), rtol=1e-12)
    assert not np.allclose(pooled[:, 0], x.mean(axis=(1, 2))), "7x7 region 0 is not plain GAP"


def test_scale_strings_equal_tuples_and_shapes():
    x = jax.ShapeDtypeStruct((4, 7, 7, 16), jnp.float32)
    for scales, n in [("[1]", 1), ("[1,2]", 5), ("[1,2,4]", 21), ((1, 2, 4), 21), ([1], 1)]:
        out = jax.eval_shape(lambda f, s=scales: L.multiscale_pool(f, s), x)
        assert out.shape == (4, n, 16) and out.dtype == jnp.float32
    assert L.parse_scales(" [1, 2] ") == (1, 2) == L.parse_scales([1, 2])


def test_local_logits_match_numpy_and_region0_is_global_logits():
    rng = np.random.default_rng(3)
    x = _feature_map(8, seed=3)
    kernel, bias = rng.normal(size=(C, K)), rng.normal(size=(K,))
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(L.local_logits, static_argnums=3)(x, kernel, bias, "[1,2,4]"))
    expected = ref.multiscale_pool(x, (1, 2, 4)) @ kernel + bias
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    global_logits = x.mean(axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(got[:, 0], global_logits, rtol=1e-12, atol=1e-13)
    # bf16 weights and features are upcast: float32 result.
    low = jax.eval_shape(
        lambda *a: L.local_logits(*a, (1, 2)),
        jnp.asarray(x, jnp.bfloat16),
        jnp.asarray(kernel, jnp.bfloat16),
        jnp.asarray(bias, jnp.bfloat16),
    )
    assert low.dtype == jnp.float32 and low.shape == (2, 5, K)


def test_local_logits_gradients():
    rng = np.random.default_rng(4)
    x = _feature_map(7, seed=4)
    kernel, bias = rng.normal(size=(C, K)), rng.normal(size=(K,))
    with jax.enable_x64(True):
        check_grads(
            jax.jit(lambda f, w, b: L.local_logits(f, w, b, (1, 2, 4))),
            (x, kernel, bias),
            order=1,
            modes=("rev",),
            eps=1e-6,
            atol=1e-7,
            rtol=1e-7,
        )


# --- region weights ------------------------------------------------------------------------


def test_region_weights_cover_the_four_cases():
    # Per sample: region 0 (global) then regions 1-2. Label is class 0 for both samples.
    right, wrong, other_wrong = [5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]
    teacher = np.array(
        [[right, right, wrong], [wrong, right, other_wrong]]  # global right: 1 (both), 2
    )  # global wrong: 2, 1 (both wrong)
    got = L.sdd_region_weights(teacher, np.array([0, 0]), 2.0)
    np.testing.assert_array_equal(np.asarray(got), [[1, 1, 2], [1, 2, 1]])
    got3 = L.sdd_region_weights(teacher, np.array([0, 0]), complementary_weight=3.0)
    np.testing.assert_array_equal(np.asarray(got3), [[1, 1, 3], [1, 3, 1]])


def test_region_weights_match_numpy_loop():
    _, t, y = _local(seed=5, n=21, k=3)
    got = L.sdd_region_weights(t, y, 2.0)
    np.testing.assert_array_equal(np.asarray(got), ref.region_weights(t, y, 2.0))


# --- SD losses -----------------------------------------------------------------------------

SD_CASES = {
    "sd_kd": (
        lambda s, t, y: L.sd_kd_loss(s, t, y, T, 2.0),
        lambda s, t, y: ref.scale_decoupled(lambda a, b: ref.kd_per_example(a, b, T), s, t, y),
    ),
    "sd_dkd": (
        lambda s, t, y: L.sd_dkd_loss(s, t, y, 1.0, 8.0, T, 2.0),
        lambda s, t, y: ref.scale_decoupled(
            lambda a, b: ref.dkd_per_example(a, b, y, 1.0, 8.0, T), s, t, y
        ),
    ),
    "sd_dkd_stable": (
        lambda s, t, y: L.sd_dkd_loss(s, t, y, 1.0, 8.0, T, 2.0, stable=True),
        lambda s, t, y: ref.scale_decoupled(
            lambda a, b: ref.dkd_per_example(a, b, y, 1.0, 8.0, T), s, t, y
        ),
    ),
    "sd_nkd_cw3": (
        lambda s, t, y: L.sd_nkd_loss(s, t, y, 2.0, T, complementary_weight=3.0),
        lambda s, t, y: ref.scale_decoupled(
            lambda a, b: ref.nkd_per_example(a, b, y, 2.0, T), s, t, y, complementary_weight=3.0
        ),
    ),
}


SD_CASES = {name: (jax.jit(fn), expected) for name, (fn, expected) in SD_CASES.items()}


@pytest.mark.parametrize("name", sorted(SD_CASES))
def test_sd_losses_match_numpy(name):
    fn, expected_fn = SD_CASES[name]
    s, t, y = _local(seed=6)
    with jax.enable_x64(True):
        got = fn(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y))
        assert got.shape == () and got.dtype == jnp.float64
        np.testing.assert_allclose(float(got), expected_fn(s, t, y), rtol=1e-10)
    s32, t32 = s.astype(np.float32), t.astype(np.float32)
    got32 = fn(s32, t32, y)
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(
        float(got32), expected_fn(s32.astype(np.float64), t32.astype(np.float64), y), rtol=1e-5
    )


def test_scales_1_reduces_every_sd_loss_to_its_base_loss():
    rng = np.random.default_rng(7)
    fs, ft = _feature_map(8, seed=7, b=B), _feature_map(8, seed=8, b=B)
    ws, bs, wt, bt = (rng.normal(size=shape) for shape in [(C, K), (K,), (C, K), (K,)])
    y = rng.integers(0, K, size=B)
    s_global = fs.mean(axis=(1, 2)) @ ws + bs
    t_global = ft.mean(axis=(1, 2)) @ wt + bt

    @jax.jit
    def sd_and_base(fs, ft, s_global, t_global):
        s_local, t_local = L.local_logits(fs, ws, bs, "[1]"), L.local_logits(ft, wt, bt, (1,))
        return [
            (L.sd_kd_loss(s_local, t_local, y, T, 2.0), L.kd_loss(s_global, t_global, T)),
            (
                L.sd_dkd_loss(s_local, t_local, y, 1.0, 8.0, T, 2.0),
                L.dkd_loss(s_global, t_global, y, 1.0, 8.0, T),
            ),
            (
                L.sd_nkd_loss(s_local, t_local, y, 2.0, T, 2.0),
                L.nkd_loss(s_global, t_global, y, 2.0, T),
            ),
        ]

    with jax.enable_x64(True):
        for sd, base in sd_and_base(fs, ft, s_global, t_global):
            np.testing.assert_allclose(float(sd), float(base), rtol=1e-10)


def test_scale_decoupled_lifts_a_user_loss():
    def squared_error(student, teacher, labels, scale):  # (B, K) -> (B,)
        del labels
        return scale * jnp.sum((student - teacher) ** 2, axis=-1)

    s, t, y = _local(seed=9)
    with jax.enable_x64(True):
        got = L.scale_decoupled(functools.partial(squared_error, scale=0.5), s, t, y,
                                complementary_weight=4.0, zero_nonfinite=True)
    expected = ref.scale_decoupled(
        lambda a, b: 0.5 * ((a - b) ** 2).sum(-1), s, t, y, complementary_weight=4.0
    )
    np.testing.assert_allclose(float(got), expected, rtol=1e-10)


def test_sd_gradients_and_stop_gradient():
    s, t, y = _local(seed=10, b=3, n=5, k=4)
    with jax.enable_x64(True):
        s_, t_ = jnp.asarray(s), jnp.asarray(t)
        for fn, _ in (SD_CASES["sd_dkd"], SD_CASES["sd_nkd_cw3"]):
            check_grads(
                jax.jit(lambda z: fn(z, t_, y)),
                (s_,),
                order=1,
                modes=("rev",),
                eps=1e-6,
                atol=1e-7,
                rtol=1e-7,
            )
            assert not np.any(np.asarray(jax.jit(jax.grad(fn, argnums=1))(s_, t_, y)))


def test_sd_dkd_inf_quirk_and_stable_option():
    s = np.zeros((2, 2, 4), np.float32)
    s[:, :, 0] = 200.0  # the student's non-target bin underflows to 0 at T = 1
    t = np.random.default_rng(11).normal(size=(2, 2, 4)).astype(np.float32)
    y = np.array([0, 1])
    loss = jax.jit(jax.value_and_grad(L.sd_dkd_loss), static_argnames=("stable", "zero_nonfinite"))
    raw = loss(s, t, y, 1.0, 8.0, 1.0, 2.0, stable=False, zero_nonfinite=False)[0]
    assert np.isposinf(float(raw)), "stable=False must reproduce the inf of DKD's TCKD"
    # Default: the SDD reference's guard turns the non-finite loss into 0, gradient 0.
    value, grad = loss(s, t, y, 1.0, 8.0, 1.0, 2.0, stable=False)
    assert float(value) == 0.0 and not np.any(np.asarray(grad))
    value, grad = loss(s, t, y, 1.0, 8.0, 1.0, 2.0, stable=True)
    assert np.isfinite(float(value)) and float(value) > 0
    assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad))


def test_sd_objective_recipes_jit_and_vmap():
    s, t, y = _local(seed=12)
    s_global = np.random.default_rng(12).normal(size=(B, K))
    ce = ref.ce(s_global, y)
    sd_kd = SD_CASES["sd_kd"][1](s, t, y)
    sd_dkd = SD_CASES["sd_dkd"][1](s, t, y)
    sd_nkd = ref.scale_decoupled(lambda a, b: ref.nkd_per_example(a, b, y, 8.0, T), s, t, y)
    objective = {base: jax.jit(_sd_objective(base)) for base in SD_RECIPES}
    with jax.enable_x64(True):
        epoch = jnp.int32(4)
        loss, terms = objective["kd"](s_global, s, t, y, epoch)
        np.testing.assert_allclose(float(loss), 0.1 * ce + 0.9 * sd_kd, rtol=1e-10)  # no warmup
        assert set(terms) == {"ce", "sd_kd", "warmup"}
        loss, terms = objective["dkd"](s_global, s, t, y, epoch)
        np.testing.assert_allclose(float(loss), ce + 0.2 * sd_dkd, rtol=1e-9)
        np.testing.assert_allclose(float(terms["sd_dkd"]), sd_dkd, rtol=1e-10)
        loss, _ = objective["nkd"](s_global, s, t, y, epoch)
        np.testing.assert_allclose(float(loss), ce + 0.2 * sd_nkd, rtol=1e-9)
    # grad and vmap of the whole objective (float32).
    grads = jax.jit(jax.grad(lambda g, l: _sd_objective("dkd")(g, l, t, y, 30)[0], argnums=(0, 1)))(
        s_global.astype(np.float32), s.astype(np.float32)
    )
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    stacked = jax.jit(jax.vmap(lambda a, b: _sd_objective("dkd")(s_global, a, b, y, 30)[0]))(
        np.stack([s, s[::-1]]).astype(np.float32), np.stack([t, t]).astype(np.float32)
    )
    np.testing.assert_allclose(stacked[0], objective["dkd"](s_global, s, t, y, 30)[0], rtol=1e-6)


def test_sdd_bad_inputs_raise_clear_errors():
    x = _feature_map(8)
    for bad in ("[1,3]", "1,2", "[4,2]", "", "[8]", "[2,4]"):
        with pytest.raises(ValueError, match="scale"):
            L.multiscale_pool(x, bad)
    with pytest.raises(ValueError, match="unknown scale string '1,2'"):
        L.parse_scales("1,2")
    with pytest.raises(
        ValueError, match=r"feature_map must be a float array of shape \(B, H, W, C\)"
    ):
        L.multiscale_pool(x[0], (1,))
    with pytest.raises(ValueError, match="kernel must be a float .3, K. array"):
        L.local_logits(x, np.ones((C + 1, K)), np.zeros(K), (1,))
    with pytest.raises(ValueError, match=r"bias must be a float \(4,\) array"):
        L.local_logits(x, np.ones((C, K)), np.zeros(K + 1), (1,))
    s, t, y = _local()
    with pytest.raises(
        ValueError, match="student_local and teacher_local must have the same shape"
    ):
        L.sd_kd_loss(s, t[:, :-1], y, T, 2.0)
    with pytest.raises(
        ValueError, match=r"student_local must be a float array of shape \(B, N, K\)"
    ):
        L.sd_kd_loss(s[:, 0], t[:, 0], y, T, 2.0)
    with pytest.raises(ValueError, match=r"labels must be an integer array of shape \(5,\)"):
        L.sd_dkd_loss(s, t, y[:2], 1.0, 8.0, T, 2.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        L.sd_nkd_loss(s, t, y, 1.0, -2.0, 2.0)
    with pytest.raises(ValueError, match="unknown SDD base loss 'crd'"):
        L.sd_objective(s[:, 0], s, t, y, 1, base="crd", **SD_KD_RECIPE)


# --- SD-KD's NaN guards (SDD mdistiller/distillers/KD.py sdd_kd_loss) -------------------------

def _torch_sdd_kd_loss(out_s_multi, out_t_multi, T, target):
    """SDD's sdd_kd_loss transcribed (B, K, N inputs as SDD's models give them; .cuda()
    dropped): per-element KL, NaN elements -> 0, class sum, region weights, non-finite -> 0."""
    import torch
    import torch.nn.functional as F
    out_s_multi = out_s_multi.permute(2, 0, 1)
    out_t_multi = out_t_multi.permute(2, 0, 1)
    out_t = torch.reshape(out_t_multi, (out_t_multi.shape[0] * out_t_multi.shape[1],
                                        out_t_multi.shape[2]))
    out_s = torch.reshape(out_s_multi, (out_s_multi.shape[0] * out_s_multi.shape[1],
                                        out_s_multi.shape[2]))
    target_r = target.repeat(out_t_multi.shape[0])
    p_s = F.log_softmax(out_s / T, dim=1)
    p_t = F.softmax(out_t / T, dim=1)
    loss_kd = F.kl_div(p_s, p_t, reduction='none') * (T ** 2)
    nan_index = torch.isnan(loss_kd)
    loss_kd[nan_index] = torch.tensor(0.0)
    loss_kd = torch.sum(loss_kd, dim=1)
    out_t_predict = torch.argmax(out_t, dim=1)
    mask_true = out_t_predict == target_r
    mask_false = out_t_predict != target_r
    global_prediction = out_t_predict[0:len(target)]
    gt_mask = (global_prediction == target).repeat(out_t_multi.shape[0])
    gf_mask = (global_prediction != target).repeat(out_t_multi.shape[0])
    mask_false[gf_mask] = False
    mask_false[0:len(target)] = False
    gt_lw = mask_false
    mask_true[gt_mask] = False
    mask_true[0:len(target)] = False
    gw_lt = mask_true
    mask_false = out_t_predict != target_r
    mask_true = out_t_predict == target_r
    index = torch.zeros_like(loss_kd).float()
    mask_false[gt_mask] = False
    gw_lw = mask_false
    mask_true[gf_mask] = False
    gt_lt = mask_true
    index[gw_lw] = 1.0
    index[gt_lt] = 1.0
    index[gw_lt] = 2
    index[gt_lw] = 2
    loss = torch.sum(loss_kd * index) / target_r.shape[0]
    if torch.isnan(loss) or torch.isinf(loss):
        loss = torch.zeros(1).float()
    return loss


def test_sd_kd_zeroes_a_nan_kl_element_not_the_whole_loss():
    """One (region, class) where the teacher's and the student's probabilities both vanish
    (logit -inf): its KL element is 0 * (-inf - -inf) = NaN in torch's kl_div and here. SDD
    zeroes that ELEMENT before the class sum, so the loss keeps every other element (and its
    gradient): equal to the torch transcription, value and gradient, and not 0."""
    torch = pytest.importorskip("torch", reason="needs torch: the reference is torch code")
    s, t, y = _local(3)
    s, t = s.astype(np.float32), t.astype(np.float32)
    s[1, 2, 3] = -np.inf
    t[1, 2, 3] = -np.inf
    got, grad = jax.value_and_grad(L.sd_kd_loss)(jnp.asarray(s), t, y, T, 2.0)
    s_torch = torch.tensor(s).permute(0, 2, 1).contiguous().requires_grad_(True)   # (B, K, N)
    want = _torch_sdd_kd_loss(s_torch, torch.tensor(t).permute(0, 2, 1), T,
                              torch.tensor(y).long())
    want.backward()
    want = float(want.detach())
    assert want != 0.0 and np.isfinite(float(got))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    want_grad = s_torch.grad.permute(0, 2, 1).numpy()
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-6)
    # Without the guards the raw loss is NaN (the element is NaN, not the whole input).
    assert np.isnan(float(L.sd_kd_loss(s, t, y, T, 2.0, zero_nonfinite=False)))
