"""Running a plan: each run claimed through its workdir's lock, finished runs skipped.

    busy = run_plan(plan, "runs/sdd_cifar100")   # the runs another process holds

DIR/plan.json records what the directory is for (the table, its columns, the command's
--config overrides); a command asking for other columns or overrides is refused (a
finished lockstep run cannot gain a student). More seeds or pairs are welcome.

The lockstep rule, decided once per pair and recorded in DIR/<pair>/lockstep.json, so that
every machine sharing DIR trains the pair the same way:
  1. a pair whose lockstep config would give a student other values than its own run
     (`plan.Group.incompatible`) trains separately;
  2. otherwise `--lockstep always` / `never` decides;
  3. otherwise (`auto`) it trains in lockstep if XLA's memory count of the lockstep step at
     the run's batch (one device: arguments, outputs, temporaries) is at most
     MEMORY_FRACTION of the device's memory (the host's on CPU), else separately.
The records are created atomically (a hard link: the first machine's decision stands).

Several machines (or processes) may run the same command on a shared DIR: each run's
trainer takes the run's workdir lock (kd_jax.train.workdir_lock, an flock: the shared file
system must pass flocks between its clients, as NFS v4 does), so a run another process
trains is passed over ("in use"), and a finished one (its summary.json says so) is skipped.
SIGTERM or Ctrl-C stops the plan after the current run saves its step (RunStopped); the
same command then resumes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Callable, Optional

import jax
import numpy as np

from kd_jax.reproduce import measure
from kd_jax.reproduce.plan import Group, Plan, Run, pair_name
from kd_jax.train import stops, trainer
from kd_jax.train import summary as summary_lib
from kd_jax.train.workdir_lock import WorkdirInUse

PLAN_FILE = "plan.json"
LOCKSTEP_FILE = "lockstep.json"
MEMORY_FRACTION = 0.9   # of the device's memory a lockstep step may take
LOCKSTEP_CHOICES = ("auto", "always", "never")


def size(n: float) -> str:
    """Bytes as '1.23 GiB' or '4.5 MiB'."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 / 100 else f"{n / 2**20:.1f} MiB"


class PlanError(ValueError):
    """The command does not match the plan recorded in its directory."""


def _first_process(value: int) -> int:
    """Process 0's `value` in every process (several processes must decide alike)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def create_once(path: str, record: dict) -> dict:
    """Writes `record` to `path` unless it exists; returns what `path` holds (ours, or the
    record of whoever created it first: a hard link either succeeds whole or not at all)."""
    if jax.process_index() == 0 and not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"   # this process's own
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.remove(tmp)
    return summary_lib.read_json(path) or record


def plan_record(plan: Plan) -> dict:
    return {"table": plan.table.name, "methods": list(plan.keys),
            "overrides": list(plan.overrides)}


def check_plan_file(plan: Plan, root: str, create: bool) -> None:
    """Refuses a command whose table, columns or overrides differ from DIR/plan.json's;
    creates the file (`create`) where there is none."""
    path = os.path.join(root, PLAN_FILE)
    want = plan_record(plan)
    have = create_once(path, {**want, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "host": socket.gethostname()}) if create \
        else summary_lib.read_json(path)
    if have is None:
        return
    for key, flag in (("table", "TABLE"), ("methods", "--methods"),
                      ("overrides", "--config overrides")):
        if have.get(key) != want[key]:
            raise PlanError(f"{root} holds a plan of {have.get('table')} with methods "
                            f"{','.join(have.get('methods', []))} and overrides "
                            f"{' '.join(have.get('overrides', [])) or '(none)'}; this command "
                            f"changes its {flag}: repeat them as they were, or use another "
                            "--workdir")


def read_lockstep(root: str, group: Group) -> Optional[dict]:
    """The recorded lockstep decision of the group's pair, or None."""
    return summary_lib.read_json(os.path.join(root, pair_name(group.pair), LOCKSTEP_FILE))


def decide_lockstep(group: Group, choice: str = "auto",
                    cost: Optional[measure.StepCost] = None) -> dict:
    """The lockstep rule (module docstring) for `group`: {"lockstep", "why", ...}. `cost`:
    the lockstep step's, measured here when the rule needs it and none is given."""
    if group.incompatible:
        return {"lockstep": False, "why": "lockstep would change a student's values: "
                                          + group.incompatible}
    if choice != "auto":
        return {"lockstep": choice == "always", "why": f"--lockstep {choice}"}
    cost = cost or measure.step_cost(group.lockstep_config)
    fits = cost.memory_bytes <= MEMORY_FRACTION * cost.memory_limit
    return {"lockstep": fits, "memory_bytes": cost.memory_bytes,
            "memory_limit": cost.memory_limit, "device": cost.device,
            "why": f"its step needs {size(cost.memory_bytes)} of "
                   f"{size(cost.memory_limit)} on {cost.device} "
                   f"({'within' if fits else 'over'} {MEMORY_FRACTION:.0%})"}


def lockstep_of(group: Group, root: str, choice: str) -> bool:
    """The pair's recorded decision, made and recorded first if there is none."""
    path = os.path.join(root, pair_name(group.pair), LOCKSTEP_FILE)
    record = summary_lib.read_json(path) if jax.process_index() == 0 else None
    if not _first_process(int(record is not None)):   # every process decides alike
        record = create_once(path, {**decide_lockstep(group, choice),
                                    "host": socket.gethostname()})
    lockstep = bool(_first_process(int(bool(record and record["lockstep"]))))
    if choice != "auto" and lockstep != (choice == "always"):
        why = f" ({record['why']})" if record else ""
        raise PlanError(f"{path} records that {pair_name(group.pair)} trains "
                        f"{'in lockstep' if lockstep else 'separately'}{why}; --lockstep "
                        f"{choice} contradicts it")
    return lockstep


def finished(root: str, run: Run) -> bool:
    """Whether the run's summary.json says it finished (process 0 reads; all agree)."""
    done = 0
    if jax.process_index() == 0:
        with contextlib.suppress(summary_lib.BrokenJSONError):   # the trainer rewrites it
            summary = summary_lib.read_json(os.path.join(root, run.workdir,
                                                         summary_lib.SUMMARY_FILE))
            done = int(bool(summary and summary.get("finished")))
    return bool(_first_process(done))


def run_plan(plan: Plan, root: str, choice: str = "auto", *,
             starting: Callable[[Run], None] = lambda run: None,
             log: Callable[[str], None] = lambda m: print(m, flush=True)) -> list[str]:
    """Trains every unfinished run of `plan` under `root` (`starting(run)` before each);
    returns the labels of the runs another process holds. Raises RunStopped on SIGTERM /
    Ctrl-C (after the run saves its step)."""
    root = os.path.abspath(root)
    check_plan_file(plan, root, create=True)
    busy, done = [], "nothing trained yet"
    with stops.stop_signals() as stop:
        for group in plan.groups:
            for run in group.runs(lockstep_of(group, root, choice)):
                # A signal after the last run's final step, or during a lockstep decision's
                # compilation, stops here.
                stops.check_between_runs(stop, done, run.label)
                if finished(root, run):
                    log(f"--- {run.label}: finished, skipped")
                    continue
                log(f"\n=== {run.label}: {', '.join(run.keys)} in {run.workdir} ===")
                starting(run)
                try:
                    trainer.train_and_evaluate(run.config, os.path.join(root, run.workdir))
                except WorkdirInUse as e:
                    log(f"--- {run.label}: in use, passed over ({e})")
                    busy.append(run.label)
                    continue
                done = f"{run.label} finished"
    return busy
