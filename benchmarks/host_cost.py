"""What the host costs a training step: the host input path against the on-device path.

    python benchmarks/host_cost.py                                   # the CPU table
    python benchmarks/host_cost.py --write-results benchmarks/RESULTS.md
    # GPU / TPU: float32 and bfloat16, batch 64 and the largest that fits
    python benchmarks/host_cost.py --dtypes float32,bfloat16 --batch-sizes 64,max \
        --write-results benchmarks/RESULTS.md

For each case (resnet32x4 -> resnet8x4 with KD and SD-DKD, and tiny_cnn alone with CE, where
the device work is smallest, as on a fast accelerator), dtype and global batch:

- raw step ms: the trainer's jitted step (`trainer.build`) on a fixed batch already on the
  device, median of windows with one sync each: the device's time, no input; timed right
  before and right after each row's trainer run (their mean), so that a row's trainer and
  raw step see the same machine load;
- trainer ms/step and images/s: `trainer.train` on synthetic CIFAR-size data (32x32, 100
  classes) for `--steps` steps in one epoch, from its summary's train images/s (training time
  without compilation, evaluation or saving), on three paths: `host` (numpy augmentation and
  float32 copies, dataset.on_device=False), `device k=1` and `device k=K` (the train set on
  the devices, augmentation in the step, K steps per call, each K of `--ks`);
- host ms/step: the Python and input work per step, measured alone on one thread: the input
  (host: gather, augment, copy the float32 batch to the devices; device: draw the indices
  and crops, copy the int32 draws) plus the time a call to the jitted step takes to return
  (its dispatch), divided by the steps per call;
- trainer / raw: the trainer's images/s as a share of the raw step's;
- for tiny_cnn, the jitted calls alone (plain step, k = 1 and each k of `--ks`, inputs on
  the device) timed in alternating windows within one process: the fair comparison of k on
  a machine whose load drifts between the trainer rows.

On CPU the 'device' is the same two cores that run the host's Python and numpy, and other
processes may share them: compare the rows of one run of the script, not runs.

`--write-results FILE` writes the table with the machine and the command into a section of
FILE named `host_cost:<machine kind>`; sections of other machines and benchmarks are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import kd_jax.testing  # noqa: E402,F401  registers tiny_cnn
import results_md  # noqa: E402  (benchmarks/results_md.py)
from kd_jax import data  # noqa: E402
from kd_jax.data import on_device  # noqa: E402
from kd_jax.train import config_validation, trainer  # noqa: E402
from kd_jax.testing import random_batch  # noqa: E402
import train_step as ts  # noqa: E402  (its config builder, machine facts and table helpers)

NUM_CLASSES, IMAGE_SIZE = 100, 32
LR, EPOCH = np.float32(0.05), np.int32(30)
# name -> (pair or student arch, method key); steps per trainer run (CPU, accelerator).
CASES = {"tiny_cnn": ("tiny_cnn", "ce"), "kd": ("resnet32x4-resnet8x4", "kd"),
         "sd_dkd": ("resnet32x4-resnet8x4", "sd_dkd")}
STEPS = {"tiny_cnn": (480, 2000), "kd": (16, 400), "sd_dkd": (16, 400)}
COLUMNS = ("case", "dtype", "batch", "raw step ms", "path", "trainer ms/step",
           "trainer images/s", "host ms/step", "trainer / raw")


def make_config(case: str, dtype: str, batch: int, steps: int):
    what, method = CASES[case]
    if case == "tiny_cnn":
        config = ts.make_config("resnet32x4-resnet8x4", method, dtype)
        config.student.arch = what
        config.teacher.arch = config.teacher.checkpoint = ""
    else:
        config = ts.make_config(what, method, dtype)
    # At most CIFAR's 50000 images (several epochs for large batches), evaluated and saved
    # at the end only.
    per_epoch = max(min(steps, 50000 // batch), 1)
    config.dataset.update(name="synthetic", num_train=batch * per_epoch, num_test=batch,
                          num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
    config.batch_size, config.total_steps = batch, steps
    config.num_epochs = -(-steps // per_epoch)
    config.eval_every_epochs = config.checkpoint_every_epochs = config.num_epochs
    config.log_every_steps = steps   # one fetch of the metrics per run, as in a long epoch
    config.tensorboard = config.progress_bar = config.export_model = False
    config.keep_checkpoints = 1
    return config


class RawStep:
    """The trainer's jitted step (`trainer.build`) on a fixed batch already on the device,
    built and compiled once, timed as often as asked."""

    def __init__(self, config, batch: int):
        plan = config_validation.validate(config, num_devices=1)
        self.built = trainer.build(config, plan, NUM_CLASSES, devices=jax.devices()[:1])
        self.images = random_batch(self.built.mesh, batch, NUM_CLASSES, IMAGE_SIZE)
        self.state = self.built.state
        self._run(1)   # compile

    def _run(self, steps: int) -> None:
        b = self.built
        for _ in range(steps):
            self.state, m = b.train_step(self.state, b.teacher_state, self.images, LR, EPOCH)
        jax.block_until_ready((self.state, m))

    def seconds(self, steps: int, repeats: int = 3) -> float:
        """Median seconds per step over `repeats` windows of `steps` steps, one sync each."""
        windows = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self._run(steps)
            windows.append((time.perf_counter() - t0) / steps)
        return float(np.median(windows))


def raw_step(config, batch: int, steps: int, repeats: int = 3) -> float:
    """Seconds per step of the trainer's jitted step on a batch already on the device."""
    return RawStep(config, batch).seconds(steps, repeats)


