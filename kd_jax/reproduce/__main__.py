"""python -m kd_jax.reproduce TABLE --workdir DIR: a published table, every pair, method and
seed, trained and printed beside the published numbers.

    python -m kd_jax.reproduce --list                    # the tables, sources and sizes
    python -m kd_jax.reproduce sdd_cifar100 --dry-run    # the plan, its time and disk
    python -m kd_jax.reproduce sdd_cifar100 --workdir runs/sdd_cifar100 --seeds 0,1,2
    python -m kd_jax.reproduce sdd_cifar100 --workdir runs/sdd_cifar100 --report

Running it again (on this or another machine sharing DIR) continues where it stopped: each
run is claimed through its workdir's lock, finished runs are skipped. The table is printed at
the end and written to DIR/TABLE.md and DIR/TABLE.csv; `--report` only gathers and prints.
Mistakes end in one `kd_jax: error: ...` line and exit code 2; SIGTERM / Ctrl-C in 143 / 130
after the current run saved its step (kd_jax.main's conventions). See docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from kd_jax import cli, errors
from kd_jax import main as main_lib   # also sets the persistent compilation cache
from kd_jax.reference import published

PROG = "python -m kd_jax.reproduce"
# Config keys a reproduction sets itself (the flag to use instead).
OWN_KEYS = {"seed": "--seeds", "seeds": "--seeds", "teacher": "--teacher NAME=PATH",
            "method": "none: the reference recipes are the point",
            "students": "none: the reference recipes are the point"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one `kd_jax: error:` line, as kd_jax.main's
        raise cli.UsageError(f"{message} (see {PROG} --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Trains every pair, method and seed of a published "
                                       "table and prints ours beside the published numbers.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Any other run setting: --config.KEY=VALUE (e.g. "
                       "--config.dataset.data_dir=DIR, --config.num_epochs=1), applied to "
                       "every run.")
    p.add_argument("table", nargs="?", help="a published table (--list names them)")
    p.add_argument("--list", action="store_true", help="the tables, sources and sizes")
    p.add_argument("--workdir", help="the plan's directory (required unless --dry-run)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of every cell (default 0,1,2)")
    p.add_argument("--pairs", help="TEACHER-STUDENT,... (default: every pair of the table)")
    p.add_argument("--methods", help="method keys (default: every column; 'ce': the "
                                     "students trained alone)")
    p.add_argument("--teacher", action="append", default=[], metavar="NAME=PATH",
                   help="a teacher checkpoint (converted directory or .pth) instead of the "
                        "published one (repeatable; needed where none is published: CUB)")
    p.add_argument("--lockstep", default="auto", choices=("auto", "always", "never"),
                   help="how a pair's students train: auto (in lockstep where the step fits "
                        "the device's memory), always, never (one run each)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan with its time and disk, train nothing")
    p.add_argument("--no-measure", action="store_true",
                   help="--dry-run without measuring a step of each pair (no time here)")
    p.add_argument("--steps", type=int, default=2,
                   help="--dry-run: steps timed per pair, after the compiling one (default 2)")
    p.add_argument("--measure-batch", type=int, default=0,
                   help="--dry-run: time steps at most this batch, scaled up to the run's "
                        "(default 64)")
    p.add_argument("--report", action="store_true",
                   help="print and write the table from DIR, train nothing")
    return p


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(arguments, the --config.KEY=VALUE overrides)."""
    args, rest = parser().parse_known_args(list(argv))
    overrides = []
    for arg in rest:
        key = cli.override_key(arg)
        if not key:
            raise cli.UsageError(f"unrecognized argument {arg!r} (see {PROG} --help)")
        if "=" not in arg and not arg.lstrip("-").startswith("noconfig."):
            raise cli.UsageError(f"{arg}: give overrides as --config.KEY=VALUE")
        top = key.split(".")[0]
        if top in OWN_KEYS:
            raise cli.UsageError(f"{arg}: {PROG} sets config.{top} itself (instead: "
                                 f"{OWN_KEYS[top]})")
        overrides.append(arg)
    if args.steps < 1:
        raise cli.UsageError(f"--steps {args.steps}: must be at least 1")
    return args, overrides


