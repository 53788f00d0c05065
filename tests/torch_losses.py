"""The reference objectives in PyTorch, written out from the reference distillers and the papers (not from kd_jax).

One function per method family; each takes the student's and the teacher's outputs of one
batch and returns the scalar objective the reference trains with:

    kd_objective(s, t, y, T, ce_w, kd_w)
    dkd_objective(s, t, y, epoch, alpha, beta, T, ce_w, warmup)
    nkd_objective(s, t, y, epoch, gamma, T, ce_w, warmup)
    sd_objective(s, t, y, epoch, base, scales, T, ce_w, kd_w, warmup, **base_kwargs)
    clkd_objective(s, t, y, ce_w, ins_w, cla_beta, cc_w)
    msdcrd_objective(s, t, y, windows, heads, tau, complementary_weight, ce_w,
                     contrastive_w, kd_w, T)

`s` / `t` are (logits (B, K), pre-pool map (B, C, H, W), fc weight (K, C), fc bias (K,))
tuples (torch layout); the methods that use logits only read s[0] / t[0]. MSDCRD's
`heads` (projection mode) are the (student, teacher) nn.Linear projection heads, trained
with the student. The teacher's tensors must come from a no_grad forward (constants).
Warmups are min(epoch / w, 1) with epoch counted from 1, as a Python float per epoch
(w = 0: no warmup).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def warmup(epoch: int, warmup_epochs: int) -> float:
    return 1.0 if warmup_epochs == 0 else min(epoch / warmup_epochs, 1.0)


# --- per-sample terms (B,) -------------------------------------------------------------------

def kd_per_sample(s, t, T):
    """T^2 * sum_k p^T (log p^T - log p^S), as mdistiller's kd_loss before its batch mean."""
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="none").sum(1) * T * T


def dkd_per_sample(s, t, y, alpha, beta, T):
    """alpha * TCKD_b + beta * NCKD_b: mdistiller's dkd_loss terms before the sum over b / B."""
    gt = torch.zeros_like(s).scatter_(1, y.unsqueeze(1), 1).bool()

    def bins(p):   # [target, non-target] probability mass, as sums of the K-way softmax
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * ~gt).sum(1, keepdim=True)], 1)

    p_s, p_t = bins(F.softmax(s / T, 1)), bins(F.softmax(t / T, 1))
    tckd = F.kl_div(torch.log(p_s), p_t, reduction="none").sum(1) * T ** 2
    q_t = F.softmax(t / T - 1000.0 * gt, 1)
    log_q_s = F.log_softmax(s / T - 1000.0 * gt, 1)
    nckd = F.kl_div(log_q_s, q_t, reduction="none").sum(1) * T ** 2
    return alpha * tckd + beta * nckd


def nkd_per_sample(s, t, y, gamma, T):
    """-p^T_y log p^S_y (T = 1)  -  gamma T^2 sum_k p^T_k(T) log p^S_k(T) (all K classes)."""
    idx = y.unsqueeze(1)
    target = -(F.softmax(t, 1).gather(1, idx) * F.log_softmax(s, 1).gather(1, idx)).squeeze(1)
    soft = -gamma * T ** 2 * (F.softmax(t / T, 1) * F.log_softmax(s / T, 1)).sum(1)
    return target + soft


# --- objectives ------------------------------------------------------------------------------

def kd_objective(s, t, y, T=4.0, ce_w=0.1, kd_w=0.9):
    logits_s, logits_t = s[0], t[0]
    return ce_w * F.cross_entropy(logits_s, y) + kd_w * kd_per_sample(logits_s, logits_t, T).mean()


def dkd_objective(s, t, y, epoch, alpha=1.0, beta=8.0, T=4.0, ce_w=1.0, warmup_epochs=20):
    logits_s, logits_t = s[0], t[0]
    dkd = dkd_per_sample(logits_s, logits_t, y, alpha, beta, T).sum() / y.shape[0]
    return ce_w * F.cross_entropy(logits_s, y) + warmup(epoch, warmup_epochs) * dkd


