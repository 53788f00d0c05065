"""MSDCRD's train step against KD's on the same pair: step time and peak memory.

    python benchmarks/msdcrd.py [--pairs resnet32x4-ShuffleV1,resnet32x4-resnet8x4]
           [--batch 64] [--steps 5] [--chunk 256] [--embedding logits]

For each CIFAR-100 pair: KD (the pair's recipe), MSDCRD unchunked (chunk_size 0: the S x S
sample similarity built whole) and MSDCRD chunked (--chunk), each the real jitted step of
the trainer (kd_jax.train.trainer.build) on a random teacher and a fixed random batch on
the devices. Reported: compile time (lower + compile, separate from the steps), the mean
step time over --steps timed steps after one warm-up step, and memory:
- XLA's estimate from the compiled step's memory_analysis(): temp (the step's scratch:
  activations, the similarity blocks, ...) and total = arguments + outputs + temp - aliased
  (the donated state is both an argument and an output). An estimate, not a measurement.
- where the backend reports it (GPU/TPU), device.memory_stats()['peak_bytes_in_use'], the
  process's measured peak. Each configuration runs in its own process (--no-isolate: one
  process, where the measured peak only grows) so that this is that step's own peak.
Ratios are against KD on the same pair. S = batch x window positions: on the common grid
h x h, S = B (h-k+1)^2 for window k (resnet32x4-ShuffleV1: 4x4, S = 1024 at k=1, B=64).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kd_jax import data, recipes  # noqa: E402
from kd_jax.train import config_validation, trainer  # noqa: E402
from kd_jax.testing import random_batch  # noqa: E402

MIB = 2.0 ** 20


def measure(method: str, pair: str, batch: int, steps: int, chunk: int, embedding: str) -> dict:
    """Compile time, step time and memory of one configuration's train step."""
    config = recipes.build_config(method, data.CIFAR100, pair, default_pair=pair)
    config.teacher.checkpoint = "random"
    config.batch_size = batch
    if method == "msdcrd":
        config.method.chunk_size = chunk
        config.method.embedding = embedding
    plan = config_validation.validate(config)
    built = trainer.build(config, plan, 100)
    state, teacher_state = built.state, built.teacher_state
    images = random_batch(built.mesh, batch, 100)
    lr, epoch = np.float32(0.01), np.int32(30)

    t0 = time.perf_counter()
    compiled = built.train_step.lower(state, teacher_state, images, lr, epoch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    estimate = None
    if mem is not None:
        estimate = {"temp": mem.temp_size_in_bytes,
                    "total": (mem.argument_size_in_bytes + mem.output_size_in_bytes
                              + mem.temp_size_in_bytes - mem.alias_size_in_bytes)}

    state, metrics = compiled(state, teacher_state, images, lr, epoch)   # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, teacher_state, images, lr, epoch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    stats = jax.devices()[0].memory_stats() or {}
    hp = plan.students[0].hparams
    return {"method": method, "pair": pair, "label": plan.students[0].label,
            "chunk": hp.get("chunk_size", 0), "windows": list(hp.get("windows", ())),
            "compile_s": compile_s, "step_s": float(np.mean(times)),
            "estimate": estimate, "device_peak": stats.get("peak_bytes_in_use"),
            "loss": float(metrics["student"]["loss"])}


def _isolated(spec: dict) -> dict:
    """measure(**spec) in a fresh process (its own device memory peak)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--single",
                           json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(value, base) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "-"


def _mib(value) -> str:
    return f"{value / MIB:.1f}" if value is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pairs", default="resnet32x4-ShuffleV1,resnet32x4-resnet8x4",
                        help="comma-separated CIFAR-100 pairs teacher-student")
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 1 warm-up)")
    parser.add_argument("--chunk", type=int, default=256,
                        help="chunk_size of the chunked MSDCRD run")
    parser.add_argument("--embedding", default="logits", choices=("logits", "projection"),
                        help="MSDCRD's method.embedding")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="run every configuration in this process (faster; the "
                             "measured device peak then only grows)")
    parser.add_argument("--single", help=argparse.SUPPRESS)   # internal: one measurement
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
    if args.single:
        print(json.dumps(measure(**json.loads(args.single))), flush=True)
        return

    device = jax.devices()[0]
    print(f"devices: {jax.device_count()} x {device.platform} ({device.device_kind}); "
          f"global batch {args.batch}, {args.steps} timed steps, MSDCRD embedding "
          f"{args.embedding}, chunk {args.chunk}")
    print("memory: XLA's estimate from memory_analysis() (temp; total = args + outputs + "
          "temp - aliased); device peak = memory_stats()['peak_bytes_in_use'] where the "
          "backend has it")
    header = (f"{'pair':<22} {'run':<18} {'compile s':>9} {'step ms':>9} {'xKD':>6} "
              f"{'temp MiB':>9} {'xKD':>6} {'total MiB':>9} {'xKD':>6} {'peak MiB':>9} "
              f"{'xKD':>6}")
    print(header)
    for pair in args.pairs.split(","):
        pair = pair.strip()
        runs = [("kd", 0, "KD"), ("msdcrd", 0, "MSDCRD unchunked"),
                ("msdcrd", args.chunk, f"MSDCRD chunk {args.chunk}")]
        base = None
        for method, chunk, name in runs:
            spec = dict(method=method, pair=pair, batch=args.batch, steps=args.steps,
                        chunk=chunk, embedding=args.embedding)
            r = _isolated(spec) if args.isolate else measure(**spec)
            est = r["estimate"] or {}
            if base is None:
                base = r
            base_est = base["estimate"] or {}
            print(f"{pair:<22} {name:<18} {r['compile_s']:>9.2f} {1e3 * r['step_s']:>9.1f} "
                  f"{_ratio(r['step_s'], base['step_s']):>6} "
                  f"{_mib(est.get('temp')):>9} {_ratio(est.get('temp'), base_est.get('temp')):>6} "
                  f"{_mib(est.get('total')):>9} "
                  f"{_ratio(est.get('total'), base_est.get('total')):>6} "
                  f"{_mib(r['device_peak']):>9} "
                  f"{_ratio(r['device_peak'], base['device_peak']):>6}", flush=True)
        print(f"{'':<22} (MSDCRD windows {tuple(r['windows'])})")


if __name__ == "__main__":
    main()