def list_text() -> str:
    rows = [("table", "pairs x methods", "dataset", "source")]
    for t in published.TABLES.values():
        rows.append((t.name, f"{len(t.pairs)} x {len(t.columns)} (+ alone)", t.dataset,
                     t.source))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths)), r[3]]) for r in rows]
    return "\n".join(lines + ["(+ alone: the students trained alone, the tables' vanilla rows, "
                              "are a column too)"])


def _teacher_paths(values: Sequence[str]) -> dict[str, str]:
    paths = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise cli.UsageError(f"--teacher {value}: expected NAME=PATH, e.g. "
                                 "--teacher resnet32x4=teachers/resnet32x4")
        paths[name] = os.path.abspath(os.path.expanduser(path))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, overrides = parse(argv)
    except cli.UsageError as e:
        errors.exit_with_error(e)
    if args.list:
        print(list_text())
        return
    if not args.table:
        errors.exit_with_error(f"give a TABLE ({PROG} --list names them)")
    if not (args.workdir or args.dry_run):
        errors.exit_with_error("missing --workdir: the directory of the plan's runs (running "
                            "again with the same one continues), or --dry-run")
    main_lib.quiet_logging()
    current = {}
    with main_lib.exits_on_failure(lambda: current.get("config")):
        _run(args, overrides, current)


def _train(plan, root: str, lockstep: str, current: dict) -> list[str]:
    """Runs the plan (its teachers checked first); returns the runs in use elsewhere."""
    from kd_jax.reproduce import plan as plan_lib, runner

    missing = plan_lib.missing_teachers(plan)
    if missing:
        raise cli.UsageError("the plan needs teachers that are not here: " + "; ".join(
            f"{name}: {todo}" for name, todo in missing.items()))

    def starting(run):
        current["config"] = run.config

    return runner.run_plan(plan, root, lockstep, starting=starting)


def _run(args, overrides: list[str], current: dict) -> None:
    # JAX and the trainer: only past the argument checks (which answer in about a second).
    from kd_jax.reproduce import dry_run, plan as plan_lib, report, runner
    from kd_jax.train.config_validation import parse_seeds

    try:
        table = published.get_table(args.table)
        keys = plan_lib.select_keys(table, args.methods)
        pairs = plan_lib.select_pairs(table, args.pairs)
    except ValueError as e:
        raise cli.UsageError(e) from None
    seeds = parse_seeds(args.seeds)
    if not seeds:
        raise cli.UsageError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
    if any(cli.override_key(o) == "multihost" and o.split("=", 1)[-1].lower() in ("true", "1")
           for o in overrides):
        # Before anything touches a device (the plan's validation counts them), as
        # kd_jax.main does for --config.multihost=True.
        from kd_jax.train import multihost
        multihost.initialize()

    def customize(c):
        if not overrides:
            return c
        return cli.apply_overrides(c, overrides, f"{table.name} (--config overrides)", PROG)[0]

    plan = plan_lib.make_plan(table, seeds, pairs=pairs, keys=keys,
                              teacher_paths=_teacher_paths(args.teacher),
                              customize=customize, overrides=overrides)
    current["config"] = plan.groups[0].lockstep_config
    root = os.path.abspath(args.workdir) if args.workdir else None
    try:
        if root and os.path.isdir(root):   # a directory of another plan is refused at once
            runner.check_plan_file(plan, root, create=False)
        if args.dry_run:
            print(dry_run.describe(plan, root,
                                   measure_steps=0 if args.no_measure else args.steps,
                                   max_batch=args.measure_batch or dry_run.measure.MAX_BATCH,
                                   choice=args.lockstep), flush=True)
            return
        if args.report and not os.path.isdir(root):
            raise cli.UsageError(f"--workdir {root}: no such directory (nothing ran there)")
        busy = [] if args.report else _train(plan, root, args.lockstep, current)
    except runner.PlanError as e:
        raise cli.UsageError(e) from None
    import jax
    if jax.process_index() != 0:
        return
    cells = report.gather(plan, root)
    print("\n" + report.text(plan, cells), flush=True)
    md, csv_path = report.write(plan, cells, root)
    print(f"written: {md}, {csv_path}", flush=True)
    if busy:
        print(f"note: {len(busy)} run(s) were in use by another process ({', '.join(busy)}); "
              "run the same command again once they end to print them", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:   # as kd_jax.main ends: a failed save's threads do not hold it
        errors.exit_now(e.code)