def nkd_objective(s, t, y, epoch, gamma=8.0, T=4.0, ce_w=1.0, warmup_epochs=20):
    logits_s, logits_t = s[0], t[0]
    nkd = nkd_per_sample(logits_s, logits_t, y, gamma, T).mean()
    return ce_w * F.cross_entropy(logits_s, y) + warmup(epoch, warmup_epochs) * nkd


def multiscale_local_logits(feature_map, weight, bias, scales):
    """(B, C, H, W) -> (B, N, K): the map adaptive-pooled to 4x4, that 4x4 to 2x2 and 1x1;
    regions ordered global, then 2x2 row-major, then 4x4 row-major; the model's own fc on each."""
    grid = F.adaptive_avg_pool2d(feature_map, 4)
    parts = []
    for scale in scales:
        pooled = grid if scale == 4 else F.adaptive_avg_pool2d(grid, scale)
        parts.append(pooled.flatten(2).transpose(1, 2))    # (B, s*s, C), row-major cells
    regions = torch.cat(parts, 1)
    return regions @ weight.T + bias


def region_weights(teacher_local, y, complementary_weight=2.0):
    """w_bn = 2 where exactly one of (region n right, global region right) holds, else 1."""
    pred = teacher_local.argmax(-1)                           # (B, N)
    right = pred == y.unsqueeze(1)
    complementary = right ^ right[:, :1]
    return torch.where(complementary, complementary_weight, 1.0)


def sd_loss(s, t, y, base, scales, T, complementary_weight=2.0, **kw):
    """1/(B*N) sum_{b,n} w_bn l(z^S_bn, z^T_bn, y_b); a NaN/inf loss counts as 0 (reference)."""
    s_local = multiscale_local_logits(s[1], s[2], s[3], scales)
    t_local = multiscale_local_logits(t[1], t[2], t[3], scales)
    w = region_weights(t_local, y, complementary_weight)
    B, N, K = s_local.shape
    s_flat, t_flat = s_local.reshape(B * N, K), t_local.reshape(B * N, K)
    y_flat = y.repeat_interleave(N)                           # row b*N + n has label y_b
    if base == "kd":
        per = kd_per_sample(s_flat, t_flat, T)
    elif base == "dkd":
        per = dkd_per_sample(s_flat, t_flat, y_flat, kw["alpha"], kw["beta"], T)
    else:
        per = nkd_per_sample(s_flat, t_flat, y_flat, kw["gamma"], T)
    loss = (w.reshape(-1) * per).sum() / (B * N)
    if torch.isnan(loss) or torch.isinf(loss):
        loss = torch.zeros_like(loss)
    return loss


def sd_objective(s, t, y, epoch, base, scales, T, ce_w, kd_w, warmup_epochs, **base_kwargs):
    """ce_w * CE(global student logits) + kd_w * warmup * sd_<base>."""
    sd = sd_loss(s, t, y, base, scales, T, **base_kwargs)
    return ce_w * F.cross_entropy(s[0], y) + kd_w * warmup(epoch, warmup_epochs) * sd


def clkd_objective(s, t, y, ce_w=0.1, ins_w=0.5, cla_beta=2.0, cc_w=0.4):
    """ce_w*CE + ins_w*(L_ins + beta*L_cla) + cc_w*L_cc with the batch (B x B) correlation."""
    zs, zt = s[0], t[0]
    K = zs.shape[1]
    l_ins = ((F.normalize(zs, dim=1) - F.normalize(zt, dim=1)) ** 2).mean()
    l_cla = ((F.normalize(zs, dim=0) - F.normalize(zt, dim=0)) ** 2).mean()

    def corr(z):
        d = z - z.mean(1, keepdim=True)
        return d @ d.T / (K - 1)

    l_cc = ((corr(zs) - corr(zt)) ** 2).sum() / K ** 2
    return ce_w * F.cross_entropy(zs, y) + ins_w * (l_ins + cla_beta * l_cla) + cc_w * l_cc


# --- MSDCRD (the reconstruction of arXiv 2502.05835) -----------------------------------------

