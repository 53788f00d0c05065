"""Train-step benchmark: the trainer's jitted step on CPU, GPU or TPU, against PyTorch eager.

    python benchmarks/train_step.py                                  # everything, this machine
    python benchmarks/train_step.py --write-results benchmarks/RESULTS.md
    python benchmarks/train_step.py --methods sd_dkd --dtypes bfloat16 --batch-sizes 64 \
        --devices "" --no-torch                                      # one row

For every pair, method, dtype and batch size it builds the run with
`kd_jax.train.trainer.build` (so the timed step is the trainer's: teacher forward, student
forward and backward, the method's objective, SGD; random teacher weights; a fixed random
batch already on the devices, so the input pipeline is not measured), compiles it
(reported separately), and times `--repeats` windows of `--steps` steps after `--warmup`
steps (one device sync per window, as in training); the step time is the median window's
mean, robust to a busy machine. Columns: compile time, step time, images/s, XLA's FLOP count of the
compiled step, the achieved FLOP/s and its fraction of the device's peak (a datasheet table
below; '-' where the device is unknown, e.g. CPUs), and, where torch is installed and runs on
the same kind of device, the same step in PyTorch eager (benchmarks/torch_step.py).

Batch 'max' doubles the batch from 128 until the device runs out of memory or
`--max-batch` and times the largest that fits (on CPU the default limit is 64: memory never
runs out there, the step only gets slower).

The conv floor is one 3x3 convolution 64 -> 64 channels at 32x32, batch 64, forward and
backward (input and weight gradients) alone, in XLA and in PyTorch: on CPUs XLA's
convolution gradients are the gap between the two steps, and the floor shows it.

Scaling: the per-device batch `--scaling-batch` on 1, 2, 4, 8 devices (weak scaling) for
one method, pair and dtype. Device counts above the machine's are skipped, except on CPU,
where a subprocess simulates them (XLA_FLAGS=--xla_force_host_platform_device_count): the
simulated devices share the same cores, so CPU scaling measures sharding overhead only.

`--write-results FILE` writes the tables with the machine (platform, device kind, CPU
model, load average), package versions, date and the command line into a section of FILE
named after the machine kind; sections of other machines are kept.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import results_md  # noqa: E402  (benchmarks/results_md.py)
from kd_jax import data, methods, recipes  # noqa: E402
from kd_jax import machine as machine_lib  # noqa: E402
from kd_jax.train import config_validation, trainer  # noqa: E402
from kd_jax.testing import random_batch  # noqa: E402

PAIRS = "resnet32x4-resnet8x4,resnet32x4-ShuffleV1"
METHODS = "kd,dkd,sd_dkd,clkd"
NUM_CLASSES, IMAGE_SIZE = 100, 32
LR, EPOCH = np.float32(0.05), np.int32(30)   # epoch 30: the DKD-style warmups are over
# Defaults by platform (accelerators, CPU): a CPU step of these models takes seconds.
AUTO = {"steps": (20, 1), "warmup": (2, 1), "max_batch": (16384, 64), "scaling_batch": (64, 8)}

# Dense peak TFLOP/s per JAX device from the vendors' datasheets (no sparsity), matched by
# substring of device_kind in this order: (substring, bfloat16, float32). The float32
# column is the unit XLA uses at JAX's default precision: TF32 tensor cores on NVIDIA
# Ampere and later, single bf16 passes on TPUs (JAX_DEFAULT_MATMUL_PRECISION=highest makes
# float32 exact and several times slower there).
PEAK_TFLOPS = (
    ("h200", 989.4, 494.7),
    ("h100 pcie", 756.5, 378.0),
    ("h100", 989.4, 494.7),          # SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("a100", 312.0, 156.0),
    ("l4", 121.0, 60.0),
    ("tpu v6 lite", 918.0, 918.0),   # v6e, one chip
    ("tpu v5 lite", 197.0, 197.0),   # v5e, one chip
    ("tpu v5", 459.0, 459.0),        # v5p, one chip
    ("tpu v4", 275.0, 275.0),        # one chip (megacore)
    ("tpu v3", 61.5, 61.5),          # one core (a JAX device)
)


def peak_flops(device_kind: str, dtype: str):
    kind = device_kind.lower()
    for key, bf16, fp32 in PEAK_TFLOPS:
        if key in kind:
            return 1e12 * (bf16 if dtype == "bfloat16" else fp32)
    return None


# --- the JAX step ----------------------------------------------------------------------------

def make_config(pair: str, method_key: str, dtype: str, cpu_conv: str = "auto"):
    keys = methods.method_keys()
    if method_key not in keys:
        raise SystemExit(f"unknown method {method_key!r}; known: {', '.join(keys)}")
    method, variant = keys[method_key]
    arg = pair + (f",{variant}" if variant else "")
    config = recipes.build_config(method, data.CIFAR100, arg, default_pair=arg)
    config.teacher.checkpoint = "random"
    config.compute_dtype = dtype
    config.cpu_conv = cpu_conv
    return config


class OutOfMemory(Exception):
    pass


def _is_oom(error: Exception) -> bool:
    text = str(error).lower()
    return "resource_exhausted" in text or "out of memory" in text


def _flops(compiled):
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):   # older JAX: one dict per program
        cost = cost[0] if cost else {}
    value = (cost or {}).get("flops")
    return float(value) if value and value > 0 else None


def time_jax(config, batch: int, steps: int, warmup: int, devices, repeats: int = 1) -> dict:
    """Compile and step times of the trainer's step at global batch `batch` on `devices`."""
    plan = config_validation.validate(config, num_devices=len(devices))
    try:
        built = trainer.build(config, plan, NUM_CLASSES, devices=devices)
        images = random_batch(built.mesh, batch, NUM_CLASSES, IMAGE_SIZE)
        t0 = time.perf_counter()
        compiled = built.train_step.lower(built.state, built.teacher_state, images, LR,
                                          EPOCH).compile()
        compile_s = time.perf_counter() - t0
        state = built.state
        for _ in range(warmup):
            state, metrics = compiled(state, built.teacher_state, images, LR, EPOCH)
        jax.block_until_ready(state)
        windows = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                state, metrics = compiled(state, built.teacher_state, images, LR, EPOCH)
            jax.block_until_ready((state, metrics))
            windows.append((time.perf_counter() - t0) / steps)
        step_s = float(np.median(windows))
        loss = float(metrics["student"]["loss"])
    except Exception as e:  # noqa: BLE001 -- only out-of-memory is expected
        if _is_oom(e):
            raise OutOfMemory(str(e).splitlines()[0]) from None
        raise
    finally:
        gc.collect()
    flops = _flops(compiled)
    return {"batch": batch, "devices": len(devices), "compile_s": compile_s, "step_s": step_s,
            "images_per_s": batch / step_s, "flops": flops, "loss": loss}


