"""The device check: what no CPU can show, on one accelerator, in one command.

    python benchmarks/device_check.py                       # prints; JSON to device_check.json
    python benchmarks/device_check.py --write-results benchmarks/RESULTS.md
    python benchmarks/device_check.py --tiny                # tiny models on CPU: a smoke run

Built to take under 8 minutes on one H100 or one v5e chip (the first device only). Each
check prints one line as it ends; all of them go to the JSON file (--json) and, with
--write-results, to a section of that file (benchmarks/RESULTS.md) named after the machine:

1. backend: the platform, device kind and count, versions (kd_jax.machine);
2. bytes: the CIFAR-sized uint8 train set (50k x 32 x 32 x 3) and the test set put on the
   device: their logical bytes against what the device reports in use (memory_stats();
   TPU memory is expected to tile a minor dimension of 3 to 128 lanes);
3. batches: the on-device train batch against the numpy batch of the same (seed, epoch,
   step) (labels equal, largest image difference in ulp), and the on-device test batches
   against the host's (bit for bit);
4. steps: SD-DKD resnet32x4 -> resnet8x4 at batch 64, float32 and bfloat16, the plain step
   and k=8 steps per call (a padded call too): ms per step, compile time, the compiles of
   every later call (must be 0), and JAX's donation warnings;
5. save: an async orbax save followed at once by donated steps restores the state saved,
   bit for bit; the save's blocking and total time;
6. repeat: the same steps from the same state twice: bitwise equal, or how far apart;
7. trainer: `trainer.train` over 2 epochs of the CIFAR-sized synthetic set with this
   platform's defaults (kd_jax.train.platform_defaults): images/s against the raw step's;
8. eval: one evaluation of the 10k test set: host batches of 64 against the test set on the
   device in batches of 64 and of the accelerator default (1024): ms, calls, equal sums;
9. torch: PyTorch's eager step of the same pair (benchmarks/torch_step.py), where a CUDA
   torch is installed.

The GPU/TPU defaults of kd_jax.train.platform_defaults (and steps_per_dispatch) are choices
until this has run on the device: checks 4, 5, 7 and 8 are their measurement. Reuses
benchmarks/train_step.py (config, machine, table), host_cost.py (the CIFAR-sized trainer
config) and torch_step.py; --tiny is tests/test_device_check.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shlex
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import host_cost  # noqa: E402  (benchmarks/host_cost.py: the CIFAR-sized trainer config)
import results_md  # noqa: E402
import train_step as ts  # noqa: E402  (config, machine facts, table helpers, torch)
from kd_jax import data  # noqa: E402
from kd_jax.data import device_test_set, on_device  # noqa: E402
from kd_jax.testing import compiled_programs, random_batch  # noqa: E402
from kd_jax.train import config_validation, platform_defaults, trainer  # noqa: E402
from kd_jax.train.checkpoint import Checkpointer  # noqa: E402

LR, EPOCH = np.float32(0.05), np.int32(30)   # epoch 30: SD-DKD's warmup is over


@dataclasses.dataclass(frozen=True)
class Size:
    teacher: str
    student: str
    image: int
    classes: int
    num_train: int      # not a multiple of batch * k: the last call of an epoch is padded
    num_test: int
    batch: int
    k: int
    steps: int          # timed steps per window (plain step)
    repeats: int
    eval_batch: int     # the accelerator default being checked


FULL = Size("resnet32x4", "resnet8x4", 32, 100, 50_000, 10_000, 64, 8, 40, 3,
            platform_defaults.ACCELERATOR_EVAL_BATCH)
TINY = Size("tiny_cnn_wide", "tiny_cnn", 16, 10, 9 * 64, 200, 64, 2, 2, 1, 128)


def make_config(size: Size, dtype: str):
    c = host_cost.make_config("sd_dkd", dtype, size.batch, 2 * (size.num_train // size.batch))
    c.teacher.arch, c.student.arch = size.teacher, size.student
    c.dataset.update(num_train=size.num_train, num_test=size.num_test,
                     num_classes=size.classes, image_size=size.image)
    c.num_epochs, c.total_steps = 2, 0
    c.eval_every_epochs, c.log_every_steps = 1, 100
    c.checkpoint_every_epochs = c.checkpoint_every_minutes = None   # this platform's
    c.steps_per_dispatch = size.k
    return c


def build(size: Size, dtype: str):
    c = make_config(size, dtype)
    return c, trainer.build(c, config_validation.validate(c, num_devices=1), size.classes,
                            devices=jax.devices()[:1])


def bytes_in_use(device) -> int | None:
    stats = device.memory_stats()
    return None if not stats else stats.get("bytes_in_use")


def copy(tree):
    return jax.tree.map(lambda x: x.copy(), tree)


def host_leaves(tree) -> list:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def max_ulp(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.max(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32))))


# --- the checks --------------------------------------------------------------------------------

def check_bytes(size: Size, ds, mesh) -> tuple[dict, object, object]:
    device = mesh.devices.flat[0]
    before = bytes_in_use(device)
    train_set = jax.block_until_ready(on_device.put_on_mesh(ds, mesh))
    middle = bytes_in_use(device)
    test_set = jax.block_until_ready(device_test_set.put_on_mesh(ds, mesh, size.eval_batch))
    after = bytes_in_use(device)
    delta = lambda a, b: None if a is None or b is None else b - a   # noqa: E731
    result = {"train_logical": on_device.train_set_bytes(ds),
              "train_device": delta(before, middle),
              "test_logical": int(test_set.rows.nbytes + test_set.labels.nbytes),
              "test_device": delta(middle, after)}
    return result, train_set, test_set


def check_batches(size: Size, ds, mesh, train_set, test_set) -> dict:
    sharding = NamedSharding(mesh, P("data"))
    batch = jax.jit(on_device.train_batch, out_shardings=sharding)
    worst_ulp, worst_abs, labels = 0, 0.0, True
    for seed, epoch, step in ((0, 1, 0), (3, 2, 5)):
        draws = on_device.pack_draws([next(ds.train_draws(epoch, size.batch, seed, step))])[0]
        got = jax.device_get(batch(train_set, data.to_global_array(draws, sharding)))
        want = next(ds.train_batches(epoch, size.batch, seed, start_step=step))
        labels &= bool(np.array_equal(got["label"], want["label"]))
        worst_ulp = max(worst_ulp, max_ulp(got["image"], want["image"]))
        worst_abs = max(worst_abs, float(np.max(np.abs(got["image"] - want["image"]))))
    evaluate = jax.jit(device_test_set.eval_batch)
    host = list(ds.eval_batches(size.eval_batch))
    test_equal = all(
        all(np.array_equal(np.asarray(v), h[key]) for key, v in
            jax.device_get(evaluate(test_set, np.int32(i))).items())
        for i, h in enumerate(host))
    return {"train_labels_equal": labels, "train_image_max_ulp": worst_ulp,
            "train_image_max_abs": worst_abs, "test_batches_bitwise": test_equal}


def check_steps(size: Size, ds, dtype: str, k: int) -> tuple[dict, object]:
    """(timings, a callable taking one more plain step or call) of one step variant."""
    config, built = build(size, dtype)
    state = copy(built.state)
    if k == 1:
        batch = random_batch(built.mesh, size.batch, size.classes, size.image)

        def call(s, live=1):
            return built.train_step(s, built.teacher_state, batch, LR, EPOCH)
        lives = [1] * size.steps
    else:
        train_set = on_device.put_on_mesh(ds, built.mesh)
        draws = data.to_global_array(
            on_device.pack_draws([d for _, d in zip(range(k), ds.train_draws(1, size.batch,
                                                                              0))]),
            on_device.draws_sharding(built.mesh))

        def call(s, live=k):
            return built.multi_train_step(s, built.teacher_state, train_set, draws,
                                          np.int32(live), LR, EPOCH)
        # Full calls and the padded last call of an epoch (steps per epoch mod k live).
        lives = [k, (size.num_train // size.batch) % k or k] * max(size.steps // (2 * k), 1)
    with compiled_programs() as names, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        state, metrics = call(state)
        jax.block_until_ready((state, metrics))
        first_s = time.perf_counter() - t0
        first_compiles = list(names)
        del names[:]
        windows = []
        for _ in range(size.repeats):
            t0 = time.perf_counter()
            for live in lives:
                state, metrics = call(state, live)
            jax.block_until_ready((state, metrics))
            windows.append((time.perf_counter() - t0) / sum(lives))
    step_s = float(np.median(windows))
    donation = [str(w.message).splitlines()[0] for w in caught if "donat" in str(w.message)]
    return {"dtype": dtype, "k": k, "step_ms": 1e3 * step_s,
            "images_per_s": size.batch / step_s,
            "compile_s": max(first_s - k * step_s, 0.0),
            "first_call_compiles": len(first_compiles), "later_call_compiles": len(names),
            "later_compiled": sorted(set(names)), "donation_warnings": donation}, \
        (built, call, state)


def check_save(built, call, state, workdir: str) -> dict:
    """An async save, then donated steps at once: the restored state is the saved one."""
    saved = host_leaves(state)
    ckpt = Checkpointer(workdir, keep=1)
    try:
        t0 = time.perf_counter()
        ckpt.save(1, state, {"check": "device_check"})
        blocking_s = time.perf_counter() - t0
        for _ in range(3):   # the saved buffers are donated while orbax may still read them
            state, metrics = call(state)
        jax.block_until_ready((state, metrics))
        ckpt.wait()
        total_s = time.perf_counter() - t0
        restored, _ = ckpt.restore(state, 1)
    finally:
        ckpt.close()
    equal = all(np.array_equal(a, b) for a, b in zip(saved, host_leaves(restored)))
    return {"restored_equals_saved": equal, "blocking_ms": 1e3 * blocking_s,
            "save_and_3_steps_ms": 1e3 * total_s}


def check_repeat(built, call, steps: int) -> dict:
    """The same `steps` plain steps (`call`) twice from the run's initial state."""
    runs = []
    for _ in range(2):
        state = copy(built.state)
        for _ in range(steps):
            state, _ = call(state)
        runs.append(host_leaves(state))
    differ = [float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(*runs)
              if not np.array_equal(a, b)]
    return {"steps": steps, "bitwise_equal": not differ, "leaves_differing": len(differ),
            "max_abs_difference": max(differ, default=0.0),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def check_trainer(size: Size, dtype: str, raw_images_per_s: float) -> dict:
    """trainer.train over 2 epochs with this platform's defaults, output kept quiet."""
    c = make_config(size, dtype)
    c.steps_per_dispatch = 0   # this platform's default
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as workdir, compiled_programs() as names, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        summary, _ = trainer.train(c, workdir)
    header = [line.strip() for line in out.getvalue().splitlines()
              if line.strip().startswith(("input:", "evaluation batch"))]
    return {"dtype": dtype, "epochs": 2, "images_per_s": summary["images_per_s"],
            "raw_step_images_per_s": raw_images_per_s,
            "share_of_raw": summary["images_per_s"] / raw_images_per_s,
            "wall_s": summary["wall_time_s"], "train_step_compiles": sum(
                n in ("jit(train_step)", "jit(multi_step)") for n in names),
            "settings": header}


def check_eval(size: Size, ds, built, state, test_sets: dict) -> dict:
    """ms of one evaluation of the test set (after its compile): host batches of the train
    batch, and the test set on the device in batches of the train batch and eval_batch."""
    students = {n: (st.params["model"], st.model_state) for n, st in state.students.items()}
    sharding = NamedSharding(built.mesh, P("data"))

    def host():
        return [built.eval_step(students, b) for b in
                data.prefetch_to_mesh(ds.eval_batches(size.batch), sharding)]

    def on_device_(test_set):
        return lambda: [built.device_eval_step(students, test_set, np.int32(i))
                        for i in range(test_set.num_batches)]

    paths = {f"host, batch {size.batch}": host,
             **{f"device, batch {b}": on_device_(t) for b, t in test_sets.items()}}
    result, sums = {}, {}
    for name, evaluate in paths.items():
        jax.block_until_ready(evaluate())   # compile
        t0 = time.perf_counter()
        out = jax.device_get(evaluate())
        result[name] = {"ms": 1e3 * (time.perf_counter() - t0), "calls": len(out)}
        sums[name] = {k: float(sum(o["student"][k] for o in out)) for k in ("top1", "top5",
                                                                          "count")}
    result["sums_equal"] = len({json.dumps(s, sort_keys=True) for s in sums.values()}) == 1
    return result


def check_torch(size: Size, config, platform: str) -> dict:
    torch_step = ts.torch_available(platform) if platform == "gpu" else None
    if torch_step is None:
        return {"skipped": "no CUDA torch on this machine"}
    hp = {k: v for k, v in config.method.to_dict().items() if k != "name"}
    optimizer = {k: config.optimizer[k] for k in ("lr", "momentum", "weight_decay")}
    return {dtype: 1e3 * torch_step.time_step(size.teacher, size.student, "sd_dkd", hp,
                                              optimizer, size.batch, dtype, size.steps,
                                              repeats=size.repeats)["step_s"]
            for dtype in ("float32", "bfloat16")}


# --- the run -----------------------------------------------------------------------------------

def run(size: Size, tiny: bool) -> dict:
    t_start = time.perf_counter()
    info = ts.machine()
    platform = info["platform"]
    results = {"tiny": tiny, "backend": {k: info[k] for k in (
        "platform", "device_kind", "device_count", "cpu", "cores", "versions", "xla_flags")}}
    # A persistent compilation cache that already holds these programs shortens compile s.
    results["backend"]["compilation_cache_dir"] = jax.config.jax_compilation_cache_dir
    say = lambda name, text: print(f"{name:<8} {text}  [{time.perf_counter() - t_start:.0f} s]",
                                   flush=True)   # noqa: E731
    say("backend", f"{platform}: {jax.device_count()} x {info['device_kind']}, jax "
                   f"{info['versions']['jax']}" + (" (--tiny: tiny models, not a device "
                                                   "measurement)" if tiny else ""))
    ds = data.get_dataset(make_config(size, "float32").dataset)
    mesh = trainer.make_mesh(jax.devices()[:1])
    results["bytes"], train_set, test_set = check_bytes(size, ds, mesh)
    b = results["bytes"]
    say("bytes", f"train set {b['train_logical']:,} logical, {b['train_device']} on the device; "
                 f"test set {b['test_logical']:,} logical, {b['test_device']} on the device "
                 "(None: the backend reports no memory_stats)")
    results["batches"] = check_batches(size, ds, mesh, train_set, test_set)
    say("batches", json.dumps(results["batches"]))
    del train_set
    results["steps"], kept = [], {}
    for dtype in ("float32", "bfloat16"):
        for k in (1, size.k):
            r, variant = check_steps(size, ds, dtype, k)
            if k == 1:   # kept for the checks below; a k-step variant holds a train set
                kept[dtype] = variant
            results["steps"].append(r)
            say("steps", f"{dtype} k={k}: {r['step_ms']:.2f} ms/step, {r['images_per_s']:.0f} "
                         f"images/s, compile {r['compile_s']:.1f} s, later compiles "
                         f"{r['later_call_compiles']}, donation warnings "
                         f"{len(r['donation_warnings'])}")
    built, call, state = kept["float32"]
    with tempfile.TemporaryDirectory() as workdir:
        results["save"] = check_save(built, call, copy(state), workdir)   # donates the copy
    say("save", json.dumps(results["save"]))
    results["repeat"] = check_repeat(built, call, max(size.steps // 4, 2))
    say("repeat", json.dumps(results["repeat"]))
    dtype = "float32" if platform == "cpu" else "bfloat16"
    raw = next(r["images_per_s"] for r in results["steps"] if (r["dtype"], r["k"]) == (dtype, 1))
    results["trainer"] = check_trainer(size, dtype, raw)
    t = results["trainer"]
    say("trainer", f"{dtype}: {t['images_per_s']:.0f} images/s, {100 * t['share_of_raw']:.0f}% "
                   f"of the raw step; {t['train_step_compiles']} train-step compile(s); "
                   + "; ".join(t["settings"]))
    built, _, state = kept[dtype]
    test_sets = {size.batch: device_test_set.put_on_mesh(ds, built.mesh, size.batch),
                 size.eval_batch: test_set}
    results["eval"] = check_eval(size, ds, built, state, test_sets)
    say("eval", json.dumps(results["eval"]))
    results["torch"] = check_torch(size, make_config(size, "float32"), platform)
    say("torch", json.dumps(results["torch"]))
    results["defaults"] = {
        "eval_batch_size": platform_defaults.eval_batch_size(
            0, size.batch, (size.image, size.image, 3), platform, size.num_test, 1),
        "checkpoint_every_epochs": platform_defaults.checkpoint_every_epochs(None, platform),
        "checkpoint_every_minutes": platform_defaults.checkpoint_every_minutes(None, platform),
        "steps_per_dispatch": on_device.steps_per_dispatch(0, platform)}
    results["seconds"] = time.perf_counter() - t_start
    info["load_end"] = os.getloadavg()
    results["machine"] = info
    return results


def markdown(results: dict, command: str) -> tuple[str, str]:
    """(key, section) of benchmarks/RESULTS.md."""
    info = results["machine"]
    key, what = ts.section_key(info)
    key = "device_check:" + key + (":tiny" if results["tiny"] else "")
    steps = [[r["dtype"], str(r["k"]), f"{r['step_ms']:.2f}", f"{r['images_per_s']:.0f}",
              f"{r['compile_s']:.1f}", str(r["later_call_compiles"]),
              str(len(r["donation_warnings"]))] for r in results["steps"]]
    evals = [[name, f"{v['ms']:.1f}", str(v["calls"])] for name, v in results["eval"].items()
             if isinstance(v, dict)]
    t, b, s, rep = results["trainer"], results["bytes"], results["save"], results["repeat"]
    lines = [
        f"<!-- results:{key} -->",
        f"## Device check, {info['platform']}: {what}"
        + (" (--tiny: tiny models, a smoke run, not a device measurement)" if results["tiny"]
           else ""),
        "",
        f"Written by `{command}` on {info['date']} in {results['seconds']:.0f} s; jax "
        f"{info['versions']['jax']}; load average {info['load_start'][0]:.1f} at the start, "
        f"{info['load_end'][0]:.1f} at the end.",
        "",
        f"- bytes: train set {b['train_logical']:,} logical, {b['train_device']} on the device; "
        f"test set {b['test_logical']:,} logical, {b['test_device']} on the device",
        f"- batches: {json.dumps(results['batches'])}",
        f"- save: {json.dumps(s)}",
        f"- repeat: {json.dumps(rep)}",
        f"- trainer ({t['dtype']}, 2 epochs, this platform's defaults: "
        f"{'; '.join(t['settings'])}): {t['images_per_s']:.0f} images/s, "
        f"{100 * t['share_of_raw']:.0f}% of the raw step, {t['train_step_compiles']} "
        "train-step compile(s)",
        f"- eval sums equal on every path: {results['eval']['sums_equal']}",
        f"- torch ms/step: {json.dumps(results['torch'])}",
        f"- defaults on this platform: {json.dumps(results['defaults'])}",
        "",
        ts.markdown_table(("dtype", "k", "ms/step", "images/s", "compile s", "later compiles",
                           "donation warnings"), steps),
        "",
        ts.markdown_table(("evaluation of the test set", "ms", "calls"), evals),
        "",
        f"<!-- /results:{key} -->",
    ]
    return key, "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true",
                   help="tiny models and data (a CPU smoke run: tests/test_device_check.py)")
    p.add_argument("--json", default="device_check.json", help="where the results go")
    p.add_argument("--write-results", default="", metavar="FILE",
                   help="also write a section of FILE (e.g. benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    results = run(TINY if args.tiny else FULL, args.tiny)
    command = "python benchmarks/device_check.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    print(f"results: {args.json} ({results['seconds']:.0f} s)", flush=True)
    if args.write_results:
        key, section = markdown(results, command.strip())
        results_md.write_section(args.write_results, key, section)
        print(f"wrote the section {key} of {args.write_results}", flush=True)


if __name__ == "__main__":
    main()
