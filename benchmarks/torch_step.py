"""The same train step in PyTorch eager, for benchmarks/train_step.py.

One step: the teacher forward in eval mode under no_grad, the student forward in train mode,
the method's objective, backward, SGD with momentum and coupled weight decay (the
reference recipe). Models are the independent PyTorch implementations of tests/torch_models.py
(NCHW). The objectives are written out here from their definitions (the reference
distillers: mdistiller KD/DKD, SDD's SD-DKD, and CLKD as kd_jax.losses.clkd defines it) with
the hyperparameters of the JAX run's config, so both sides compute the same loss;
tests/test_benchmark_train_step.py checks them against kd_jax.losses. bfloat16: the forwards
run under torch.autocast, the objective in float32.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import torch_models  # noqa: E402  the PyTorch test models (tests/torch_models.py)


def pre_pool(features: dict) -> torch.Tensor:
    """The map fed to the final global pool (the last stage output for ResNets, ShuffleNets)."""
    return features["feats"][-1]


def head(model) -> tuple[torch.Tensor, torch.Tensor]:
    layer = model.fc if hasattr(model, "fc") else model.linear
    return layer.weight, layer.bias


def ce(logits, labels):
    return F.cross_entropy(logits, labels)


def kd_per_example(s, t, temperature):
    log_ps = F.log_softmax(s / temperature, dim=-1)
    return F.kl_div(log_ps, F.softmax(t / temperature, dim=-1), reduction="none").sum(-1) \
        * temperature ** 2


def dkd_per_example(s, t, labels, alpha, beta, temperature):
    """alpha * TCKD + beta * NCKD per example (mdistiller's DKD, rows of (..., K))."""
    gt = F.one_hot(labels, s.shape[-1]).bool()

    def bins(p):
        return torch.stack([(p * gt).sum(-1), (p * ~gt).sum(-1)], -1)

    ps, pt = bins(F.softmax(s / temperature, -1)), bins(F.softmax(t / temperature, -1))
    tckd = F.kl_div(torch.log(ps), pt, reduction="none").sum(-1)
    log_qs = F.log_softmax(s / temperature - 1000.0 * gt, -1)
    qt = F.softmax(t / temperature - 1000.0 * gt, -1)
    nckd = F.kl_div(log_qs, qt, reduction="none").sum(-1)
    return (alpha * tckd + beta * nckd) * temperature ** 2


def warmup(epoch: int, warmup_epochs: int) -> float:
    return min(epoch / warmup_epochs, 1.0) if warmup_epochs else 1.0


def multiscale_pool(x, scales):
    """(B, C, H, W) -> (B, N, C): adaptive pool to 4x4, then that grid to each scale."""
    grid = F.adaptive_avg_pool2d(x, 4)
    parts = [(grid if s == 4 else F.adaptive_avg_pool2d(grid, s)).flatten(2) for s in scales]
    return torch.cat(parts, 2).transpose(1, 2)


def local_logits(x, weight, bias, scales):
    """The head on every region, in the head's dtype (float32 also under autocast)."""
    return multiscale_pool(x.to(weight.dtype), scales) @ weight.T + bias


def region_weights(teacher_local, labels, complementary_weight):
    correct = teacher_local.argmax(-1) == labels[:, None]
    return torch.where(correct != correct[:, :1], complementary_weight, 1.0)


def clkd_terms(s, t):
    def normalized_mse(axis):
        return ((F.normalize(s, dim=axis) - F.normalize(t, dim=axis)) ** 2).mean()

    def correlation(z):
        d = z - z.mean(1, keepdim=True)
        return d @ d.T / (z.shape[1] - 1)

    corr = ((correlation(s) - correlation(t)) ** 2).sum() / s.shape[1] ** 2
    return normalized_mse(1), normalized_mse(0), corr


def objective(method: str, hp: dict, epoch: int) -> Callable:
    """loss(student_logits, student_features, student, teacher_logits, teacher_features,
    teacher, labels) of the kd_jax method key `method` with hyperparameters `hp`."""
    if method == "kd":
        def loss(s, sf, sm, t, tf, tm, y):
            return hp["ce_weight"] * ce(s, y) + hp["kd_weight"] * kd_per_example(
                s, t, hp["temperature"]).mean()
    elif method == "dkd":
        def loss(s, sf, sm, t, tf, tm, y):
            dkd = dkd_per_example(s, t, y, hp["alpha"], hp["beta"], hp["temperature"]).mean()
            return hp["ce_weight"] * ce(s, y) + warmup(epoch, hp["warmup_epochs"]) * dkd
    elif method == "sd_dkd":
        scales = [int(v) for v in hp["scales"].strip("[]").split(",")]

        def loss(s, sf, sm, t, tf, tm, y):
            s_local = local_logits(pre_pool(sf), *head(sm), scales)
            t_local = local_logits(pre_pool(tf), *head(tm), scales).detach()
            w = region_weights(t_local, y, hp["complementary_weight"])
            n = s_local.shape[1]
            per = dkd_per_example(s_local, t_local, y[:, None].expand(-1, n), hp["alpha"],
                                  hp["beta"], hp["temperature"])
            sd = (w * per).sum() / per.numel()
            if hp["zero_nonfinite"]:
                sd = torch.where(torch.isfinite(sd), sd, torch.zeros_like(sd))
            return (hp["ce_weight"] * ce(s, y)
                    + hp["kd_weight"] * warmup(epoch, hp["warmup_epochs"]) * sd)
    elif method == "clkd":
        if (hp["correlation"], hp["reduction"]) != ("batch", "mean"):
            raise ValueError("the PyTorch CLKD step implements correlation='batch', "
                             "reduction='mean' only")

        def loss(s, sf, sm, t, tf, tm, y):
            instance, cls, corr = clkd_terms(s, t)
            return (hp["ce_weight"] * ce(s, y)
                    + hp["instance_weight"] * (instance + hp["class_weight_beta"] * cls)
                    + hp["correlation_weight"] * corr)
    else:
        raise ValueError(f"no PyTorch objective for method {method!r}; "
                         "known: kd, dkd, sd_dkd, clkd")
    return loss


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def time_step(teacher_arch: str, student_arch: str, method: str, hp: dict, optimizer: dict,
              batch: int, dtype: str, steps: int, warmup_steps: int = 1, repeats: int = 1,
              epoch: int = 30, num_classes: int = 100, clock=time.perf_counter) -> dict:
    """Seconds of one eager train step: the median over `repeats` windows of the mean of
    `steps` steps (after `warmup_steps`), by `clock` (elapsed time; time.process_time: CPU
    time)."""
    dev = device()
    torch.manual_seed(0)
    teacher = torch_models.create(teacher_arch, num_classes).to(dev).eval()
    student = torch_models.create(student_arch, num_classes).to(dev).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=optimizer["lr"],
                          momentum=optimizer["momentum"], weight_decay=optimizer["weight_decay"])
    loss_fn = objective(method, hp, epoch)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(batch, 3, 32, 32)).astype(np.float32), device=dev)
    y = torch.tensor(rng.integers(0, num_classes, batch), device=dev).long()
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        with autocast:
            with torch.no_grad():
                t, tf = teacher(x)
            s, sf = student(x)
        loss = loss_fn(s.float(), sf, student, t.float(), tf, teacher, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for _ in range(warmup_steps):
        step()
    sync()
    windows = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(steps):
            loss = step()
        sync()
        windows.append((clock() - t0) / steps)
    return {"step_s": float(np.median(windows)), "loss": float(loss), "device": str(dev)}


def conv_floor(batch: int, size: int, channels: int, steps: int) -> float:
    """Mean seconds of forward+backward (input and weight gradients) of one 3x3 conv."""
    dev = device()
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(batch, channels, size, size)).astype(np.float32),
                     device=dev, requires_grad=True)
    w = torch.tensor(0.05 * rng.normal(size=(channels, channels, 3, 3)).astype(np.float32),
                     device=dev, requires_grad=True)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        F.conv2d(x, w, padding=1).sum().backward()

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        description="A module of benchmarks/train_step.py (the PyTorch eager step it times "
                    "beside the JAX one; `python benchmarks/train_step.py --torch`), not a "
                    "script of its own.").parse_args()
    print(__doc__)