def time_max_batch(config, args, devices, limit: int, known: dict | None):
    """The largest batch that fits (doubling from 64, or from 128 after a known batch-64
    result, up to `limit`), timed, and what stopped the search: "memory" or "limit"."""
    best, batch, why = known, 64 if known is None else 128, "limit"
    while batch <= limit:
        try:
            best = time_jax(config, batch, args.steps, args.warmup, devices, args.repeats)
        except OutOfMemory:
            why = "memory"
            break
        batch *= 2
    return best, why


# --- PyTorch and the conv floor ---------------------------------------------------------------

def torch_available(platform_name: str):
    """The torch_step module when torch runs on this JAX platform's kind of device."""
    try:
        import torch
    except ImportError:
        return None
    if platform_name == "gpu" and not torch.cuda.is_available():
        return None
    if platform_name not in ("cpu", "gpu"):
        return None   # TPU hosts: torch would run on the host CPU, not comparable
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_step
    return torch_step


def xla_conv_floor(batch: int, size: int, channels: int, steps: int, dtype=np.float32) -> float:
    """Mean seconds of jit(grad) of sum(conv3x3(x, w)) w.r.t. (w, x): one conv fwd+bwd."""
    rng = np.random.default_rng(0)
    device = jax.devices()[0]
    x = jax.device_put(rng.normal(size=(batch, size, size, channels)).astype(dtype), device)
    w = jax.device_put((0.05 * rng.normal(size=(3, 3, channels, channels))).astype(dtype), device)

    def forward(w, x):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()

    grad = jax.jit(jax.grad(forward, argnums=(0, 1)))
    jax.block_until_ready(grad(w, x))
    t0 = time.perf_counter()
    for _ in range(steps):
        out = grad(w, x)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps


# --- scaling ---------------------------------------------------------------------------------

