"""What a group's train step costs: its memory (XLA's count) and a short measured step, and
the device step times that benchmarks/RESULTS.md holds.

    cost = step_cost(config, steps=2)   # the trainer's own jitted step, a random teacher
    cost.memory_bytes, cost.memory_limit, cost.step_s

The memory is XLA's for the compiled step at the run's batch (arguments, outputs and
temporaries of one device; `compiled.memory_analysis()`), against the device's limit (on
CPU: the host's memory). The time is the median of `steps` steps after the compiling one,
at the run's batch or, above `max_batch`, at `max_batch` scaled linearly to it (an
estimate: the step is assumed proportional to the batch). Input pipeline, evaluation and
checkpoints are not counted.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import statistics
import time
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax.train import config_validation
from kd_jax.train import setup as setup_lib

MAX_BATCH = 64   # default largest batch a timing runs at (larger ones are scaled)


@dataclasses.dataclass(frozen=True)
class StepCost:
    memory_bytes: int             # XLA's count for one device at the run's batch
    memory_limit: int             # the device's memory (CPU: the host's)
    device: str                   # e.g. "cpu x 1", "2 x NVIDIA H100 80GB HBM3"
    step_s: Optional[float]       # seconds per step at the run's batch; None: not timed
    timed_batch: int = 0          # the batch the step was timed at


def memory_limit(device) -> int:
    """The device's memory in bytes (its allocator's limit; on CPU the host's memory)."""
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _batch(mesh, batch: int, image_size: int, num_classes: int, abstract: bool):
    """A train batch {"image" (B, S, S, 3) f32, "label" (B,) i32} sharded over 'data', or
    its shapes only."""
    sharding = NamedSharding(mesh, P("data"))
    shapes = {"image": ((batch, image_size, image_size, 3), np.float32),
              "label": ((batch,), np.int32)}
    if abstract:
        return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in shapes.items()}
    rng = np.random.default_rng(0)
    arrays = {"image": rng.normal(size=shapes["image"][0]).astype(np.float32),
              "label": rng.integers(0, num_classes, batch).astype(np.int32)}
    return jax.device_put(arrays, sharding)


def step_cost(config, steps: int = 0, max_batch: int = MAX_BATCH) -> StepCost:
    """The memory of `config`'s train step and, with steps > 0, its measured time."""
    c = copy.deepcopy(config)
    if c.teacher.arch:
        c.teacher.checkpoint = config_validation.RANDOM_TEACHER   # the cost is the same
    plan = config_validation.validate(c, check_files=False)
    built = setup_lib.build(c, plan, c.dataset.num_classes)
    size, classes, batch = c.dataset.image_size, c.dataset.num_classes, c.batch_size
    lr, epoch = np.float32(c.optimizer.lr), np.int32(1)

    def compiled_at(b: int):
        return built.train_step.lower(built.state, built.teacher_state,
                                      _batch(built.mesh, b, size, classes, True),
                                      lr, epoch).compile()

    full = compiled_at(batch)
    m = full.memory_analysis()
    memory = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
              - m.alias_size_in_bytes)
    device = jax.devices()[0]
    where = (f"{device.platform} x {jax.device_count()}" if device.platform == "cpu"
             else f"{jax.device_count()} x {device.device_kind}")
    if steps <= 0:
        return StepCost(memory, memory_limit(device), where, None)
    n = jax.device_count()
    timed = batch if batch <= max_batch else max(n, max_batch // n * n)
    compiled = full if timed == batch else compiled_at(timed)
    arrays = _batch(built.mesh, timed, size, classes, False)
    state, times = built.state, []
    for _ in range(steps + 1):   # the first call also loads the program: not counted
        t0 = time.perf_counter()
        state, metrics = compiled(state, built.teacher_state, arrays, lr, epoch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[1:]) * batch / timed
    return StepCost(memory, memory_limit(device), where, step_s, timed)


# --- benchmarks/RESULTS.md -------------------------------------------------------------------

def results_file() -> str:
    """benchmarks/RESULTS.md of the source tree kd_jax is imported from (absent in a wheel)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "benchmarks", "RESULTS.md")


@dataclasses.dataclass(frozen=True)
class MeasuredMachine:
    """One train-step section of RESULTS.md (benchmarks/train_step.py --write-results)."""

    title: str                                   # "gpu: NVIDIA H100 x 1"
    platform: str                                # "cpu", "gpu", "tpu"
    step_ms: dict                                # (pair, method key, dtype, batch) -> ms

    @property
    def accelerator(self) -> bool:
        return self.platform != "cpu"


def measured_machines(path: str) -> list[MeasuredMachine]:
    """The train-step tables of a RESULTS.md ([] if there is no such file)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    found = []
    for body in re.findall(r"<!-- results:[^>]+ -->\n(.*?)<!-- /results:", text, re.S):
        heading = re.search(r"^## (\w+): (.+)$", body, re.M)
        header = re.search(r"^\| pair \| method \| dtype \| batch \|.*$", body, re.M)
        if not heading or not header:
            continue   # another benchmark's section
        columns = [c.strip() for c in header.group(0).strip("|").split("|")]
        step = columns.index("step ms")
        rows = {}
        for line in body[header.end():].splitlines()[2:]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != len(columns):
                break
            try:
                rows[(cells[0], cells[1], cells[2], int(cells[3].split()[0]))] = float(cells[step])
            except ValueError:
                continue   # '-': not measured
        found.append(MeasuredMachine(f"{heading.group(1)}: {heading.group(2)}",
                                     heading.group(1), rows))
    return found


def device_step_s(machine: MeasuredMachine, pair: str, keys: Sequence[str], dtype: str,
                  batch: int) -> tuple[Optional[float], list[str]]:
    """(seconds per step of the group on `machine`, the keys it has no step for). The sum of
    each student's measured step alone: an upper bound for their lockstep step, which
    shares one teacher forward. None where a key is missing."""
    missing = [k for k in keys if (pair, k, dtype, batch) not in machine.step_ms]
    if missing:
        return None, missing
    return sum(machine.step_ms[(pair, k, dtype, batch)] for k in keys) / 1e3, []
