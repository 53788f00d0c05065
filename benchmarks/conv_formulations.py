"""CPU convolution formulations: XLA's convolution against im2col, for every shape of the zoo.

    python benchmarks/conv_formulations.py                          # every CIFAR model
    python benchmarks/conv_formulations.py --archs resnet32x4,resnet8x4 --repeats 5
    python benchmarks/conv_formulations.py --write-results benchmarks/RESULTS.md
    python benchmarks/conv_formulations.py --step resnet32x4-resnet8x4:kd   # the train step

Collects every distinct convolution (kernel, stride, groups, channels, input map) that the
chosen models run on a 32x32 input, then times each at batch `--batch` forward + backward
(input and kernel gradients of <conv(x, w), g> for a fixed random g) in each formulation of
kd_jax.models.layers: `xla` (jax.lax.conv_general_dilated) and `im2col` (layers.conv_im2col:
concatenated shifted slices times the kernel as one matrix; 1x1 convolutions as one matrix
product; depthwise as a fused sum of per-channel taps; other grouped convolutions as an
einsum), and PyTorch's conv2d where torch is installed. The formulations of one shape run
interleaved, one call each in turn, `--repeats` times, and the table gives each one's median,
so a busy machine slows all of them alike. `auto` is what `cpu_conv='auto'` picks on this
machine (layers.cpu_conv_formulation); `max |diff|` is the largest forward difference
between im2col and XLA. The machine line (kd_jax.machine) says which instruction set the
numbers are from: XLA_FLAGS=--xla_cpu_max_isa does not change them (the convolution runs in
a library that picks its kernels from the processor at run time), only another processor
does.

`--step PAIR:METHOD` times instead the trainer's whole step (benchmarks/train_step.py's,
random teacher, fixed batch) built once per `cpu_conv` setting (xla, auto, im2col) and,
with torch, PyTorch's eager step, interleaved one step each in turn, `--repeats` times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import results_md  # noqa: E402  (benchmarks/results_md.py)
from kd_jax import machine, models  # noqa: E402
from kd_jax.models import families, layers  # noqa: E402
from kd_jax.models.shapes import ConvShape as Shape, conv_shapes  # noqa: E402


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def cifar_archs() -> list[str]:
    return [a for a in models.names(reference_only=True)
            if families.family_of(a) == families.CIFAR]


def zoo_shapes(archs: list[str]) -> dict[Shape, list[str]]:
    """{convolution shape: models using it} of the models' forward on a 32x32 RGB input."""
    found: dict[Shape, list[str]] = {}
    for arch in archs:
        for shape in conv_shapes(arch):
            found.setdefault(shape, []).append(arch)
    return found


def _torch_fn(shape: Shape, x: np.ndarray, w: np.ndarray, g: np.ndarray):
    try:
        import torch
    except ImportError:
        return None
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    tg = torch.tensor(g.transpose(0, 3, 1, 2).copy())

    def run():
        tx.grad = tw.grad = None
        y = torch.nn.functional.conv2d(tx, tw, stride=shape.stride, padding=shape.padding,
                                       groups=shape.groups)
        y.backward(tg)
        return tw.grad
    return run