def scaling_rows(args, counts: list[int]) -> list:
    """Weak scaling on this process's devices (counts above them give None)."""
    dtype = args.scaling_dtype
    config = make_config(args.scaling_pair, args.scaling_method, dtype, args.cpu_conv)
    rows = []
    for n in counts:
        if n > jax.device_count():
            rows.append({"devices": n, "skipped": f"{jax.device_count()} device(s) here"})
            continue
        r = time_jax(config, args.scaling_batch * n, args.steps, args.warmup,
                     jax.devices()[:n], args.repeats)
        rows.append(r)
        print(f"  {n} device(s): global batch {r['batch']}, {1e3 * r['step_s']:.1f} ms, "
              f"{r['images_per_s']:.1f} images/s", flush=True)
    return rows


def scaling(args, platform_name: str) -> list:
    counts = [int(c) for c in args.devices.split(",") if c.strip()]
    if not counts:
        return []
    if platform_name != "cpu" or max(counts) <= jax.device_count():
        return scaling_rows(args, counts)
    # CPU: simulate the devices in a fresh process (XLA_FLAGS is read at JAX start-up).
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={max(counts)}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, os.path.abspath(__file__), "--scaling-worker",
           "--devices", args.devices, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats), "--cpu-conv", args.cpu_conv,
           "--scaling-method", args.scaling_method, "--scaling-pair", args.scaling_pair,
           "--scaling-dtype", args.scaling_dtype, "--scaling-batch", str(args.scaling_batch)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    lines = proc.stdout.splitlines()
    for line in lines[:-1]:
        print(line, flush=True)
    return json.loads(lines[-1])


# --- output ----------------------------------------------------------------------------------

def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


COLUMNS = ("pair", "method", "dtype", "batch", "compile s", "step ms", "images/s",
           "GFLOP/step", "TFLOP/s", "% peak", "torch ms", "JAX/torch")


def table_row(r: dict) -> list[str]:
    torch_ms = r.get("torch_step_s")
    achieved = r["flops"] / r["step_s"] if r["flops"] else None
    batch = str(r["batch"]) + {"memory": " max", "limit": " cap"}.get(r.get("max_by"), "")
    return [r["pair"], r["method"], r["dtype"], batch, _fmt(r["compile_s"], ".1f"),
            _fmt(r["step_s"], ".1f", 1e3), _fmt(r["images_per_s"], ".0f"),
            _fmt(r["flops"], ".1f", 1e-9), _fmt(achieved, ".2f", 1e-12),
            _fmt(achieved / r["peak"] if achieved and r["peak"] else None, ".1f", 100),
            _fmt(torch_ms, ".1f", 1e3),
            _fmt(r["step_s"] / torch_ms if torch_ms else None, ".2f")]


WIDTHS = (22, 7, 8, 9, 9, 9, 9, 10, 8, 6, 9, 9)


def print_row(cells) -> None:
    print(" ".join(f"{c:<{w}}" if i < 3 else f"{c:>{w}}"
                   for i, (c, w) in enumerate(zip(cells, WIDTHS))), flush=True)


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict:
    return {**machine_lib.describe(),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "load_start": os.getloadavg()}


def section_key(info: dict) -> tuple[str, str]:
    """(the results-file key of this machine kind, its description)."""
    what = info["cpu"] if info["platform"] == "cpu" else info["device_kind"]
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", f"{info['platform']}_{what}"), what


def write_results(path: str, info: dict, rows: list, floor: dict, scale: list,
                  args, command: str) -> None:
    key, what = section_key(info)
    v = info["versions"]
    load = lambda l: "/".join(f"{x:.1f}" for x in l)   # noqa: E731
    parts = [
        f"<!-- results:{key} -->",
        f"## {info['platform']}: {what}" + ("" if info["platform"] == "cpu" else
                                            f" x {info['device_count']}"),
        "",
        f"Written by `{command}` on {info['date']}.",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['os']}; load average "
        f"(1/5/15 min) {load(info['load_start'])} at the start, {load(info['load_end'])} at "
        f"the end",
        "- versions: " + ", ".join(f"{k} {v[k]}" for k in v),
        f"- cpu_conv={args.cpu_conv} (CPU convolution formulation); step time: median of "
        f"{args.repeats} windows of {args.steps} step(s), after "
        f"{args.warmup} warm-up step(s); one device; random "
        "teacher, fixed random batch on the device; `% peak`: XLA's FLOP count of the "
        "compiled step / step time / the device's datasheet peak; batch `N max`: the "
        "largest that fits in memory, `N cap`: the largest the search tried (`--max-batch`)",
        "",
        markdown_table(COLUMNS, [table_row(r) for r in rows]),
        "",
    ]
    if floor:
        parts += [f"Conv floor (one 3x3 conv 64 -> 64 at 32x32, batch 64, forward + backward): "
                  f"XLA {_fmt(floor.get('xla_s'), '.1f', 1e3)} ms, PyTorch "
                  f"{_fmt(floor.get('torch_s'), '.1f', 1e3)} ms.", ""]
    if scale:
        parts += [f"Weak scaling: {args.scaling_method} {args.scaling_pair} "
                  f"{args.scaling_dtype}, batch {args.scaling_batch} per device"
                  + (" (simulated CPU devices sharing the same cores)"
                     if info["platform"] == "cpu" else ""), "",
                  markdown_table(("devices", "global batch", "step ms", "images/s", "efficiency"),
                                 scaling_table(scale)), ""]
    parts.append(f"<!-- /results:{key} -->")
    section = "\n".join(parts)
    header = ("# Train-step benchmark results\n\nWritten by `benchmarks/train_step.py "
              "--write-results`, never by hand: one section per machine kind, replaced when "
              "the script runs again there.\n")
    results_md.write_section(path, key, section, header)