def trainer_rate(config) -> float:
    """The trainer's train images/s (its summary: compilation, eval and saves excluded)."""
    with tempfile.TemporaryDirectory() as workdir, \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        summary, _ = trainer.train(config, workdir)
    return summary["images_per_s"]


def host_per_step(config, k: int, steps: int) -> float:
    """Seconds of host work per step on one path (k = 0: the host path), measured alone: the
    input of each call on the devices, plus the return time of the jitted call."""
    plan = config_validation.validate(config, num_devices=1)
    built = trainer.build(config, plan, NUM_CLASSES, devices=jax.devices()[:1])
    ds = data.get_dataset(config.dataset)
    mesh = built.mesh
    if k == 0:
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        source = ds.train_batches(1, config.batch_size, config.seed)
        call = lambda s, x: built.train_step(s, built.teacher_state, x, LR, EPOCH)  # noqa: E731
        per_call = 1
    else:
        sharding = on_device.draws_sharding(mesh)
        source = on_device.dispatches(ds, 1, config.batch_size, config.seed, 0,
                                      ds.steps_per_epoch(config.batch_size) // k * k, k)
        train_set = on_device.put_on_mesh(ds, mesh)
        call = lambda s, x: built.multi_train_step(  # noqa: E731
            s, built.teacher_state, train_set, x, np.int32(k), LR, EPOCH)
        per_call = k
    state = built.state
    inputs = [data.to_global_array(next(source), sharding)]   # warm-up and compile
    state, m = call(state, inputs[0])
    jax.block_until_ready((state, m))
    calls = max(min(steps, ds.steps_per_epoch(config.batch_size)) // per_call - 1, 1)
    t0 = time.perf_counter()
    for _ in range(calls):
        inputs.append(jax.block_until_ready(data.to_global_array(next(source), sharding)))
    input_s = (time.perf_counter() - t0) / calls
    dispatch = []
    for x in inputs[1:4]:   # a call's return time needs few samples (each runs the step)
        t0 = time.perf_counter()
        state, m = call(state, x)
        dispatch.append(time.perf_counter() - t0)
        jax.block_until_ready((state, m))
    return (input_s + float(np.median(dispatch))) / per_call


def interleaved_calls(config, ks: list[int], windows: int = 5) -> dict:
    """Median ms per step of the jitted calls alone, inputs on the device: the plain step on
    one batch, and one call of k steps for each k, alternated window by window in one
    process, so that a machine whose load drifts treats every k alike (the trainer rows run
    one after another)."""
    plan = config_validation.validate(config, num_devices=1)
    built = trainer.build(config, plan, NUM_CLASSES, devices=jax.devices()[:1])
    ds = data.get_dataset(config.dataset)
    train_set = on_device.put_on_mesh(ds, built.mesh)
    span = max(ks + [1])
    draws = on_device.pack_draws(
        [d for _, d in zip(range(span), ds.train_draws(1, config.batch_size, config.seed))])
    inputs = {k: data.to_global_array(draws[:k], on_device.draws_sharding(built.mesh))
              for k in [1] + ks}
    batch = random_batch(built.mesh, config.batch_size, NUM_CLASSES, IMAGE_SIZE)
    state = [built.state]

    def plain():
        state[0], m = built.train_step(state[0], built.teacher_state, batch, LR, EPOCH)
        return m

    def multi(k):
        state[0], m = built.multi_train_step(state[0], built.teacher_state, train_set,
                                             inputs[k], np.int32(k), LR, EPOCH)
        return m

    calls = {"plain step": (plain, 1), **{f"k={k}": (lambda k=k: multi(k), k)
                                          for k in [1] + ks}}
    for call, _ in calls.values():
        jax.block_until_ready(call())   # compile
    times = {name: [] for name in calls}
    for _ in range(windows):
        for name, (call, k) in calls.items():
            t0 = time.perf_counter()
            for _ in range(span // k):
                m = call()
            jax.block_until_ready(m)
            times[name].append((time.perf_counter() - t0) / (span // k * k))
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def max_batch(case: str, dtype: str, limit: int) -> int:
    """The largest batch (64 doubled) whose raw step runs, up to `limit`."""
    best, batch = 64, 128
    while batch <= limit:
        try:
            raw_step(make_config(case, dtype, batch, 2), batch, 1, repeats=1)
        except Exception as e:  # noqa: BLE001 -- only out-of-memory ends the search
            if not ts._is_oom(e):
                raise
            break
        best, batch = batch, 2 * batch
    return best


def measure(case: str, dtype: str, batch: int, steps: int, ks: list[int], label: str) -> list:
    """One row per path. The raw step is timed right before and right after each trainer
    run and their mean is that row's `raw ms`, so `trainer / raw` compares two measurements
    taken under the same machine load (the load of a shared machine drifts between rows)."""
    config = make_config(case, dtype, batch, steps)
    raw_step_ = RawStep(config, batch)
    raw_steps = max(min(steps // 4, 50), 2)
    rows = []
    for path, on, k in [("host", False, 0), ("device k=1", True, 1)] + [
            (f"device k={k}", True, k) for k in ks if k != 1]:
        c = make_config(case, dtype, batch, steps)
        c.dataset.on_device, c.steps_per_dispatch = on, max(k, 1)
        before = raw_step_.seconds(raw_steps)
        rate = trainer_rate(c)
        raw = (before + raw_step_.seconds(raw_steps)) / 2
        host = host_per_step(c, k, min(steps, 200))
        row = {"case": case, "dtype": dtype, "batch": label, "raw_ms": 1e3 * raw, "path": path,
               "trainer_ms": 1e3 * batch / rate, "rate": rate, "host_ms": 1e3 * host,
               "share": rate * raw / batch}
        rows.append(row)
        print_row(cells(row))
    return rows


def cells(r: dict) -> list[str]:
    return [r["case"], r["dtype"], r["batch"], f"{r['raw_ms']:.2f}", r["path"],
            f"{r['trainer_ms']:.2f}", f"{r['rate']:.0f}", f"{r['host_ms']:.3f}",
            f"{100 * r['share']:.0f}%"]


def print_row(row) -> None:
    print(" | ".join(row), flush=True)


def write_results(path: str, info: dict, rows: list, args, command: str,
                  interleaved: list = ()) -> None:
    key, what = ts.section_key(info)
    # One section per machine kind and set of cases (e.g. a quick tiny_cnn run apart).
    key = f"host_cost:{key}" + ("" if args.cases == ",".join(CASES) else f":{args.cases}")
    load = lambda l: "/".join(f"{x:.1f}" for x in l)   # noqa: E731
    section = "\n".join([
        f"<!-- results:{key} -->",
        f"## Host cost of a step, {info['platform']}: {what}",
        "",
        f"Written by `{command}` on {info['date']}.",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores; load average (1/5/15 min) "
        f"{load(info['load_start'])} at the start, {load(info['load_end'])} at the end",
        "- raw step: the jitted step on a batch already on the device, timed right before "
        "and right after the row's trainer run (their mean); trainer: "
        "`trainer.train`'s train images/s over one epoch of synthetic 32x32 data "
        f"({args.steps_note}); host ms/step: input + call dispatch per step, measured alone; "
        "trainer / raw: the trainer's images/s as a share of the raw step's",
        "",
        ts.markdown_table(COLUMNS, [cells(r) for r in rows]),
        "",
        *[f"Interleaved calls ({what}; inputs on the device, windows alternated, median ms "
          "per step): " + ", ".join(f"{n} {v:.2f}" for n, v in calls.items()) + "\n"
          for what, calls in interleaved],
        f"<!-- /results:{key} -->"])
    results_md.write_section(path, key, section)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    p.add_argument("--dtypes", default="float32")
    p.add_argument("--batch-sizes", default="64", help="comma list; 'max': the largest that "
                   "fits (doubling from 128 up to --max-batch)")
    p.add_argument("--max-batch", type=int, default=8192)
    p.add_argument("--ks", default="4,8,16", help="steps per call besides 1, for tiny_cnn (the "
                   "other cases: 1 and the default steps_per_dispatch of this platform)")
    p.add_argument("--steps", type=int, default=0, help="steps per trainer run (0: per case)")
    p.add_argument("--no-interleaved", dest="interleaved", action="store_false",
                   help="skip the interleaved timing of the calls (tiny_cnn)")
    p.add_argument("--write-results", default="")
    args = p.parse_args(argv)
    cpu = jax.devices()[0].platform == "cpu"
    info = ts.machine()
    command = "python benchmarks/host_cost.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    print(f"{info['platform']}: {info['device_kind']}; CPU {info['cpu']}, {info['cores']} cores; "
          f"one device; steps per call {[1] + ks}", flush=True)
    print_row(COLUMNS)
    rows, notes, interleaved = [], [], []
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        steps = args.steps or STEPS[case][0 if cpu else 1]
        notes.append(f"{case}: {steps} steps")
        for dtype in args.dtypes.split(","):
            for b in [b.strip() for b in args.batch_sizes.split(",") if b.strip()]:
                batch = max_batch(case, dtype, args.max_batch) if b == "max" else int(b)
                case_ks = ks if case == "tiny_cnn" else [on_device.steps_per_dispatch(
                    make_config(case, dtype, batch, steps).steps_per_dispatch,
                    jax.devices()[0].platform)]
                rows += measure(case, dtype, batch, steps, case_ks,
                                f"{batch} max" if b == "max" else str(batch))
                # Written after every case, so that an interrupted run keeps what it measured.
                info["load_end"] = os.getloadavg()
                args.steps_note = ", ".join(notes)
                if case == "tiny_cnn" and args.interleaved:
                    calls = interleaved_calls(make_config(case, dtype, batch, steps), ks)
                    interleaved.append((f"{case} {dtype} batch {batch}", calls))
                    print("interleaved calls, ms/step: " + ", ".join(
                        f"{n} {v:.2f}" for n, v in calls.items()), flush=True)
                if args.write_results:
                    write_results(args.write_results, info, rows, args, command, interleaved)
    if args.write_results:
        print(f"wrote {args.write_results}")


if __name__ == "__main__":
    main()
