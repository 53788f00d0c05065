"""Tests of MSDCRD in kd_jax.losses: sliding-window and adaptive pooling, the (chunked)
InfoNCE, the complementary sample weights, the sample-/feature-wise terms and the objective.

Expected values come from the loop-based numpy reference below, written from the reconstruction's definition
(MSDCRD) and the function docstrings, not from kd_jax: float64 at rtol 1e-10 under
jax.enable_x64, float32 at rtol 1e-5 (see test_losses.py for the tolerance reasoning).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
from jax.test_util import check_grads

import kd_jax.losses as L
import test_losses_reference as ref

# --- numpy reference (loops over windows, positions, rows) ---------------------------------


np_adaptive_pool = ref.adaptive_avg_pool   # torch AdaptiveAvgPool2d((h, w)), NHWC


def np_sliding_pool(x, k):
    """Stride-1 k x k average pool, positions row-major: (B, H, W, C) -> (B, P, C)."""
    b, h, w, c = x.shape
    out = []
    for i in range(h - k + 1):
        for j in range(w - k + 1):
            out.append(x[:, i : i + k, j : j + k].mean(axis=(1, 2)))
    return np.stack(out, axis=1)


def np_normalize(v):
    return v / max(float(np.sqrt(np.sum(v * v))), 1e-12)


def np_info_nce(anchors, candidates, tau):
    """l_i = -log softmax_j(a_i . c_j / tau)[i], one anchor at a time."""
    out = []
    for i in range(len(anchors)):
        logits = np.array([anchors[i] @ candidates[j] / tau for j in range(len(candidates))])
        out.append(-ref.log_softmax(logits)[i])
    return np.array(out)


def np_msdcrd(s_map, t_map, s_head, t_head, labels, t_logits, windows=(1, 2, 4), tau=0.07,
              cw=2.0, classifier=None):
    """{"sample", "feature"} as the msdcrd_terms docstring describes them."""
    s_map, t_map = np.asarray(s_map, np.float64), np.asarray(t_map, np.float64)
    classifier = t_head if classifier is None else classifier
    h = min(s_map.shape[1], t_map.shape[1])
    w = min(s_map.shape[2], t_map.shape[2])
    if s_map.shape[1:3] != (h, w):
        s_map = np_adaptive_pool(s_map, h, w)
    if t_map.shape[1:3] != (h, w):
        t_map = np_adaptive_pool(t_map, h, w)
    sample, feature = [], []
    for k in windows:
        s_pool, t_pool = np_sliding_pool(s_map, k), np_sliding_pool(t_map, k)
        rows_s, rows_t, weights = [], [], []
        for b in range(s_map.shape[0]):
            global_right = int(np.argmax(t_logits[b])) == labels[b]
            for p in range(s_pool.shape[1]):
                rows_s.append(s_pool[b, p] @ s_head[0] + s_head[1])
                rows_t.append(t_pool[b, p] @ t_head[0] + t_head[1])
                local = t_pool[b, p] @ classifier[0] + classifier[1]
                local_right = int(np.argmax(local)) == labels[b]
                weights.append(cw if local_right != global_right else 1.0)
        e_s, e_t = np.array(rows_s), np.array(rows_t)  # (S, K), rows (b, p)
        losses = np_info_nce(
            [np_normalize(r) for r in e_s], [np_normalize(r) for r in e_t], tau
        )
        sample.append(np.sum(np.array(weights) * losses) / len(e_s))
        cols_s = [np_normalize(e_s[:, d]) for d in range(e_s.shape[1])]
        cols_t = [np_normalize(e_t[:, d]) for d in range(e_t.shape[1])]
        feature.append(np.mean(np_info_nce(cols_s, cols_t, tau)))
    return {"sample": float(np.mean(sample)), "feature": float(np.mean(feature))}


def np_weights(t_local, t_logits, labels, cw):
    b, p, _ = t_local.shape
    out = np.ones((b, p))
    for i in range(b):
        g = int(np.argmax(t_logits[i])) == labels[i]
        for j in range(p):
            if (int(np.argmax(t_local[i, j])) == labels[i]) != g:
                out[i, j] = cw
    return out


# --- data ----------------------------------------------------------------------------------


def _case(seed, b, s_shape, t_shape, k, num_classes=None, scale=2.0):
    """Maps, heads, labels, teacher logits; classifier only when num_classes != None."""
    rng = np.random.default_rng(seed)
    s_map = rng.normal(size=(b, *s_shape))
    t_map = rng.normal(size=(b, *t_shape))
    s_head = (rng.normal(size=(s_shape[2], k)) * scale, rng.normal(size=(k,)))
    t_head = (rng.normal(size=(t_shape[2], k)) * scale, rng.normal(size=(k,)))
    kc = k if num_classes is None else num_classes
    classifier = None
    if num_classes is not None:
        classifier = (rng.normal(size=(t_shape[2], kc)) * scale, rng.normal(size=(kc,)))
    labels = rng.integers(0, kc, size=b)
    t_logits = rng.normal(size=(b, kc)) * 3
    return dict(s_map=s_map, t_map=t_map, s_head=s_head, t_head=t_head, labels=labels,
                t_logits=t_logits, classifier=classifier)


# name -> (data, options). Heterogeneous: student 8x8 C=16, teacher 4x4 C=32, same K.
# The recipe's (kd_jax.methods.msdcrd) weights of the objective: CE 1, contrastive 0.8, no KD.
MSDCRD_WEIGHTS = dict(ce_weight=1.0, contrastive_weight=0.8, kd_weight=0.0, temperature=4.0,
                      chunk_size=None, teacher_head_trainable=False)

CASES = {
    "hetero_default": (
        _case(0, 3, (8, 8, 16), (4, 4, 32), 5),
        dict(windows=(1, 2, 4), tau=0.07, complementary_weight=2.0),
    ),
    "overlapping_projection": (  # 7x7 -> 5x6 (overlapping windows), (C,6) heads, 4 classes
        _case(1, 3, (7, 7, 6), (5, 6, 4), 6, num_classes=4),
        dict(windows=(3, 1), tau=0.5, complementary_weight=3.0),
    ),
    "same_size_global": (
        _case(2, 4, (4, 4, 3), (4, 4, 5), 4),
        dict(windows=(4, 2), tau=0.2, complementary_weight=2.0),
    ),
}


def _args(data, dtype=np.float64):
    cast = lambda x: np.asarray(x, dtype)  # noqa: E731
    heads = [None if h is None else (cast(h[0]), cast(h[1]))
             for h in (data["s_head"], data["t_head"], data["classifier"])]
    return (cast(data["s_map"]), cast(data["t_map"]), heads[0], heads[1],
            data["labels"].astype(np.int32),
            cast(data["t_logits"]), heads[2])


def _expected(data, options):
    return np_msdcrd(
        data["s_map"], data["t_map"], data["s_head"], data["t_head"], data["labels"],
        data["t_logits"], windows=options["windows"], tau=options["tau"],
        cw=options["complementary_weight"], classifier=data["classifier"],
    )


_terms = jax.jit(L.msdcrd_terms, static_argnames=("windows", "chunk_size"))


def _call(data, options, dtype=np.float64, chunk_size=None):
    sm, tm, sh, th, y, tl, cls = _args(data, dtype)
    return _terms(sm, tm, sh, th, y, tl, teacher_local_classifier=cls,
                  chunk_size=chunk_size, **options)


def test_cases_exercise_both_weights():
    for data, options in CASES.values():
        cls = data["classifier"] or data["t_head"]
        h = min(data["s_map"].shape[1], data["t_map"].shape[1])
        w = min(data["s_map"].shape[2], data["t_map"].shape[2])
        t_map = data["t_map"]
        if t_map.shape[1:3] != (h, w):
            t_map = np_adaptive_pool(t_map, h, w)
        k = min(options["windows"])
        local = np_sliding_pool(t_map, k) @ cls[0] + cls[1]
        weights = np_weights(local, data["t_logits"], data["labels"], 2.0)
        assert (weights == 2).any() and (weights == 1).any()


# --- pooling -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,window", [((5, 7), 1), ((5, 7), 3), ((5, 7), 5), ((4, 4), 2)])
def test_sliding_window_pool_matches_numpy_loop(shape, window):
    x = np.random.default_rng(3).normal(size=(2, *shape, 3))
    with jax.enable_x64(True):
        got = L.sliding_window_pool(x, window)
        assert got.dtype == jnp.float64
    p = (shape[0] - window + 1) * (shape[1] - window + 1)
    assert got.shape == (2, p, 3)
    np.testing.assert_allclose(np.asarray(got), np_sliding_pool(x, window), rtol=1e-12,
                               atol=1e-14)
    got32 = L.sliding_window_pool(x.astype(np.float32), window)
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got32), np_sliding_pool(x, window), rtol=1e-5,
                               atol=1e-6)


def test_sliding_window_pool_order_and_global_window():
    x = np.random.default_rng(4).normal(size=(2, 4, 5, 3))
    with jax.enable_x64(True):
        pooled = np.asarray(L.sliding_window_pool(x, 2))  # 3 x 4 positions
        full = np.asarray(L.sliding_window_pool(x[:, :, :4], 4))
    np.testing.assert_allclose(pooled[:, 1 * 4 + 2], x[:, 1:3, 2:4].mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(full[:, 0], x[:, :, :4].mean(axis=(1, 2)), rtol=1e-12)


@pytest.mark.parametrize("in_shape,size", [((8, 8), (4, 4)), ((7, 7), (4, 4)), ((6, 5), (3, 4)),
                                           ((5, 6), (5, 6))])
def test_adaptive_pool_to_matches_numpy(in_shape, size):
    x = np.random.default_rng(5).normal(size=(2, *in_shape, 3))
    with jax.enable_x64(True):
        got = L.adaptive_pool_to(x, size)
    assert got.shape == (2, *size, 3)
    np.testing.assert_allclose(np.asarray(got), np_adaptive_pool(x, *size), rtol=1e-12,
                               atol=1e-14)


# --- InfoNCE and chunking ------------------------------------------------------------------

S_CHUNK, D_CHUNK = 37, 4
_nce = jax.jit(L.info_nce_rows, static_argnames=("chunk_size",))


def _nce_objective(a, c, chunk_size):
    # A non-uniform weighting so that every row's gradient is checked.
    return jnp.sum(L.info_nce_rows(a, c, 0.3, chunk_size=chunk_size) * jnp.arange(1, S_CHUNK + 1))


_nce_grad = jax.jit(jax.value_and_grad(_nce_objective, argnums=(0, 1)), static_argnums=2)


def test_info_nce_rows_matches_numpy():
    rng = np.random.default_rng(6)
    a, c = rng.normal(size=(S_CHUNK, D_CHUNK)), rng.normal(size=(S_CHUNK, D_CHUNK))
    expected = np_info_nce(a, c, 0.3)
    with jax.enable_x64(True):
        for chunk in (None, 8):
            np.testing.assert_allclose(np.asarray(_nce(a, c, 0.3, chunk_size=chunk)), expected,
                                       rtol=1e-10)


@pytest.mark.parametrize("chunk", [1, 8, 10, 37, 64])  # 37 rows: 8 and 10 leave a remainder
def test_chunked_info_nce_equals_unchunked_value_and_gradient(chunk):
    rng = np.random.default_rng(7)
    a, c = rng.normal(size=(S_CHUNK, D_CHUNK)), rng.normal(size=(S_CHUNK, D_CHUNK))
    with jax.enable_x64(True):
        (v_full, g_full), (v_chunk, g_chunk) = _nce_grad(a, c, None), _nce_grad(a, c, chunk)
        np.testing.assert_allclose(float(v_chunk), float(v_full), rtol=1e-12)
        for got, want in zip(g_chunk, g_full):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-11, atol=1e-12)
    a32, c32 = a.astype(np.float32), c.astype(np.float32)
    (v_full, g_full), (v_chunk, g_chunk) = _nce_grad(a32, c32, None), _nce_grad(a32, c32, chunk)
    assert v_chunk.dtype == jnp.float32
    np.testing.assert_allclose(float(v_chunk), float(v_full), rtol=1e-5)
    for got, want in zip(g_chunk, g_full):
        # Gradient entries are sums of terms of either sign: compare at 1e-5 of their scale.
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                                   atol=1e-5 * scale)


def _intermediate_sizes(jaxpr, out):
    """Sizes of every value computed anywhere in a jaxpr, sub-jaxprs (scan, remat) included."""
    for eqn in jaxpr.eqns:
        out.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                if isinstance(sub, jax_core.ClosedJaxpr):
                    _intermediate_sizes(sub.jaxpr, out)
                elif isinstance(sub, jax_core.Jaxpr):
                    _intermediate_sizes(sub, out)
    return out


def test_chunked_info_nce_never_builds_an_s_by_s_array():
    s, d, chunk = 301, 4, 16
    x = jax.ShapeDtypeStruct((s, d), jnp.float32)

    def loss(a, c, chunk_size):
        return jnp.sum(L.info_nce_rows(a, c, 0.1, chunk_size=chunk_size))

    padded = -(-s // chunk) * chunk
    bound = max(chunk * chunk, padded * d)  # one block, or the padded inputs
    for fn in (loss, jax.grad(loss, argnums=(0, 1))):
        sizes = _intermediate_sizes(jax.make_jaxpr(fn, static_argnums=2)(x, x, chunk).jaxpr, [])
        assert max(sizes) <= bound, (fn, max(sizes), bound)
        full = _intermediate_sizes(jax.make_jaxpr(fn, static_argnums=2)(x, x, None).jaxpr, [])
        assert max(full) == s * s  # the unchunked path does build it (the check can fail)


# --- sample weights ------------------------------------------------------------------------


def test_sample_weights_hand_checked():
    # Labels 0 and 1. Sample 0: teacher global prediction right (class 0); sample 1: wrong
    # (class 2). Local predictions per position below.
    one_hot = np.eye(3) * 5.0
    t_local = np.stack([one_hot[[0, 1, 2, 0]], one_hot[[1, 0, 2, 1]]])  # (2, 4, 3)
    t_logits = np.stack([one_hot[0], one_hot[2]])
    labels = np.array([0, 1])
    # sample 0: right, wrong, wrong, right -> 1, 2, 2, 1 (global right)
    # sample 1: right, wrong, wrong (the same wrong class as global), right -> 2, 1, 1, 2
    expected = np.array([[1, 2, 2, 1], [2, 1, 1, 2]])
    got = L.msdcrd_sample_weights(t_local, t_logits, labels, 2.0)
    np.testing.assert_array_equal(np.asarray(got), expected)
    got3 = L.msdcrd_sample_weights(t_local, t_logits, labels, complementary_weight=3.0)
    np.testing.assert_array_equal(np.asarray(got3), np.where(expected == 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(got), np_weights(t_local, t_logits, labels, 2.0))


def test_sample_term_weights_in_msdcrd_terms_hand_checked():
    # 2x2 maps, window 1, identity heads: the teacher's local logits are its pixels, so the
    # weights are the hand-checked ones above; the sample term is linear in the weight.
    one_hot = np.eye(3) * 5.0
    t_map = np.stack([one_hot[[0, 1, 2, 0]], one_hot[[1, 0, 2, 1]]]).reshape(2, 2, 2, 3)
    s_map = np.random.default_rng(8).normal(size=(2, 2, 2, 3))
    head = (np.eye(3), np.zeros(3))
    t_logits, labels = np.stack([one_hot[0], one_hot[2]]), np.array([0, 1])
    with jax.enable_x64(True):
        sample = {
            cw: float(_terms(s_map, t_map, head, head, labels, t_logits, windows=(1,),
                             tau=0.07, complementary_weight=cw)["sample"])
            for cw in (1.0, 2.0, 3.0)
        }
    rows = lambda m: [np_normalize(r) for r in m.reshape(8, 3)]  # noqa: E731
    losses = np_info_nce(rows(s_map), rows(t_map), 0.07)
    weights = np.array([1, 2, 2, 1, 2, 1, 1, 2], np.float64)
    np.testing.assert_allclose(sample[2.0], np.sum(weights * losses) / 8, rtol=1e-10)
    np.testing.assert_allclose(sample[1.0], np.mean(losses), rtol=1e-10)
    np.testing.assert_allclose(sample[3.0] - sample[1.0], 2 * (sample[2.0] - sample[1.0]),
                               rtol=1e-10)


def test_global_window_has_no_complementary_samples():
    # With the teacher map unpooled, the window covering the whole map gives the teacher's
    # global logits, so no sample is complementary: the weight has no effect.
    data = CASES["same_size_global"][0]
    sm, tm, sh, th, y, _, _ = _args(data)
    t_logits = tm.mean(axis=(1, 2)) @ th[0] + th[1]
    with jax.enable_x64(True):
        one, five = (_terms(sm, tm, sh, th, y, t_logits, windows=(4,), tau=0.07,
                            complementary_weight=cw)
                     for cw in (1.0, 5.0))
        np.testing.assert_allclose(float(one["sample"]), float(five["sample"]), rtol=1e-14)


# --- msdcrd_terms --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_msdcrd_terms_match_numpy(name):
    data, options = CASES[name]
    expected = _expected(data, options)
    with jax.enable_x64(True):
        got = _call(data, options)
        for key in ("sample", "feature"):
            assert got[key].shape == () and got[key].dtype == jnp.float64
            np.testing.assert_allclose(float(got[key]), expected[key], rtol=1e-10)
    got32 = _call(data, options, np.float32)
    # The float32 reference: the same float32 inputs, computed in float64.
    data32 = dict(data)
    for key in ("s_map", "t_map", "t_logits"):
        data32[key] = data[key].astype(np.float32).astype(np.float64)
    for key in ("s_head", "t_head", "classifier"):
        if data[key] is not None:
            data32[key] = tuple(v.astype(np.float32).astype(np.float64) for v in data[key])
    expected32 = _expected(data32, options)
    assert set(got32) == {"sample", "feature"}
    for key in ("sample", "feature"):
        assert got32[key].dtype == jnp.float32
        np.testing.assert_allclose(float(got32[key]), expected32[key], rtol=1e-5)


def test_chunked_msdcrd_terms_equal_unchunked_value_and_gradient():
    data, options = CASES["hetero_default"]
    options = dict(options, windows=(1,))  # S = 3 * 16 = 48 rows: chunk 7 leaves 6

    def loss(s_map, kernel, bias, t_map, t_logits, chunk_size):
        out = L.msdcrd_terms(s_map, t_map, (kernel, bias), th, y, t_logits,
                             chunk_size=chunk_size, **options)
        return out["sample"] + 0.5 * out["feature"]

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=5)
    for dtype, rtol, atol in ((np.float64, 1e-11, 1e-13), (np.float32, 1e-5, 1e-6)):
        sm, tm, sh, th, y, tl, _ = _args(data, dtype)
        with jax.enable_x64(dtype == np.float64):
            v_full, g_full = grad(sm, *sh, tm, tl, None)
            v_chunk, g_chunk = grad(sm, *sh, tm, tl, 7)
            assert v_chunk.dtype == dtype
            np.testing.assert_allclose(float(v_chunk), float(v_full), rtol=rtol)
            for got, want in zip(g_chunk, g_full):
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol,
                                           atol=atol)


def test_msdcrd_gradients():
    # Through the streamed log-sum-exp (chunk 5 does not divide S = 3*30 or 3*12 rows); the
    # unchunked gradient equals it (test_chunked_msdcrd_terms_equal_unchunked_...).
    chunk_size = 5
    data, options = CASES["overlapping_projection"]
    sm, tm, sh, th, y, tl, cls = _args(data)

    def loss(s_map, kernel, bias):
        out = L.msdcrd_terms(s_map, tm, (kernel, bias), th, y, tl, teacher_local_classifier=cls,
                             chunk_size=chunk_size, **options)
        return out["sample"] + 0.7 * out["feature"]

    with jax.enable_x64(True):
        check_grads(jax.jit(loss), (sm, *sh), order=1, modes=("rev",), eps=1e-6, atol=1e-7,
                    rtol=1e-7)
        # And against a central difference of the numpy reference along one direction.
        rng = np.random.default_rng(9)
        direction = [rng.normal(size=np.shape(v)) for v in (sm, *sh)]
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(sm, *sh)
        analytic = sum(float(np.sum(g * u)) for g, u in zip(grads, direction))

    def reference(step):
        s_map, kernel, bias = (v + step * u for v, u in zip((sm, *sh), direction))
        out = np_msdcrd(s_map, tm, (kernel, bias), th, y, tl, windows=options["windows"],
                        tau=options["tau"], cw=options["complementary_weight"], classifier=cls)
        return out["sample"] + 0.7 * out["feature"]

    eps = 1e-5
    numeric = (reference(eps) - reference(-eps)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_teacher_inputs_get_no_gradient():
    data, options = CASES["overlapping_projection"]
    sm, tm, sh, th, y, tl, cls = _args(data, np.float32)

    def loss(t_map, t_head, t_logits, classifier):
        out = L.msdcrd_terms(sm, t_map, sh, t_head, y, t_logits,
                             teacher_local_classifier=classifier, chunk_size=4, **options)
        return out["sample"] + out["feature"]

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(tm, th, tl, cls)
    leaves = jax.tree_util.tree_leaves(grads)
    assert len(leaves) == 6 and not any(np.any(np.asarray(g)) for g in leaves)
    # The student, by contrast, does get a gradient from the same terms.
    g = jax.jit(jax.grad(lambda s: L.msdcrd_terms(s, tm, sh, th, y, tl,
                                                  teacher_local_classifier=cls,
                                                  **options)["sample"]))(sm)
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g))


def test_trainable_teacher_head_gets_the_gradient_and_nothing_else_changes():
    """teacher_head_trainable=True (projection mode): same values; the teacher head gets the
    gradient of the terms (checked numerically), the teacher map, classifier and logits
    still none."""
    data, options = CASES["overlapping_projection"]
    sm, tm, sh, th, y, tl, cls = _args(data)

    @functools.partial(jax.jit, static_argnums=5)
    def terms(t_map, kernel, bias, t_logits, classifier, trainable):
        out = L.msdcrd_terms(sm, t_map, sh, (kernel, bias), y, t_logits,
                             teacher_local_classifier=classifier, chunk_size=5,
                             teacher_head_trainable=trainable, **options)
        return out["sample"] + 0.7 * out["feature"]

    with jax.enable_x64(True):
        fixed, trained = (float(terms(tm, *th, tl, cls, t)) for t in (False, True))
        assert fixed == pytest.approx(trained, rel=1e-14)
        np.testing.assert_allclose(trained, _expected(data, options)["sample"]
                                   + 0.7 * _expected(data, options)["feature"], rtol=1e-10)
        grads = jax.jit(jax.grad(terms, argnums=(0, 1, 2, 3, 4)), static_argnums=5)(
            tm, *th, tl, cls, True)
        g_map, g_kernel, g_bias, g_logits, g_cls = grads
        assert np.any(np.asarray(g_kernel)) and np.any(np.asarray(g_bias))
        assert not any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(
            (g_map, g_logits, g_cls)))
        check_grads(jax.jit(lambda k, b: terms(tm, k, b, tl, cls, True)), th, order=1,
                    modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-7)
    with pytest.raises(ValueError, match="teacher_head_trainable must be a bool"):
        L.msdcrd_terms(sm, tm, sh, th, y, tl, teacher_local_classifier=cls,
                       teacher_head_trainable=1, **options)


def test_dtypes_shapes_and_jit_with_traced_hyperparameters():
    data, options = CASES["hetero_default"]
    sm, tm, sh, th, y, tl, _ = _args(data, np.float32)
    low = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
    out = jax.eval_shape(
        lambda *a: L.msdcrd_terms(*a, windows=(1, 2), tau=0.07, complementary_weight=2.0,
                                  chunk_size=8),
        low(sm), low(tm), (low(sh[0]), low(sh[1])), (low(th[0]), low(th[1])), y, low(tl),
    )
    assert out["sample"].dtype == jnp.float32 and out["sample"].shape == ()
    assert out["feature"].dtype == jnp.float32 and out["feature"].shape == ()
    pooled = jax.eval_shape(lambda x: L.sliding_window_pool(x, 3), low(sm))
    assert pooled.shape == (3, 36, 16) and pooled.dtype == jnp.float32
    # tau and the weight may be traced (their value checks are skipped under jit).
    traced = jax.jit(lambda tau, cw: L.msdcrd_terms(sm, tm, sh, th, y, tl, windows=(2,),
                                                     tau=tau, complementary_weight=cw))
    got = traced(jnp.float32(0.3), jnp.float32(2.5))
    expected = np_msdcrd(sm, tm, [np.float64(v) for v in sh], [np.float64(v) for v in th], y,
                         tl, windows=(2,), tau=np.float32(0.3), cw=2.5)
    for key in ("sample", "feature"):
        np.testing.assert_allclose(float(got[key]), expected[key], rtol=1e-5)


# --- objective -----------------------------------------------------------------------------


def test_msdcrd_objective_combines_the_terms():
    data, options = CASES["overlapping_projection"]
    sm, tm, sh, th, y, tl, cls = _args(data)
    s_logits = np.random.default_rng(10).normal(size=tl.shape)
    terms = _expected(data, options)
    ce = ref.ce(s_logits, y)
    objective = jax.jit(L.msdcrd_objective,
                        static_argnames=("windows", "chunk_size", "teacher_head_trainable"))
    recipe = jax.jit(functools.partial(L.msdcrd_objective, **MSDCRD_WEIGHTS),
                     static_argnames=("windows",))
    kwargs = dict(teacher_local_classifier=cls, **options)
    with jax.enable_x64(True):
        loss, got = recipe(s_logits, tl, y, sm, tm, sh, th, **kwargs)
        assert set(got) == {"ce", "sample", "feature"}
        np.testing.assert_allclose(float(loss), ce + 0.8 * (terms["sample"] + terms["feature"]),
                                   rtol=1e-10)
        np.testing.assert_allclose(float(got["ce"]), ce, rtol=1e-10)
        loss, got = objective(s_logits, tl, y, sm, tm, sh, th, ce_weight=0.5,
                              contrastive_weight=0.3, kd_weight=1.0, temperature=4.0,
                              chunk_size=4, teacher_head_trainable=False, **kwargs)
        kd = float(np.mean(ref.kd_per_example(s_logits, tl, 4.0)))
        assert set(got) == {"ce", "sample", "feature", "kd"}
        np.testing.assert_allclose(float(got["kd"]), kd, rtol=1e-10)
        np.testing.assert_allclose(
            float(loss), 0.5 * ce + 0.3 * (terms["sample"] + terms["feature"]) + kd, rtol=1e-10
        )


# --- errors --------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    data, _ = CASES["hetero_default"]
    sm, tm, sh, th, y, tl, _ = _args(data, np.float32)
    x = sm[:, :5, :7]
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"window must be an int in \[1, min\(H, W\)\]"):
            L.sliding_window_pool(x, bad)
    with pytest.raises(ValueError, match=r"feature_map must be a float array of shape"):
        L.sliding_window_pool(x[0], 1)
    for bad in ((9, 8), (4,), (0, 2), "44"):
        with pytest.raises(ValueError, match="size must be a pair of ints"):
            L.adaptive_pool_to(sm, bad)

    def terms(**kwargs):
        args = dict(student_map=sm, teacher_map=tm, student_head=sh, teacher_head=th,
                    labels=y, teacher_logits=tl, windows=(1, 2, 4), tau=0.07,
                    complementary_weight=2.0)
        args.update(kwargs)
        return L.msdcrd_terms(**args)

    for bad in ((1, 5), (), (2, 2), "124", (1.5,), 3):  # the common grid is 4x4
        with pytest.raises(ValueError, match=r"windows must be .* in \[1, 4\] .* 4x4 grid"):
            terms(windows=bad)
    with pytest.raises(ValueError, match="student_map and teacher_map must have the same batch"):
        terms(teacher_map=tm[:2])
    with pytest.raises(ValueError, match=r"student_map must be a float array of shape"):
        terms(student_map=sm[0])
    with pytest.raises(ValueError, match=r"student_head kernel must be a float \(16, K\)"):
        terms(student_head=th)
    with pytest.raises(ValueError, match=r"teacher_head bias must be a float \(5,\) array"):
        terms(teacher_head=(th[0], th[1][:3]))
    with pytest.raises(ValueError, match="teacher_head must be a pair"):
        terms(teacher_head=th[0])
    with pytest.raises(ValueError, match="must embed into the same K dimensions"):
        terms(teacher_head=(th[0][:, :4], th[1][:4]))
    with pytest.raises(ValueError, match=r"teacher_local_classifier kernel must be a float \(32"):
        terms(teacher_local_classifier=sh)
    with pytest.raises(ValueError, match=r"teacher_logits must have shape \(3, 5\)"):
        terms(teacher_logits=tl[:, :4])
    with pytest.raises(ValueError, match=r"labels must be an integer array of shape \(3,\)"):
        terms(labels=y.astype(np.float32))
    with pytest.raises(ValueError, match="tau must be > 0"):
        terms(tau=0.0)
    with pytest.raises(ValueError, match="complementary_weight must be finite"):
        terms(complementary_weight=float("nan"))
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="chunk_size must be None or a positive int"):
            terms(chunk_size=bad)
    with pytest.raises(ValueError, match="anchors and candidates must have the same shape"):
        L.info_nce_rows(np.ones((3, 2)), np.ones((4, 2)), 0.1)
    with pytest.raises(ValueError, match=r"teacher_logits must have shape \(2, 3\)"):
        L.msdcrd_sample_weights(np.ones((2, 4, 3)), np.ones((2, 4)), np.zeros(2, int), 2.0)
    with pytest.raises(ValueError, match="kd_weight must be finite"):
        L.msdcrd_objective(tl, tl, y, sm, tm, sh, th, windows=(1, 2, 4), tau=0.07,
                           complementary_weight=2.0,
                           **dict(MSDCRD_WEIGHTS, kd_weight=float("inf")))
