"""A plan's results beside the published table: printed, Markdown and CSV.

Rows are the table's pairs, columns its methods (the students alone first); each cell is

    ours mean ± std (n) | published | ours - published

over the seeds whose run finished (n; "n/N" while N were planned and some are unfinished
or not started), for the best and for the last evaluation (the DKD / SDD tables report the
best epoch; RepDistiller the last). Each student's numbers are read with kd_jax.results
(`rows_of` on its own directory, whether it trained in lockstep or alone) and combined over
seeds with kd_jax.train.seeds (`stats`: sample std; `format_mean_std`). Values that no
reference code settles carry kd_jax.reference's stars (`table.METHOD_NOTES`,
`table.CLIP_NOTES`, a pair's inferred SDD scale sets), with the notes under the table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Optional

from kd_jax import methods, results
from kd_jax.reference import table as ref_table
from kd_jax.reproduce.plan import ALONE, Pair, Plan
from kd_jax.train import summary as summary_lib
from kd_jax.train.seeds import format_mean_std, stats
from kd_jax.train.summary import format_or_dash

METRICS = ("best", "last")


@dataclasses.dataclass
class Cell:
    """One (pair, method key) of a plan, over its seeds."""

    pair: Pair
    key: str
    published: Optional[float]
    finished: dict = dataclasses.field(default_factory=dict)     # seed -> results row
    unfinished: dict = dataclasses.field(default_factory=dict)   # seed -> progress
    missing: list = dataclasses.field(default_factory=list)      # seeds not started

    def stats(self, metric: str) -> dict:
        return stats([r[f"{metric}_mean"] for r in self.finished.values()])

    def planned(self) -> int:
        return len(self.finished) + len(self.unfinished) + len(self.missing)


def _progress(directory: str, steps: int) -> str:
    try:
        summary = summary_lib.read_json(os.path.join(directory, summary_lib.SUMMARY_FILE))
    except summary_lib.BrokenJSONError:
        return "summary unreadable"
    if summary is None:
        return "started"
    return f"step {summary.get('steps')} of {steps}"


def gather(plan: Plan, root: str) -> dict[tuple[Pair, str], Cell]:
    """Every cell of `plan` from the summaries under `root`."""
    cells = {(p, k): Cell(p, k, plan.table.top1(k, p)) for p in plan.pairs for k in plan.keys}
    for group in plan.groups:
        for key in group.keys:
            cell, directory = cells[(group.pair, key)], os.path.join(root,
                                                                     group.student_dir(key))
            try:
                (row,) = results.rows_of(directory)
            except FileNotFoundError:
                if os.path.isdir(directory):
                    cell.unfinished[group.seed] = "started"
                else:
                    cell.missing.append(group.seed)
                continue
            except summary_lib.BrokenJSONError:
                cell.unfinished[group.seed] = "summary unreadable"
                continue
            if row["finished"]:
                cell.finished[group.seed] = row
            else:
                cell.unfinished[group.seed] = _progress(directory, group.steps)
    return cells


# --- provenance stars ------------------------------------------------------------------------

def column_note(plan: Plan, key: str) -> str:
    method = methods.method_keys()[key][0] if key != ALONE else ALONE
    notes = [ref_table.METHOD_NOTES.get((key, plan.table.dataset), ""),
             ref_table.CLIP_NOTES.get(method, "")]
    return "; ".join(n for n in notes if n)


def cell_note(plan: Plan, pair: Pair, key: str) -> str:
    """A pair's inferred setting of this column (an SDD scale set no launch line gives)."""
    if not key.startswith("sd_"):
        return ""
    p = ref_table.pair(plan.table.dataset, *pair)
    return p.note if key[3:] in p.inferred else ""


def label(plan: Plan, key: str) -> str:
    name = "student alone" if key == ALONE else methods.label_of(key)
    return name + ("*" if column_note(plan, key) else "")


# --- the tables ------------------------------------------------------------------------------

def cell_text(cell: Cell, metric: str, sep: str = " | ") -> str:
    """'76.12 ± 0.20 (3) | 76.30 | -0.18' (n/N while seeds are missing)."""
    s = cell.stats(metric)
    planned = cell.planned()
    n = f"{s['n']}" if s["n"] == planned else f"{s['n']}/{planned}"
    diff = s["mean"] - cell.published if s["n"] and cell.published is not None else None
    return sep.join([f"{format_mean_std(s)} ({n})", format_or_dash(cell.published),
                     format_or_dash(diff, "{:+.2f}")])


def _grid(plan: Plan, cells: dict, metric: str, sep: str) -> list[list[str]]:
    rows = [["teacher -> student"] + [label(plan, k) for k in plan.keys]]
    for pair in plan.pairs:
        rows.append([f"{pair[0]} -> {pair[1]}"] + [
            cell_text(cells[(pair, k)], metric, sep) + ("*" if cell_note(plan, pair, k) else "")
            for k in plan.keys])
    return rows


