"""Lockstep speed-up: M students in one jitted step (one teacher forward) vs M separate runs.

    python benchmarks/lockstep.py [--pair resnet32x4-resnet8x4] [--batch 64] [--steps 5]
           [--students kd,dkd,sd_dkd,sd_kd,nkd] [--ms 1,3,5]

For each M, the first M students of --students run (a) in lockstep, one step updating all of
them, and (b) each alone; the separate cost is the sum of the M solo steps. Random teacher
weights and one fixed random batch already on the devices (no input pipeline), the trainer's
own step (kd_jax.train.trainer.build). Prints the median step time over --steps timed steps
(after one compiling step) and the speed-up separate / lockstep.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kd_jax import data, recipes  # noqa: E402
from kd_jax.train import config_validation, trainer  # noqa: E402
from kd_jax.testing import random_batch  # noqa: E402


def step_time(pair: str, students: list[str], batch: int, steps: int) -> float:
    """Median seconds of one train step of `students` in lockstep on `pair` (CIFAR-100)."""
    config = recipes.build_lockstep_config(data.CIFAR100, ",".join([pair, *students]), default="")
    config.teacher.checkpoint = "random"
    built = trainer.build(config, config_validation.validate(config), 100)
    batch_arrays = random_batch(built.mesh, batch, 100)
    state, lr, epoch = built.state, np.float32(0.05), np.int32(30)
    times = []
    for _ in range(steps + 1):   # the first step compiles
        t0 = time.perf_counter()
        state, metrics = built.train_step(state, built.teacher_state, batch_arrays, lr, epoch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pair", default="resnet32x4-resnet8x4", help="CIFAR-100 teacher-student")
    parser.add_argument("--students", default="kd,dkd,sd_dkd,sd_kd,nkd",
                        help="method keys, the first M of which run for each M")
    parser.add_argument("--ms", default="1,3,5", help="numbers of students M")
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    args = parser.parse_args()
    students = args.students.split(",")
    ms = [int(m) for m in args.ms.split(",")]
    if max(ms) > len(students):
        parser.error(f"--ms {args.ms} needs at least {max(ms)} --students")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; {args.pair}, "
          f"batch {args.batch}, median of {args.steps} steps", flush=True)
    solo = {s: step_time(args.pair, [s], args.batch, args.steps) for s in students[:max(ms)]}
    print(f"{'M':>2} {'students':<28} {'lockstep s':>10} {'separate s':>10} {'speed-up':>8}")
    for m in ms:
        chosen = students[:m]
        lockstep = solo[chosen[0]] if m == 1 else step_time(args.pair, chosen, args.batch,
                                                            args.steps)
        separate = sum(solo[s] for s in chosen)
        print(f"{m:>2} {','.join(chosen):<28} {lockstep:>10.3f} {separate:>10.3f} "
              f"{separate / lockstep:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