def time_shape(shape: Shape, batch: int, dtype, repeats: int, with_torch: bool,
               clock=time.perf_counter) -> dict:
    """Median seconds of forward+backward per formulation, and the forward's max |diff|."""
    rng = np.random.default_rng(0)
    oh, ow = ((n + 2 * shape.padding - shape.kernel) // shape.stride + 1
              for n in (shape.height, shape.width))
    x = rng.normal(size=(batch, shape.height, shape.width, shape.in_channels)).astype(np.float32)
    w = (rng.normal(size=(shape.kernel, shape.kernel, shape.in_channels // shape.groups, shape.out_channels))
         / np.sqrt(shape.kernel ** 2 * shape.in_channels / shape.groups)).astype(np.float32)
    g = rng.normal(size=(batch, oh, ow, shape.out_channels)).astype(np.float32)
    pad = ((shape.padding, shape.padding),) * 2

    forwards = {
        "xla": lambda x, w: jax.lax.conv_general_dilated(
            x, w, (shape.stride,) * 2, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=shape.groups),
        "im2col": lambda x, w: layers.conv_im2col(x, w, shape.stride, shape.padding,
                                                  shape.groups),
    }
    jx, jw, jg = (jnp.asarray(a, dtype) for a in (x, w, g))
    fns = {}
    for name, fwd in forwards.items():
        grad = jax.jit(jax.grad(lambda x, w, f=fwd: jnp.vdot(f(x, w), jg).real, argnums=(0, 1)))
        fns[name] = lambda grad=grad: jax.block_until_ready(grad(jx, jw))
    ys = {n: np.asarray(jax.jit(f)(jx, jw), np.float32) for n, f in forwards.items()}
    if with_torch and dtype == jnp.float32:
        t = _torch_fn(shape, x, w, g)
        if t is not None:
            fns["torch"] = t
    for fn in fns.values():   # compile and warm up
        fn()
    times = {n: [] for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    result = {n: float(np.median(v)) for n, v in times.items()}
    result["max_diff"] = float(np.max(np.abs(ys["im2col"] - ys["xla"])))
    return result


def _ms(v) -> str:
    return "-" if v is None else f"{1e3 * v:.1f}"


def table(rows: list[tuple[Shape, list[str], dict, str]], has_torch: bool) -> str:
    head = ["conv (k/stride pad groups in->out @map)", "models", "xla ms", "im2col ms",
            "im2col/xla"] + (["torch ms"] if has_torch else []) + ["auto", "max |diff|"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = {"xla": 0.0, "im2col": 0.0, "torch": 0.0, "auto": 0.0}
    for shape, archs, r, auto in rows:
        who = ", ".join(archs[:3]) + (f" +{len(archs) - 3}" if len(archs) > 3 else "")
        cells = [shape.label(), who, _ms(r["xla"]), _ms(r["im2col"]),
                 f"{r['im2col'] / r['xla']:.2f}"]
        if has_torch:
            cells.append(_ms(r.get("torch")))
        cells += [auto, f"{r['max_diff']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
        for k in ("xla", "im2col", "torch"):
            totals[k] += r.get(k) or 0.0
        totals["auto"] += r[auto]
    total = ["sum over shapes (each once)", "", _ms(totals["xla"]), _ms(totals["im2col"]),
             f"{totals['im2col'] / totals['xla']:.2f}"] + \
        ([_ms(totals["torch"])] if has_torch else []) + [f"{_ms(totals['auto'])} ms", ""]
    lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines)


def write_results(path: str, info: dict, text: str, command: str, load: tuple) -> None:
    """Replaces (or appends) this processor's section of the results file."""
    isa = info["isa"]
    kind = "avx512" if isa.get("avx512f") else "avx2" if isa.get("avx2") else "other"
    key = re.sub(r"[^A-Za-z0-9_.@-]+", "_", f"conv_{info['cpu']}_{kind}")
    lo = lambda l: "/".join(f"{v:.1f}" for v in l)   # noqa: E731
    section = "\n".join([
        f"<!-- results:{key} -->",
        f"## CPU convolution formulations: {info['cpu']}, {kind}",
        "",
        f"Written by `{command}` on {datetime.datetime.now():%Y-%m-%d %H:%M}; load average "
        f"(1/5/15 min) {lo(load[0])} at the start, {lo(load[1])} at the end.",
        "",
        f"- machine: {machine.one_line(info)}",
        "",
        text,
        "",
        f"<!-- /results:{key} -->"])
    results_md.write_section(path, key, section)


def time_steps(pair: str, method: str, batch: int, dtype: str, repeats: int,
               with_torch: bool, clock=time.perf_counter) -> dict:
    """Median seconds of one train step per cpu_conv setting (and PyTorch's), interleaved."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import train_step as ts   # the train-step benchmark's config and step
    from kd_jax.train import config_validation, trainer
    from kd_jax.testing import random_batch

    config = ts.make_config(pair, method, dtype)
    plan = config_validation.validate(config, num_devices=1)
    fns = {}
    for setting in ("xla", "auto"):   # each traced and compiled under its setting
        config.cpu_conv = setting
        built = trainer.build(config, plan, ts.NUM_CLASSES, devices=jax.devices()[:1])
        images = random_batch(built.mesh, batch, ts.NUM_CLASSES, ts.IMAGE_SIZE)
        compiled = built.train_step.lower(built.state, built.teacher_state, images, ts.LR,
                                          ts.EPOCH).compile()
        box = [built.state]

        def step(compiled=compiled, built=built, images=images, box=box) -> float:
            t0 = clock()
            box[0], metrics = compiled(box[0], built.teacher_state, images, ts.LR, ts.EPOCH)
            jax.block_until_ready((box[0], metrics))
            return clock() - t0
        fns[setting] = step
        step()   # warm-up
    layers.set_cpu_conv("auto")
    torch_step = ts.torch_available("cpu") if with_torch else None
    if torch_step is not None:
        hp = {k: v for k, v in config.method.to_dict().items() if k != "name"}
        # One warm-up step, then one timed step (the models are built outside the timing).
        fns["torch"] = lambda: torch_step.time_step(
            config.teacher.arch, config.student.arch, method, hp, config.optimizer.to_dict(),
            batch, dtype, 1, 1, 1, clock=clock)["step_s"]
    times = {n: [] for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(fn())
    return {n: float(np.median(v)) for n, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="", help="comma-separated models (default: the "
                        "CIFAR zoo)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved calls per formulation (median)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--write-results", metavar="FILE", default="")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (all threads), "
                        "steadier on a machine other work shares")
    parser.add_argument("--step", metavar="PAIR:METHOD", default="",
                        help="time the whole train step per cpu_conv setting instead")
    args = parser.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a] or cifar_archs()
    unknown = sorted(set(archs) - set(models.names()))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(models.names())}")
    info = machine.describe()
    if info["platform"] != "cpu":
        parser.error(f"this benchmark is for the CPU backend; JAX runs on {info['platform']}")
    load_start = os.getloadavg()
    print(machine.one_line(info), flush=True)
    if args.step:
        pair, _, method = args.step.partition(":")
        r = time_steps(pair, method or "kd", args.batch, args.dtype, args.repeats,
                       not args.no_torch, CLOCKS[args.clock])
        print(f"train step {pair} {method or 'kd'} batch {args.batch} {args.dtype}, {args.clock} "
              f"ms, median of {args.repeats} interleaved steps; load average "
              f"{os.getloadavg()[0]:.1f}: "
              + ", ".join(f"{'cpu_conv=' + n if n != 'torch' else 'PyTorch'} {_ms(v)} ms"
                          for n, v in r.items())
              + (f"; auto/xla {r['auto'] / r['xla']:.2f}")
              + (f", auto/PyTorch {r['auto'] / r['torch']:.2f}" if "torch" in r and
                 args.clock == "wall" else "")
              + ("; PyTorch's CPU time counts its threads' spin-waits: compare it in wall time"
                 if "torch" in r and args.clock == "cpu" else ""))
        return
    shapes = zoo_shapes(archs)
    print(f"{len(shapes)} distinct convolutions in {len(archs)} model(s); batch {args.batch}, "
          f"{args.dtype}, forward + backward, {args.clock} ms, median of {args.repeats} "
          "interleaved calls",
          flush=True)
    dtype = jnp.dtype(args.dtype)
    rows, has_torch = [], False
    for i, (shape, users) in enumerate(sorted(shapes.items())):
        r = time_shape(shape, args.batch, dtype, args.repeats, not args.no_torch,
                       CLOCKS[args.clock])
        has_torch |= "torch" in r
        auto = layers.cpu_conv_formulation(shape.kernel, shape.stride, shape.groups, shape.in_channels,
                                           shape.out_channels, machine.xla_isa())
        rows.append((shape, users, r, auto))
        print(f"  [{i + 1}/{len(shapes)}] {shape.label()}: xla {_ms(r['xla'])} ms, im2col "
              f"{_ms(r['im2col'])} ms" + (f", torch {_ms(r['torch'])} ms" if "torch" in r
                                          else ""), flush=True)
    text = table(rows, has_torch)
    print(text)
    if args.write_results:
        command = "python benchmarks/conv_formulations.py " + shlex.join(
            argv if argv is not None else sys.argv[1:])
        write_results(args.write_results, info, text, command.strip(),
                      (load_start, os.getloadavg()))
        print(f"wrote {args.write_results}")


if __name__ == "__main__":
    main()