def heading(plan: Plan, metric: str) -> str:
    return (f"{plan.table.name}: {plan.table.source}; {metric} top-1 (%), "
            "ours mean ± std (seeds) | published | ours - published")


def aligned(rows: list[list[str]], sep: str = "  ") -> list[str]:
    """Rows of cells as fixed-width lines (each column as wide as its widest cell), the
    header (first row) underlined."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [sep.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def text_table(plan: Plan, cells: dict, metric: str) -> str:
    """The table as fixed-width text (columns three spaces apart)."""
    return heading(plan, metric) + "\n" + "\n".join(
        aligned(_grid(plan, cells, metric, " | "), "   "))


def markdown_table(plan: Plan, cells: dict, metric: str) -> str:
    rows = _grid(plan, cells, metric, r" \| ")
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


def notes(plan: Plan, cells: dict) -> list[str]:
    """The lines under a table: what n means, the stars, and the runs not finished."""
    out = [f"n: seeds whose run finished (n/N: of the N planned, {', '.join(map(str, plan.seeds))}"
           "; the others are listed below); std: sample std (ddof 1)."]
    if plan.table.note:
        out.append(f"published: {plan.table.note}.")
    for key in plan.keys:
        if column_note(plan, key):
            out.append(f"* {label(plan, key)[:-1]}: {column_note(plan, key)}.")
    for pair in plan.pairs:
        for key in plan.keys:
            if cell_note(plan, pair, key):
                out.append(f"* {pair[0]} -> {pair[1]} {methods.label_of(key)}: "
                           f"{cell_note(plan, pair, key)}.")
    counts = {"finished": 0, "unfinished": 0, "not started": 0}
    for cell in cells.values():
        counts["finished"] += len(cell.finished)
        counts["unfinished"] += len(cell.unfinished)
        counts["not started"] += len(cell.missing)
        for seed, progress in sorted(cell.unfinished.items()):
            out.append(f"unfinished: {cell.pair[0]}-{cell.pair[1]} seed {seed} "
                       f"{cell.key} ({progress})")
    out.append(f"runs: {counts['finished']} of {plan.num_runs} finished, "
               f"{counts['unfinished']} unfinished, {counts['not started']} not started.")
    return out


def text(plan: Plan, cells: dict) -> str:
    """What the command prints: the best and the last table, then the notes."""
    return "\n\n".join([text_table(plan, cells, m) for m in METRICS]
                       + ["\n".join(notes(plan, cells))])


def markdown(plan: Plan, cells: dict) -> str:
    parts = [f"# {plan.table.name}: ours beside the published numbers", "",
             f"Source: {plan.table.source}. Seeds: {', '.join(map(str, plan.seeds))}. Each "
             r"cell: ours mean ± std (seeds) \| published \| ours - published.", ""]
    for metric in METRICS:
        parts += [f"## {metric.capitalize()} top-1 (%)", "", markdown_table(plan, cells, metric),
                  ""]
    parts += ["\n".join(f"- {line}" for line in notes(plan, cells)), ""]
    return "\n".join(parts)


CSV_COLUMNS = ("table", "dataset", "teacher", "student", "method", "seeds_planned",
               "n_finished", "n_unfinished", "n_not_started", "best_mean", "best_std",
               "last_mean", "last_std", "published", "best_minus_published",
               "last_minus_published", "note")


def to_csv(plan: Plan, cells: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for (pair, key), cell in cells.items():
        best, last = cell.stats("best"), cell.stats("last")
        diff = lambda s: (s["mean"] - cell.published  # noqa: E731
                          if s["n"] and cell.published is not None else None)
        note = "; ".join(n for n in (column_note(plan, key), cell_note(plan, pair, key)) if n)
        writer.writerow({
            "table": plan.table.name, "dataset": plan.table.dataset, "teacher": pair[0],
            "student": pair[1], "method": key, "seeds_planned": cell.planned(),
            "n_finished": len(cell.finished), "n_unfinished": len(cell.unfinished),
            "n_not_started": len(cell.missing), "best_mean": best["mean"],
            "best_std": best["std"], "last_mean": last["mean"], "last_std": last["std"],
            "published": cell.published, "best_minus_published": diff(best),
            "last_minus_published": diff(last), "note": note})
    return out.getvalue()


def write(plan: Plan, cells: dict, root: str) -> tuple[str, str]:
    """DIR/<table>.md and DIR/<table>.csv; returns their paths."""
    paths = (os.path.join(root, f"{plan.table.name}.md"),
             os.path.join(root, f"{plan.table.name}.csv"))
    for path, body in zip(paths, (markdown(plan, cells), to_csv(plan, cells))):
        summary_lib.write_text(path, body)   # atomic: a failed write keeps the previous table
    return paths