def _linear(x, head):
    """x (..., C) through a head given as an nn.Linear or a (weight (D, C), bias (D,)) pair."""
    if isinstance(head, torch.nn.Module):
        return head(x)
    weight, bias = head
    return x @ weight.T + bias


def msdcrd_local_samples(feature_map, window):
    """(B, C, H, W) -> (B, P, C): average pooling window x window, stride 1; the window
    positions (top-left corner) row-major, P = (H - window + 1)(W - window + 1)."""
    pooled = F.avg_pool2d(feature_map, window, stride=1)
    return pooled.flatten(2).transpose(1, 2)


def msdcrd_sample_weights(teacher_local_logits, teacher_logits, y, complementary_weight=2.0):
    """(B, P): complementary_weight where exactly one of (the teacher's local prediction is
    right, its global prediction is right) holds, else 1 (SDD's rule per window)."""
    local_right = teacher_local_logits.argmax(-1) == y.unsqueeze(1)           # (B, P)
    global_right = (teacher_logits.argmax(-1) == y).unsqueeze(1)              # (B, 1)
    return torch.where(local_right ^ global_right, complementary_weight, 1.0)


def info_nce(anchors, candidates, tau):
    """(S, D), (S, D) -> (S,): -log softmax_j(a_i . c_j / tau)[i]."""
    logits = anchors @ candidates.T / tau
    return F.cross_entropy(logits, torch.arange(anchors.shape[0]), reduction="none")


def msdcrd_windows(s, t, y, windows, heads=None, complementary_weight=2.0, tau=0.07):
    """[(sample_k, feature_k, weights_k (B, P))] per window size k.

    The pre-pool maps s[1], t[1] are pooled to the common grid (adaptive average pooling of
    the larger); each k x k stride-1 window position of each image is one local sample.
    Embedding: heads = (student head, teacher head) (projection mode), else each network's
    own classifier (s[2], s[3]) / (t[2], t[3]). The teacher's classifier on its local samples
    vs its global logits t[0] gives the complementary weights (constants).
    """
    s_map, t_map = s[1], t[1]
    grid = (min(s_map.shape[2], t_map.shape[2]), min(s_map.shape[3], t_map.shape[3]))
    if tuple(s_map.shape[2:]) != grid:
        s_map = F.adaptive_avg_pool2d(s_map, grid)
    if tuple(t_map.shape[2:]) != grid:
        t_map = F.adaptive_avg_pool2d(t_map, grid)
    s_head, t_head = heads if heads is not None else ((s[2], s[3]), (t[2], t[3]))
    out = []
    for k in windows:
        s_local, t_local = msdcrd_local_samples(s_map, k), msdcrd_local_samples(t_map, k)
        with torch.no_grad():
            w = msdcrd_sample_weights(_linear(t_local, (t[2], t[3])), t[0], y,
                                      complementary_weight)
        e_s = _linear(s_local, s_head).flatten(0, 1)          # (S, D), rows (b, p)
        e_t = _linear(t_local, t_head).flatten(0, 1)
        S = e_s.shape[0]
        per_row = info_nce(F.normalize(e_s, dim=1), F.normalize(e_t, dim=1), tau)
        sample = (w.reshape(-1) * per_row).sum() / S
        feature = info_nce(F.normalize(e_s, dim=0).T, F.normalize(e_t, dim=0).T, tau).mean()
        out.append((sample, feature, w))
    return out


def msdcrd_objective(s, t, y, windows, heads=None, tau=0.07, complementary_weight=2.0,
                     ce_w=1.0, contrastive_w=0.8, kd_w=0.0, T=4.0):
    """ce_w*CE + contrastive_w * mean over windows (L_sample + L_feature) [+ kd_w*KD(T)]."""
    per_window = msdcrd_windows(s, t, y, windows, heads, complementary_weight, tau)
    sample = sum(p[0] for p in per_window) / len(windows)
    feature = sum(p[1] for p in per_window) / len(windows)
    loss = ce_w * F.cross_entropy(s[0], y) + contrastive_w * (sample + feature)
    if kd_w:
        loss = loss + kd_w * kd_per_sample(s[0], t[0], T).mean()
    return loss
