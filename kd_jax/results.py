"""Collects the results of several workdirs into one table (markdown and CSV).

    python -m kd_jax.results runs/kd runs/dkd runs/sdd [--csv results.csv] [--markdown results.md]

Each workdir is a run (solo or lockstep) or a seeds workdir (`--config.seeds=...`); one row per
student: n seeds, best and last top-1 as mean ± sample std, the published top-1, and how far
the mean is from it: the difference, and the difference in units of the std ("-" with one
seed, where there is no spread to measure it by).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys

from kd_jax import errors
from kd_jax.train import summary as summary_lib
from kd_jax.train.seeds import format_mean_std, stats
from kd_jax.train.summary import format_or_dash

COLUMNS = ("run", "method", "teacher", "student", "dataset", "n", "best_mean", "best_std",
           "last_mean", "last_std", "published", "diff", "diff_in_std", "finished")
UNFINISHED = " (unfinished)"   # after the run's name: stopped, or a seed still missing


def _row(run: str, r: dict, finished: bool) -> dict:
    best = r["best_top1"] if isinstance(r["best_top1"], dict) else stats([r["best_top1"]])
    last = r["last_top1"] if isinstance(r["last_top1"], dict) else stats([r["last_top1"]])
    pub = r.get("published_top1")
    diff = best["mean"] - pub if best["mean"] is not None and pub is not None else None
    return {"run": run, "method": r["method"], "teacher": r.get("teacher") or "",
            "student": r["student"], "dataset": r["dataset"], "n": best["n"],
            "best_mean": best["mean"], "best_std": best["std"], "last_mean": last["mean"],
            "last_std": last["std"], "published": pub, "diff": diff,
            "diff_in_std": diff / best["std"] if diff is not None and best["std"] else None,
            "finished": finished}


def rows_of(workdir: str) -> list[dict]:
    """The table rows of one workdir's summary.json."""
    path = os.path.join(workdir, summary_lib.SUMMARY_FILE)
    summary = summary_lib.read_json(path)   # BrokenJSONError names a truncated one
    if summary is None:
        raise FileNotFoundError(f"{path}: no summary (has the run finished?)")
    run = os.path.basename(os.path.normpath(workdir))
    finished = bool(summary.get("finished", True))
    if summary.get("lockstep"):
        return [_row(f"{run}/{name}", r, finished) for name, r in summary["students"].items()]
    return [_row(run, summary, finished)]


def to_markdown(rows: list[dict]) -> str:
    head = ("| run | method | teacher -> student | dataset | n | best top-1 | last top-1 | "
            "published | diff | diff / std |")
    lines = [head, "|" + "---|" * 10]
    pm = lambda m, s: format_mean_std({"mean": m, "std": s})  # noqa: E731
    show = format_or_dash
    for r in rows:
        name = r["run"] + ("" if r["finished"] else UNFINISHED)
        lines.append(f"| {name} | {r['method']} | {r['teacher'] or '-'} -> {r['student']} | "
                     f"{r['dataset']} | {r['n']} | {pm(r['best_mean'], r['best_std'])} | "
                     f"{pm(r['last_mean'], r['last_std'])} | {show(r['published'])} | "
                     f"{show(r['diff'], '{:+.2f}')} | {show(r['diff_in_std'], '{:+.1f}')} |")
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@errors.command()   # a table that cannot be written: one line, exit 2
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd_jax.results", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("workdirs", nargs="+", help="run or seeds workdirs (with a summary.json)")
    parser.add_argument("--csv", default=None, help="also write the table as CSV to this file")
    parser.add_argument("--markdown", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    try:
        rows = [row for w in args.workdirs for row in rows_of(w)]
    except (FileNotFoundError, summary_lib.BrokenJSONError) as e:
        print(f"kd_jax.results: error: {e}", file=sys.stderr)
        return 2
    table = to_markdown(rows)
    print(table)
    unfinished = [r["run"] for r in rows if not r["finished"]]
    if unfinished:
        print(f"note: not finished (stopped, or seeds missing): {', '.join(unfinished)}; "
              "their numbers are those reached so far", file=sys.stderr)
    if args.markdown:
        _write(args.markdown, table + "\n")
    if args.csv:
        _write(args.csv, to_csv(rows))
    return 0


def _write(path: str, text: str) -> None:
    """`text` to `path` (its directory created), atomically: an earlier table stays whole
    if the write fails."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    summary_lib.write_text(path, text)


if __name__ == "__main__":
    errors.exit_now(main())
