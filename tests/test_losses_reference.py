"""Independent numpy (float64, loop-based) implementations of the reference formulas
(mdistiller, SDD, the CLKD paper) for the loss tests.

Written from the definitions, not from kd_jax.losses: plain loops over samples / regions /
windows, probabilities computed directly (no log-sum-exp tricks except where the spec's
stable variant asks for them).
This module holds no tests; it is named test_losses_* only because it belongs with them.
"""

from __future__ import annotations

import math

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    m = z.max()
    return z - m - math.log(np.exp(z - m).sum())


def kl(p: np.ndarray, log_q: np.ndarray) -> float:
    """sum_k p_k (log p_k - log q_k) with 0 log 0 = 0."""
    return float(sum(pk * (math.log(pk) - lq) for pk, lq in zip(p, log_q) if pk > 0))


def ce(logits, labels) -> float:
    return float(np.mean([-log_softmax(z)[y] for z, y in zip(logits, labels)]))


def kd_per_example(s, t, temperature) -> np.ndarray:
    return np.array(
        [
            temperature**2 * kl(softmax(zt / temperature), log_softmax(zs / temperature))
            for zs, zt in zip(s, t)
        ]
    )


def dkd_terms_per_example(s, t, y, temperature):
    """(TCKD_b, NCKD_b) as the reference computes them (sums of the full softmax, -1000)."""
    tckd, nckd = [], []
    for zs, zt, label in zip(s, t, y):
        ps, pt = softmax(zs / temperature), softmax(zt / temperature)
        bs = np.array([ps[label], sum(ps[k] for k in range(len(ps)) if k != label)])
        bt = np.array([pt[label], sum(pt[k] for k in range(len(pt)) if k != label)])
        tckd.append(temperature**2 * kl(bt, np.log(bs)))
        g = np.zeros(len(zs))
        g[label] = 1.0
        qt = softmax(zt / temperature - 1000.0 * g)
        log_qs = log_softmax(zs / temperature - 1000.0 * g)
        nckd.append(temperature**2 * kl(qt, log_qs))
    return np.array(tckd), np.array(nckd)


def dkd_per_example(s, t, y, alpha, beta, temperature) -> np.ndarray:
    tckd, nckd = dkd_terms_per_example(s, t, y, temperature)
    return alpha * tckd + beta * nckd


def nkd_per_example(s, t, y, gamma, temperature) -> np.ndarray:
    out = []
    for zs, zt, label in zip(s, t, y):
        target = -softmax(zt)[label] * log_softmax(zs)[label]
        soft = (
            -gamma
            * temperature**2
            * float(np.sum(softmax(zt / temperature) * log_softmax(zs / temperature)))
        )
        out.append(target + soft)
    return np.array(out)


def adaptive_avg_pool(x: np.ndarray, out_h: int, out_w: int | None = None) -> np.ndarray:
    """torch AdaptiveAvgPool2d((out_h, out_w)) on NHWC (square if out_w is None):
    window i = [floor(i*L/P), ceil((i+1)*L/P))."""
    out_w = out_h if out_w is None else out_w
    b, h, w, c = x.shape
    y = np.zeros((b, out_h, out_w, c))
    for i in range(out_h):
        h0, h1 = (i * h) // out_h, math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            w0, w1 = (j * w) // out_w, math.ceil((j + 1) * w / out_w)
            y[:, i, j, :] = x[:, h0:h1, w0:w1, :].sum(axis=(1, 2)) / ((h1 - h0) * (w1 - w0))
    return y


def multiscale_pool(x: np.ndarray, scales) -> np.ndarray:
    grid = adaptive_avg_pool(np.asarray(x, np.float64), 4)
    regions = []
    for s in scales:
        pooled = grid if s == 4 else adaptive_avg_pool(grid, s)
        for i in range(s):
            for j in range(s):
                regions.append(pooled[:, i, j, :])
    return np.stack(regions, axis=1)


def region_weights(teacher_local, labels, complementary_weight=2.0) -> np.ndarray:
    b, n, _ = teacher_local.shape
    w = np.ones((b, n))
    for i in range(b):
        global_right = int(np.argmax(teacher_local[i, 0])) == labels[i]
        for r in range(1, n):
            local_right = int(np.argmax(teacher_local[i, r])) == labels[i]
            if local_right != global_right:
                w[i, r] = complementary_weight
    return w


def scale_decoupled(per_example, s_local, t_local, labels, *args, complementary_weight=2.0):
    """1/(B*N) sum_{b,n} w_bn l(z^S_bn, z^T_bn, y_b), looping over regions."""
    b, n, _ = s_local.shape
    w = region_weights(t_local, labels, complementary_weight)
    total = 0.0
    for r in range(n):
        total += float(np.sum(w[:, r] * per_example(s_local[:, r], t_local[:, r], *args)))
    return total / (b * n)


def clkd_terms(s, t, correlation="batch"):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    b, k = s.shape

    def normalise(m):
        return np.stack([row / max(np.linalg.norm(row), 1e-12) for row in m])

    ins = np.mean((normalise(s) - normalise(t)) ** 2)
    cla = np.mean((normalise(s.T) - normalise(t.T)) ** 2)

    def corr(z):
        if correlation == "batch":
            d = z - z.mean(axis=1, keepdims=True)
            return d @ d.T / (k - 1)
        d = z - z.mean(axis=0, keepdims=True)
        return d.T @ d / (b - 1)

    cc = np.sum((corr(s) - corr(t)) ** 2) / k**2
    return {"instance": ins, "class": cla, "correlation": cc}
