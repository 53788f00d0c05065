"""`--dry-run`: the plan's groups and runs, the time they take here and on a measured device,
and the disk they need, without training anything.

The time here is each pair's step measured on this machine (kd_jax.reproduce.measure, the
same for every seed) times the steps of its runs; the device time is the sum of each
student's step alone that benchmarks/RESULTS.md measured on an accelerator, where it has one
for every student of the group. Neither counts evaluation, checkpoints or compilation.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

from kd_jax import machine
from kd_jax.reproduce import measure, report, runner
from kd_jax.reproduce.plan import Group, Plan, disk_bytes, missing_teachers, pair_name


def duration(seconds: Optional[float]) -> str:
    """'3 d 4 h', '5 h 12 min', '42 min', '31 s' ('-' for None)."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    return f"{m} min" if m else f"{s} s"


def _status(cells: dict, group: Group) -> str:
    seed = group.seed
    found = [("finished" if seed in c.finished else "unfinished" if seed in c.unfinished
              else "not started") for c in (cells[(group.pair, k)] for k in group.keys)]
    return found[0] if len(set(found)) == 1 else "unfinished"


def describe(plan: Plan, root: Optional[str], *, measure_steps: int, max_batch: int,
             choice: str = "auto", results_path: Optional[str] = None,
             log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
             ) -> str:
    """The plan as text; measures each pair's step when measure_steps > 0 (`log`: progress)."""
    t = plan.table
    first = plan.groups[0].lockstep_config
    per_epoch = plan.groups[0].steps // first.num_epochs if first.num_epochs else 0
    lines = [
        f"{t.name}: {t.source} ({t.dataset})",
        f"plan: {len(plan.pairs)} pairs x {len(plan.keys)} columns "
        f"({', '.join(report.label(plan, k).rstrip('*') for k in plan.keys)}) x "
        f"{len(plan.seeds)} seeds ({', '.join(map(str, plan.seeds))}) = {plan.num_runs} "
        f"student runs, in {len(plan.groups)} groups (one per pair and seed)",
        f"each run: {first.num_epochs} epochs x {per_epoch:,} steps = {plan.groups[0].steps:,} "
        f"steps at batch {first.batch_size}"
        + (f" (total_steps={first.total_steps})" if first.total_steps else ""),
        f"directories: {root or 'DIR'}/<teacher>-<student>/seed_<s>/ is a group's lockstep "
        "run; <key>/ under it each student's outputs (or its own run)",
        "lockstep rule: a group trains in lockstep (one run, one teacher forward per step) "
        "unless that would change a student's values, or (--lockstep auto) its step needs "
        f"more than {runner.MEMORY_FRACTION:.0%} of a device's memory: then one run per "
        "student. Decided once per pair, recorded in <pair>/lockstep.json.",
    ]
    missing = missing_teachers(plan)
    lines.append("teachers: " + ("; ".join(f"{n}: {todo}" for n, todo in missing.items())
                                 if missing else "every one the plan needs is available"))
    cells = report.gather(plan, root) if root else None

    costs, modes = {}, {}
    for group in plan.groups:
        if group.pair in modes:
            continue
        recorded = runner.read_lockstep(root, group) if root else None
        if measure_steps > 0:
            log(f"measuring {pair_name(group.pair)} ({len(modes) + 1} of {len(plan.pairs)}): "
                "compiling its lockstep step, then timing it (minutes on a CPU; --no-measure "
                "skips this)")
            t0 = time.perf_counter()
            costs[group.pair] = {"lockstep": measure.step_cost(
                group.lockstep_config, measure_steps, max_batch)}
            log(f"measured {pair_name(group.pair)}: {len(group.keys)} students in lockstep, "
                f"{measure_steps} step(s) after the compiling one, in "
                f"{time.perf_counter() - t0:.0f} s (load average "
                f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())})")
        if recorded:
            modes[group.pair] = (recorded["lockstep"], f"recorded: {recorded['why']}")
        elif group.incompatible or choice != "auto" or group.pair in costs:
            d = runner.decide_lockstep(group, choice, costs.get(group.pair, {}).get("lockstep"))
            modes[group.pair] = (d["lockstep"], d["why"])
        else:
            modes[group.pair] = (True, "assumed: --no-measure measures no memory")
        if measure_steps > 0 and not modes[group.pair][0]:
            for k in group.keys:
                costs[group.pair][k] = measure.step_cost(group.solo_configs[k], measure_steps,
                                                         max_batch)
                log(f"measured {pair_name(group.pair)} {k} alone")

    machines = [m for m in measure.measured_machines(results_path or measure.results_file())
                if m.accelerator]
    head = ["group", "mode", "runs", "steps/run", "status", "step s here", "time here"]
    head += [f"time {m.title}" for m in machines] + ["disk"]
    rows, total_here, total_disk, total_steps = [head], 0.0, 0, 0
    device_totals = [0.0] * len(machines)
    for group in plan.groups:
        lockstep, _ = modes[group.pair]
        runs = group.runs(lockstep)
        status = _status(cells, group) if cells else "-"
        cost = costs.get(group.pair)
        step_s = None
        if cost:
            step_s = (cost["lockstep"].step_s if lockstep
                      else sum(cost[k].step_s for k in group.keys))
        todo = status != "finished"
        here = step_s * group.steps if step_s is not None else None
        disk = sum(disk_bytes(r.config, len(r.keys)) for r in runs)
        total_disk += disk
        total_steps += group.steps * len(runs)
        if here is not None and todo:
            total_here += here
        row = [group.label, "lockstep" if lockstep else "separate", str(len(runs)),
               f"{group.steps:,}", status, "-" if step_s is None else f"{step_s:.3f}",
               duration(here)]
        c = group.lockstep_config
        for i, m in enumerate(machines):
            dev_s, _ = measure.device_step_s(m, pair_name(group.pair), group.keys,
                                             c.compute_dtype, c.batch_size)
            row.append(duration(dev_s * group.steps) if dev_s else "not measured")
            if dev_s and todo:
                device_totals[i] += dev_s * group.steps
        rows.append(row + [runner.size(disk)])
    lines += ["", *report.aligned(rows), ""]

    for pair, (lockstep, why) in modes.items():
        lines.append(f"{pair_name(pair)}: {'lockstep' if lockstep else 'separate runs'}; {why}")
    info = machine.describe()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    if costs:
        timed = {c.timed_batch for per in costs.values() for c in per.values()}
        lines.append(f"time here: {duration(total_here)} for the runs not finished "
                     "(unfinished ones counted whole), from a step measured on "
                     f"{machine.one_line(info)} (load average {load}) at batch "
                     f"{', '.join(map(str, sorted(timed)))}"
                     + (f", scaled to batch {first.batch_size}"
                        if max(timed) < first.batch_size else "")
                     + "; evaluation, checkpoints and compilation not counted")
    else:
        lines.append("time here: not measured (--no-measure)")
    if machines:
        for m, total in zip(machines, device_totals):
            lines.append(f"time on {m.title} (benchmarks/RESULTS.md, each student's step "
                         f"alone, summed: an upper bound for lockstep): {duration(total)} "
                         "for the groups it measured every student of")
    else:
        path = results_path or measure.results_file()
        found = [m.title for m in measure.measured_machines(path)]
        lines.append(
            "time on a device: " + (f"{path} has no accelerator step measured (its train-step "
                                    f"sections: {', '.join(found) or 'none'})"
                                    if os.path.isfile(path) else f"{path} not found")
            + "; `python benchmarks/train_step.py --write-results benchmarks/RESULTS.md` on a "
              "GPU or TPU adds one")
    lines.append(f"disk: {runner.size(total_disk)} for {plan.num_runs} student runs "
                 f"({total_steps:,} trainer steps in all): {first.keep_checkpoints} checkpoints "
                 "of each student's parameters, momentum and BatchNorm statistics"
                 + (", and its final and best models" if first.export_model else "")
                 + "; logs not counted")
    return "\n".join(lines)
