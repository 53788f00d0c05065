"""Times the jitted train step (images/s): KD and SD-DKD, resnet32x4 -> resnet8x4.

    python benchmarks/train_step.py [--batch 64] [--steps 10] [--methods kd,sdd:dkd]
           [--teacher resnet32x4] [--student resnet8x4]

Random teacher weights and a fixed random batch already on the devices (so the input
pipeline is not measured); the batch is sharded over all devices as in training. Reports
the compile time, then the mean and best step time over `--steps` timed steps.

`--conv-baseline` also times the floor XLA sets on this backend: forward+backward of a bare
stack of 3x3 NHWC convolutions with resnet8x4's widths and strides (no BatchNorm, no
shortcuts, gradients w.r.t. weights and input), to tell model overhead from convolution cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from kd_jax import data, recipes  # noqa: E402
from kd_jax.train import config_validation, trainer  # noqa: E402


def bench(method: str, teacher_arch: str, student_arch: str, batch: int, steps: int) -> dict:
    # The method block of the resnet32x4 -> resnet8x4 recipe (beta 8, scales [1,2]).
    method, _, base = method.partition(":")
    arg = "resnet32x4-resnet8x4" + (f",{base}" if base else "")
    config = recipes.build_config(method, data.CIFAR100, arg, default_pair=arg) if method != "ce" \
        else recipes.build_config("ce", data.CIFAR100, student_arch, default_pair=student_arch)
    config.student.arch = student_arch
    if method != "ce":
        config.teacher.arch, config.teacher.checkpoint = teacher_arch, "random"
    plan = config_validation.validate(config)
    built = trainer.build(config, plan, 100)
    state, teacher_state, step = built.state, built.teacher_state, built.train_step
    sharded = NamedSharding(built.mesh, P("data"))
    rng = np.random.default_rng(0)
    batch_arrays = jax.device_put(
        {"image": rng.normal(size=(batch, 32, 32, 3)).astype(np.float32),
         "label": rng.integers(0, 100, batch).astype(np.int32)}, sharded)
    lr, epoch = np.float32(0.05), np.int32(30)

    t0 = time.perf_counter()
    state, metrics = step(state, teacher_state, batch_arrays, lr, epoch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = step(state, teacher_state, batch_arrays, lr, epoch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    mean = float(np.mean(times))
    return {"method": plan.students[0].label,
            "compile_s": compile_s, "step_s": mean, "best_step_s": float(np.min(times)),
            "images_per_s": batch / mean, "loss": float(metrics["student"]["loss"])}


# (in, out, stride) of resnet8x4's 3x3 convolutions: stem, then one BasicBlock per stage.
_RESNET8X4_CONVS = ((3, 32, 1), (32, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1),
                    (128, 256, 2), (256, 256, 1))


def conv_baseline(batch: int, steps: int) -> float:
    """Mean seconds of jit(grad) of sum(relu(conv(...))) over the resnet8x4 conv stack."""
    rng = np.random.default_rng(0)
    kernels = [jax.numpy.asarray(0.05 * rng.normal(size=(3, 3, cin, cout)), np.float32)
               for cin, cout, _ in _RESNET8X4_CONVS]
    x = jax.numpy.asarray(rng.normal(size=(batch, 32, 32, 3)), np.float32)

    def forward(kernels, x):
        for kernel, (_, _, stride) in zip(kernels, _RESNET8X4_CONVS):
            x = jax.nn.relu(jax.lax.conv_general_dilated(
                x, kernel, (stride, stride), ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return x.sum()

    grad = jax.jit(jax.grad(forward, argnums=(0, 1)))
    jax.block_until_ready(grad(kernels, x))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(kernels, x))
        times.append(time.perf_counter() - t0)
    return float(np.mean(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", default="kd,sdd:dkd", help="comma-separated: kd, dkd, sdd:kd, sdd:dkd, ce, ...")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--conv-baseline", action="store_true",
                        help="also time a bare conv stack (resnet8x4 widths), fwd+bwd")
    args = parser.parse_args()
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform} "
          f"({jax.devices()[0].device_kind}); {args.teacher} -> {args.student}, "
          f"global batch {args.batch}, {args.steps} timed steps")
    print(f"{'method':<8} {'compile s':>9} {'step ms':>9} {'best ms':>9} {'images/s':>9}")
    for method in args.methods.split(","):
        r = bench(method.strip(), args.teacher, args.student, args.batch, args.steps)
        print(f"{r['method']:<8} {r['compile_s']:>9.2f} {1e3 * r['step_s']:>9.1f} "
              f"{1e3 * r['best_step_s']:>9.1f} {r['images_per_s']:>9.1f}", flush=True)
    if args.conv_baseline:
        seconds = conv_baseline(args.batch, args.steps)
        print(f"bare conv stack (resnet8x4 widths, fwd+bwd): {1e3 * seconds:.1f} ms "
              f"({args.batch / seconds:.1f} images/s)")


if __name__ == "__main__":
    main()