def scaling_table(scale: list) -> list:
    base = next((r for r in scale if r.get("devices") == 1 and "step_s" in r), None)
    rows = []
    for r in scale:
        if "step_s" not in r:
            rows.append([str(r["devices"]), "-", "-", "-", f"skipped ({r['skipped']})"])
            continue
        eff = (r["images_per_s"] / (r["devices"] * base["images_per_s"])) if base else None
        rows.append([str(r["devices"]), str(r["batch"]), f"{1e3 * r['step_s']:.1f}",
                     f"{r['images_per_s']:.0f}", _fmt(eff, ".2f")])
    return rows


# --- main ------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pairs", default=PAIRS, help="comma-separated teacher-student pairs")
    p.add_argument("--methods", default=METHODS,
                   help="comma-separated method keys: " + ", ".join(methods.method_keys()))
    p.add_argument("--batch-sizes", default="64,max",
                   help="comma-separated global batch sizes; 'max': the largest that fits")
    p.add_argument("--max-batch", type=int, default=0,
                   help="upper limit of the 'max' search (0: %d on accelerators, %d on CPU)"
                        % AUTO["max_batch"])
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes")
    p.add_argument("--steps", type=int, default=0,
                   help="timed steps per measurement (0: %d on accelerators, %d on CPU)"
                        % AUTO["steps"])
    p.add_argument("--repeats", type=int, default=3,
                   help="timed windows of --steps steps; the median window counts")
    p.add_argument("--warmup", type=int, default=-1,
                   help="untimed steps after compiling (-1: %d on accelerators, %d on CPU)"
                        % AUTO["warmup"])
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the PyTorch eager step at the fixed batch sizes (where "
                        "torch runs on this kind of device)")
    p.add_argument("--cpu-conv", default="auto", choices=("auto", "xla", "im2col"),
                   help="the config's cpu_conv: how convolutions run on the CPU backend "
                        "(docs/benchmarks.md, 'CPU speed')")
    p.add_argument("--conv-floor", action=argparse.BooleanOptionalAction, default=True,
                   help="time one 3x3 conv fwd+bwd (32x32x64, batch 64) in XLA and PyTorch")
    p.add_argument("--devices", default="1,2,4,8",
                   help="device counts of the scaling table ('' to skip it)")
    p.add_argument("--scaling-method", default="sd_dkd", help="method of the scaling table")
    p.add_argument("--scaling-pair", default="resnet32x4-resnet8x4", help="its pair")
    p.add_argument("--scaling-dtype", default="",
                   help="its compute dtype ('': bfloat16 on accelerators, float32 on CPU)")
    p.add_argument("--scaling-batch", type=int, default=0,
                   help="batch per device (0: %d on accelerators, %d on CPU)"
                        % AUTO["scaling_batch"])
    p.add_argument("--write-results", default="", metavar="FILE",
                   help="write the tables into FILE (e.g. benchmarks/RESULTS.md)")
    p.add_argument("--scaling-worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    platform_name = jax.devices()[0].platform
    cpu = platform_name == "cpu"
    for key, unset in (("steps", 0), ("warmup", -1), ("max_batch", 0), ("scaling_batch", 0)):
        if getattr(args, key) == unset:
            setattr(args, key, AUTO[key][cpu])
    if not args.scaling_dtype:
        args.scaling_dtype = "float32" if cpu else "bfloat16"
    if args.scaling_worker:   # the CPU scaling subprocess: rows as JSON on the last line
        print(json.dumps(scaling_rows(args, [int(c) for c in args.devices.split(",")])))
        return
    info = machine()
    command = "python benchmarks/train_step.py " + " ".join(shlex.quote(a) for a in
                                                          (sys.argv[1:] if argv is None else argv))
    limit = args.max_batch
    torch_step = torch_available(platform_name) if args.torch else None
    one = jax.devices()[:1]
    print(f"{info['platform']}: {jax.device_count()} x {info['device_kind']}; CPU {info['cpu']}, "
          f"{info['cores']} cores; jax {jax.__version__}; torch "
          f"{info['versions']['torch'] if torch_step else 'not used'}; "
          f"{args.repeats} x {args.steps} timed steps; table on one device; 'max' batch up to "
          f"{limit}", flush=True)

    floor = {}
    if args.conv_floor:
        floor["xla_s"] = xla_conv_floor(64, 32, 64, max(args.steps, 5))
        if torch_step is not None:
            floor["torch_s"] = torch_step.conv_floor(64, 32, 64, max(args.steps, 5))
        print(f"conv floor (one 3x3 conv 64->64 at 32x32, batch 64, fwd+bwd): XLA "
              f"{_fmt(floor['xla_s'], '.1f', 1e3)} ms, PyTorch "
              f"{_fmt(floor.get('torch_s'), '.1f', 1e3)} ms", flush=True)

    print_row(COLUMNS)
    rows = []
    batch_sizes = [b.strip() for b in args.batch_sizes.split(",") if b.strip()]
    for pair in args.pairs.split(","):
        for method in args.methods.split(","):
            for dtype in args.dtypes.split(","):
                config = make_config(pair.strip(), method.strip(), dtype.strip(), args.cpu_conv)
                teacher, student = config.teacher.arch, config.student.arch
                fixed = [int(b) for b in batch_sizes if b != "max"]
                measured = []
                for b in fixed:
                    r = time_jax(config, b, args.steps, args.warmup, one, args.repeats)
                    if torch_step is not None:
                        hp = {k: v for k, v in config.method.to_dict().items() if k != "name"}
                        r["torch_step_s"] = torch_step.time_step(
                            teacher, student, method.strip(), hp, config.optimizer.to_dict(),
                            b, dtype.strip(), args.steps, args.warmup, args.repeats)["step_s"]
                    measured.append(r)
                if "max" in batch_sizes:
                    known = next((r for r in measured if r["batch"] == 64), None)
                    best, why = time_max_batch(config, args, one, limit, known)
                    if best is not None:
                        best["max_by"] = why   # the batch-64 row itself when nothing larger ran
                        if best is not known:
                            measured.append(best)
                for r in measured:
                    r.update(pair=pair.strip(), method=method.strip(), dtype=dtype.strip(),
                             peak=peak_flops(info["device_kind"], dtype))
                    rows.append(r)
                    print_row(table_row(r))
    if floor and rows:
        ratios = [r["step_s"] / r["torch_step_s"] for r in rows if r.get("torch_step_s")]
        note = (f"; JAX/PyTorch: conv floor {floor['xla_s'] / floor['torch_s']:.2f}x, steps "
                f"{min(ratios):.2f}-{max(ratios):.2f}x") if ratios and "torch_s" in floor else ""
        print(f"conv floor: XLA {1e3 * floor['xla_s']:.1f} ms{note}", flush=True)
    for r in rows:
        if (platform_name == "gpu" and r["method"] == "sd_dkd" and r["batch"] == 64
                and r["pair"] == "resnet32x4-resnet8x4"):
            print(f"target: SD-DKD resnet32x4 -> resnet8x4, batch 64, {r['dtype']}: "
                  f"{1e3 * r['step_s']:.2f} ms (target on one H100: <= 2 ms)", flush=True)

    scale = []
    if args.devices.strip():
        print(f"weak scaling: {args.scaling_method} {args.scaling_pair} {args.scaling_dtype}, "
              f"batch {args.scaling_batch} per device", flush=True)
        scale = scaling(args, platform_name)
        for row in scaling_table(scale):
            print("  " + " | ".join(row), flush=True)
    info["load_end"] = os.getloadavg()
    if args.write_results:
        write_results(args.write_results, info, rows, floor, scale, args, command)
        print(f"wrote {args.write_results}", flush=True)


if __name__ == "__main__":
    main()
