"""CI check: a quickstart run reached the verdict README.md shows.

    python .ci/check_verdict.py WORKDIR [--readme README.md]

Reads WORKDIR/quickstart_summary.json (written by `python -m kd_jax.main --config
quickstart.py --workdir WORKDIR`), prints its table and machine, and compares each method's
verdict with the table between README.md's quickstart-output markers. Exit 0: the same
verdict; 1: a method's verdict differs, is missing or is extra; 2: no summary or no table.
.ci/run runs it after the quickstart on every CI machine. It parses the README, so it lives
here, outside the library (the wheel does not ship it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from kd_jax.train import pipeline
from kd_jax.train import summary as summary_lib

README_MARKERS = ("<!-- quickstart-output -->", "<!-- /quickstart-output -->")
_ROW = re.compile(r"^(?P<label>\S.*?)\s{2,}(?P<best>\d+\.\d+(?: ± \d+\.\d+)?)\s+"
                  r"(?P<last>\d+\.\d+(?: ± \d+\.\d+)?)"
                  r"(?:\s+(?P<vs>[+-]\d+\.\d+ ± \d+\.\d+)\s+(?P<verdict>\S.*))?$")


def parse_table(text: str) -> dict:
    """The printed table -> {"rows": {label: {best, last, vs, verdict}}, "verdict": line}."""
    rows, line_verdict = {}, None
    for line in text.splitlines():
        if line.startswith("verdict: "):
            line_verdict = line.strip()
        elif (m := _ROW.match(line.rstrip())) is not None:
            rows[m["label"]] = {k: m[k] for k in ("best", "last", "vs", "verdict")}
    if not rows or line_verdict is None:
        raise ValueError("no quickstart table (rows and a 'verdict:' line) in the text")
    return {"rows": rows, "verdict": line_verdict}


def readme_table(readme: str) -> dict:
    """parse_table of the block between README_MARKERS of the README at path `readme`."""
    with open(readme) as fh:
        text = fh.read()
    start, end = (text.find(m) for m in README_MARKERS)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no {README_MARKERS[0]} ... {README_MARKERS[1]} block")
    return parse_table(text[start + len(README_MARKERS[0]):end])


def compare_verdicts(expected: dict, summary: dict) -> list[str]:
    """The differences between a parsed table's verdicts and a quickstart summary's: one
    line per method whose verdict differs, is missing, or is extra (empty: the same)."""
    got = {pipeline.label_of(summary, name): v["verdict"]
           for name, v in summary["verdict"].items()}
    want = {label: row["verdict"] for label, row in expected["rows"].items() if row["verdict"]}
    problems = []
    for label in sorted(set(want) | set(got)):
        if label not in got:
            problems.append(f"{label}: the README's table has it ({want[label]!r}); this run "
                            "did not train it")
        elif label not in want:
            problems.append(f"{label}: not in the README's table; this run: {got[label]!r}")
        elif want[label] != got[label]:
            problems.append(f"{label}: the README says {want[label]!r}; this run: "
                            f"{got[label]!r}")
    return problems


def check_verdict(workdir: str, readme: str = "README.md") -> int:
    """Prints whether the quickstart run in `workdir` reached the README's verdict; 0 if so."""
    summary = summary_lib.read_json(os.path.join(workdir, "quickstart_summary.json"))
    if summary is None:
        print(f"{workdir}: no quickstart_summary.json (run the quickstart first)")
        return 2
    try:
        expected = readme_table(readme)
    except (OSError, ValueError) as e:
        print(f"cannot read the expected verdict: {e}")
        return 2
    print(pipeline.format_table(summary["teacher"], summary, summary["verdict"],
                                summary.get("machine")))
    problems = compare_verdicts(expected, summary)
    if problems:
        print(f"\nthe verdict DIFFERS from {readme}'s:\n  " + "\n  ".join(problems))
        return 1
    print(f"\nsame verdict as {readme}: {expected['verdict'][len('verdict: '):]}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python .ci/check_verdict.py",
        description="Compare a quickstart run's verdict with the one README.md shows (exit 1 "
                    "if any method's verdict differs, 2 if either is missing).")
    parser.add_argument("workdir", metavar="WORKDIR",
                        help="the quickstart's workdir (holding quickstart_summary.json)")
    parser.add_argument("--readme", default="README.md",
                        help="the README whose quickstart-output block holds the expected "
                             "table (default: %(default)s)")
    args = parser.parse_args(argv)
    return check_verdict(args.workdir, args.readme)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
