"""Times every loss of kd_jax.losses: jitted forward + backward w.r.t. the student inputs.

Usage:  python benchmarks/losses.py [--sizes cifar imagenet] [--repeats 30] [--warmup 3]

For each loss: one compiled `jax.value_and_grad` call on fixed random inputs, warm-up
calls, then the median over `--repeats` calls of wall time to `block_until_ready`.
Sizes: CIFAR (B=64, K=100, N=21) and ImageNet (B=256, K=1000, N=21).

An SD loss evaluates its base loss on N = 21 regions, i.e. on N times more logits, so the
table reports three ratios per SD loss: vs its base loss on the same batch (the cost of
switching a recipe to SDD), that ratio divided by N (cost per logit row), and vs the base
loss run on B*N rows (the overhead of the vmap lift and region weights over equal work).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kd_jax.losses as L  # noqa: E402

SIZES = {
    "cifar": dict(batch=64, classes=100, regions=21),
    "imagenet": dict(batch=256, classes=1000, regions=21),
}
T, ALPHA, BETA, GAMMA, CW = 4.0, 1.0, 8.0, 8.0, 2.0   # CIFAR-100 recipes


def _losses() -> dict[str, tuple[Callable, bool]]:
    """name -> (loss(student, teacher, labels), takes local (B, N, K) logits)."""
    return {
        "ce": (lambda s, t, y: L.ce_loss(s, y), False),
        "kd": (lambda s, t, y: L.kd_loss(s, t, T), False),
        "dkd": (lambda s, t, y: L.dkd_loss(s, t, y, ALPHA, BETA, T), False),
        "dkd_stable": (lambda s, t, y: L.dkd_loss(s, t, y, ALPHA, BETA, T, stable=True), False),
        "nkd": (lambda s, t, y: L.nkd_loss(s, t, y, GAMMA, T), False),
        "clkd": (lambda s, t, y: L.clkd_objective(
            s, t, y, ce_weight=0.1, instance_weight=0.5, class_weight_beta=2.0,
            correlation_weight=0.4, correlation="batch", reduction="mean")[0], False),
        "sd_kd": (lambda s, t, y: L.sd_kd_loss(s, t, y, T, CW), True),
        "sd_dkd": (lambda s, t, y: L.sd_dkd_loss(s, t, y, ALPHA, BETA, T, CW), True),
        "sd_dkd_stable": (
            lambda s, t, y: L.sd_dkd_loss(s, t, y, ALPHA, BETA, T, CW, stable=True),
            True,
        ),
        "sd_nkd": (lambda s, t, y: L.sd_nkd_loss(s, t, y, GAMMA, T, CW), True),
    }


def time_fn(fn: Callable, args: tuple, warmup: int, repeats: int) -> float:
    """Median seconds per call of an already-jitted fn (after `warmup` calls)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_size(
    name: str, batch: int, classes: int, regions: int, warmup: int, repeats: int
) -> dict[str, float]:
    rng = np.random.default_rng(0)

    def logits(*shape):
        return jnp.asarray(rng.normal(size=shape) * 3, jnp.float32)

    labels = jnp.asarray(rng.integers(0, classes, size=batch), jnp.int32)
    inputs = {
        False: (logits(batch, classes), logits(batch, classes), labels),
        True: (logits(batch, regions, classes), logits(batch, regions, classes), labels),
    }
    # The base losses on B*N rows: the same number of logits as an SD loss.
    flat_labels = jnp.tile(labels, regions)
    flat = (logits(batch * regions, classes), logits(batch * regions, classes), flat_labels)

    results = {}
    for loss_name, (loss, local) in _losses().items():
        step = jax.jit(jax.value_and_grad(loss))  # grad w.r.t. the student input only
        results[loss_name] = time_fn(step, inputs[local], warmup, repeats)
        if loss_name in ("kd", "dkd", "nkd"):
            results[f"{loss_name}@B*N"] = time_fn(step, flat, warmup, repeats)

    print(
        f"\n## {name}: B={batch}, K={classes}, N={regions}  "
        f"(forward+backward, median of {repeats}, {jax.devices()[0].platform})"
    )
    print(f"| {'loss':<14} | {'time (ms)':>10} |")
    print(f"|{'-' * 16}|{'-' * 12}|")
    for loss_name, seconds in results.items():
        print(f"| {loss_name:<14} | {seconds * 1e3:>10.3f} |")
    print(f"\n| {'SD vs base':<14} | {'ratio':>7} | {'ratio / N':>9} | {'vs base on B*N':>14} |")
    print(f"|{'-' * 16}|{'-' * 9}|{'-' * 11}|{'-' * 16}|")
    for base in ("kd", "dkd", "nkd"):
        ratio = results[f"sd_{base}"] / results[base]
        equal_work = results[f"sd_{base}"] / results[f"{base}@B*N"]
        print(
            f"| {'sd_' + base + ' / ' + base:<14} | {ratio:>7.2f} | {ratio / regions:>9.3f} | "
            f"{equal_work:>14.2f} |"
        )
    return results


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every flag's default."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["cifar", "imagenet"],
                        help="problem sizes to time: cifar (B=64, K=100, N=21), imagenet "
                             "(B=256, K=1000, N=21)")
    parser.add_argument("--repeats", type=int, default=30,
                        help="timed calls per loss; the median is reported")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed calls per loss after compilation")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    for size in args.sizes:
        bench_size(size, **SIZES[size], warmup=args.warmup, repeats=args.repeats)


if __name__ == "__main__":
    main()
