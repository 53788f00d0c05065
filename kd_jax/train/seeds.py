"""One config over several seeds: <workdir>/seed_<s> per seed, then mean ± std.

    python -m kd_jax.main --config cifar_kd.py --workdir DIR --config.seeds=0,1,2

Each seed is an ordinary run (resumable; a finished one is skipped) with config.seed = s, so
the student's initialisation, the data order and the augmentation all change with the seed.
The top-level DIR/summary.json holds (the contract scripts rely on):

    {"seeds": [0, 1, 2],
     "best_top1": {"mean", "std", "n"}, "last_top1": {"mean", "std", "n"},   # a solo config
     "students": {name: {... the same per student ...}},                     # lockstep
     "published_top1", "runs": {seed: {"best_top1", "last_top1", "workdir"}}, ...}

std is the sample standard deviation (ddof 1); None when n < 2.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Optional, Sequence

import jax

from kd_jax.train import stops, trainer, workdir_lock
from kd_jax.train import summary as summary_lib
from kd_jax.train.config_validation import parse_seeds

SEED_DIR = "seed_{}"


def stats(values: Sequence[float]) -> dict:
    """{"mean", "std" (sample, ddof 1; None if n < 2), "n"} of `values`."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def _aggregate_one(per_seed: dict) -> dict:
    """Mean ± std over seeds of one student's summaries {seed: summary}."""
    first = next(iter(per_seed.values()))
    best = stats([s["best_top1"] for s in per_seed.values()])
    pub = first["published_top1"]
    return {
        "method": first["method"], "method_key": first["method_key"],
        "dataset": first["dataset"], "teacher": first["teacher"], "student": first["student"],
        "best_top1": best,
        "last_top1": stats([s["last_top1"] for s in per_seed.values()]),
        "published_top1": pub,
        "best_minus_published": (best["mean"] - pub) if best["n"] and pub is not None else None,
        "runs": {str(seed): {"best_top1": s["best_top1"], "last_top1": s["last_top1"]}
                 for seed, s in per_seed.items()},
    }


def aggregate(summaries: dict, workdir: str) -> dict:
    """summaries: {seed: the run's summary (solo or lockstep)} -> the seeds summary."""
    seeds = list(summaries)
    first = summaries[seeds[0]]
    result = {"seeds": seeds, "recipe": first.get("recipe"),
              "finished": all(s.get("finished") for s in summaries.values()),
              "workdirs": {str(s): os.path.join(workdir, SEED_DIR.format(s)) for s in seeds}}
    if first.get("lockstep"):
        names = list(first["students"])
        result["lockstep"] = True
        result["students"] = {n: _aggregate_one({s: summaries[s]["students"][n] for s in seeds})
                              for n in names}
    else:
        result.update(_aggregate_one(summaries))
    return result


def format_mean_std(s: dict) -> str:
    """'80.10 ± 0.76' ('80.10' with one seed, '-' with none) of a stats() record."""
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["std"] is not None else f"{s['mean']:.2f}"


def format_table(result: dict) -> str:
    rows = result["students"] if result.get("lockstep") else {"": result}
    lines = [f"{len(result['seeds'])} seeds ({', '.join(map(str, result['seeds']))}): "
             "top-1 (%) mean ± sample std",
             f"{'student':<14} {'method':<8} {'best top-1':>15} {'last top-1':>15} "
             f"{'published':>9}"]
    for name, r in rows.items():
        pub = "-" if r["published_top1"] is None else f"{r['published_top1']:.2f}"
        best, last = format_mean_std(r["best_top1"]), format_mean_std(r["last_top1"])
        lines.append(f"{name or r['student']:<14} {r['method']:<8} {best:>15} {last:>15} "
                     f"{pub:>9}")
    return "\n".join(lines)


def run_seeds(config, workdir: str, train_fn=None, seeds: Optional[Sequence[int]] = None) -> dict:
    """Runs `config` once per seed of config.seeds; writes and prints the mean ± std summary
    (process 0 only: every process trains, only process 0 writes and prints, as a run does)."""
    train_fn = train_fn or trainer.train_and_evaluate
    seeds = list(seeds if seeds is not None else parse_seeds(config.seeds))
    workdir = os.path.abspath(workdir)
    summaries = {}
    first = jax.process_index() == 0
    # The signal handlers span all seeds: a stop that arrives after a seed's last step (its
    # last evaluation, checkpoint or export) ends the run before the next seed.
    with stops.stop_signals() as stop, workdir_lock.hold(workdir):
        for i, seed in enumerate(seeds, 1):
            if i > 1:
                stops.check_between_runs(stop, f"seed {seeds[i - 2]} finished",
                                         f"seed {seed}")
            if first:
                print(f"\n=== seed {seed} ({i} of {len(seeds)}) ===", flush=True)
            c = copy.deepcopy(config)
            c.seeds, c.seed = "", seed
            summaries[seed] = train_fn(c, os.path.join(workdir, SEED_DIR.format(seed)))
    result = aggregate(summaries, workdir)
    if first:
        summary_lib.write_json(os.path.join(workdir, summary_lib.SUMMARY_FILE), result)
        print("\n" + format_table(result), flush=True)
    return result
