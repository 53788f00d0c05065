"""Writes the generated blocks of README.md and docs/*.md from the code, so they cannot drift.

    python docs/generate.py           # rewrite every generated block in place
    python docs/generate.py --check   # exit 1, naming each stale block, if any is stale

A generated block is the text between `<!-- generated: NAME -->` and
`<!-- /generated: NAME -->`; NAME is one of BLOCKS below. tests/test_docs.py fails when a
block differs from what its function returns now. Outside the package (it reads the shipped
config files, kd_jax.recipes and kd_jax.reference); not shipped in the wheel.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import glob
import io
import os
import re
import sys
from typing import Callable, Iterable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:   # `python docs/generate.py` from a checkout
    sys.path.insert(0, ROOT)

from kd_jax import cli, methods  # noqa: E402
from kd_jax.data import catalog  # noqa: E402
from kd_jax.recipes import builder, keys  # noqa: E402
from kd_jax.reference import names, table  # noqa: E402

BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- /generated: \2 -->)", re.S)
# The config file of each dataset's methods (kd_jax/configs/<prefix><method>.py).
CONFIG_PREFIX = {catalog.CIFAR100: "cifar_", catalog.CUB: "cub_", catalog.IMAGENET: "imagenet_"}
DATASET_LABEL = {catalog.CIFAR100: "CIFAR-100", catalog.CUB: "CUB-200",
                 catalog.IMAGENET: "ImageNet"}
# The trainer config whose values the key tables show as the default.
DEFAULT_CONFIG = "cifar_kd.py"
# Methods no reference repository implements (reimplementations): left out of the mapping.
NO_REFERENCE_CODE = ("clkd", "msdcrd")


def doc_files() -> list[str]:
    """README.md and every docs/*.md (absolute paths)."""
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs",
                                                                              "*.md")))


def _cell(text: str) -> str:
    """Text inside a markdown table cell: a literal | would end the cell."""
    return text.replace("|", "\\|")


def _md(value) -> str:
    return _cell("`" + (repr(value) if isinstance(value, str) else str(value)) + "`")


def _flat(config, prefix: str = "") -> Iterable[tuple[str, object]]:
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys") and hasattr(value, "get_type"):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def shipped_configs() -> dict[str, object]:
    """{file name: the config its get_config() builds} for every shipped config."""
    return {os.path.basename(f): cli.load_config(os.path.basename(f))
            for f in cli.config_files()}


def _summary(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        doc = ast.get_docstring(ast.parse(fh.read())) or ""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())


# --- blocks --------------------------------------------------------------------------------

def recipe_tables() -> str:
    """`python -m kd_jax.recipes`: the effective recipe values."""
    from kd_jax.recipes import __main__ as recipes_main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        recipes_main.main()
    return out.getvalue().strip()


def config_files() -> str:
    """Every shipped config: what it trains, its argument and the default argument."""
    lines = ["| config | what it runs | argument (`--config FILE:ARG`) | default |",
             "|---|---|---|---|"]
    for name, config in shipped_configs().items():
        if "pipeline" in config:
            arg, default = "none", "-"
        elif config.get("students"):
            arg, default = "`PAIR,KEY,KEY...` (students by method key)", f"`{config.recipe}`"
        elif config.method.name == "ce":
            arg = "the model" if config.recipe != "quickstart_teacher" else "none"
            default = f"`{config.recipe}`" if arg != "none" else "-"
        elif config.method.name == "sdd":
            arg, default = "`TEACHER-STUDENT[,BASE]` (base kd, dkd or nkd)", \
                f"`{config.recipe},{config.method.base}`"
        else:
            arg, default = "`TEACHER-STUDENT`", f"`{config.recipe}`"
        summary = _cell(_summary(os.path.join(cli.CONFIG_DIR, name)))
        lines.append(f"| `{name}` | {summary} | {arg} | {default} |")
    return "\n".join(lines)


def _values_by_config(configs: dict, key: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, config in configs.items():
        flat = dict(_flat(config))
        if key in flat:
            found.setdefault(_md(flat[key]), []).append(name)
    return found


def _families(files: list[str], every: list[str]) -> str:
    """'cub_dkd.py, cub_kd.py, ...' -> 'cub_*' where a whole family shares the value."""
    out = []
    for prefix in ("cifar_", "cub_", "imagenet_", "quickstart"):
        family = [f for f in every if f.startswith(prefix)]
        mine = [f for f in files if f.startswith(prefix)]
        if not mine:
            continue
        out += [prefix + "*"] if len(mine) == len(family) > 1 else mine
    return ", ".join(out)


def run_keys() -> str:
    """Every trainer key (not the method's): its value in DEFAULT_CONFIG, where other shipped
    configs differ, and its meaning (kd_jax.recipes.keys.RUN_KEYS)."""
    configs = {n: c for n, c in shipped_configs().items() if "pipeline" not in c}
    every = list(configs)
    lines = [f"| key | default ({DEFAULT_CONFIG}) | other shipped configs | meaning |",
             "|---|---|---|---|"]
    order = [k for k, _ in _flat(configs[DEFAULT_CONFIG]) if not k.startswith("method.")]
    order += ["method.name", "students"]
    for key in order:
        by_value = _values_by_config(configs, key)
        default = next((v for v, files in by_value.items() if DEFAULT_CONFIG in files), "-")
        others = "; ".join(f"{v}: {_families(files, every)}" for v, files in by_value.items()
                           if v != default)
        if key == "students":
            default, others = "-", "cifar_lockstep.py (one group per student)"
        lines.append(f"| `{key}` | {default} | {others} | {_cell(keys.RUN_KEYS[key])} |")
    return "\n".join(lines)


def method_keys() -> str:
    """method.<key> of every method: its value in the method's CIFAR-100 config (default
    pair) and its meaning."""
    lines = ["| method | config (default pair) | key | value | meaning |", "|---|---|---|---|---|"]
    arguments = [("kd", "cifar_kd.py"), ("dkd", "cifar_dkd.py"), ("nkd", "cifar_nkd.py"),
                 ("sdd", "cifar_sdd.py"), ("sdd", "cifar_sdd.py:resnet32x4-ShuffleV1,kd"),
                 ("sdd", "cifar_sdd.py:resnet32x4-ShuffleV1,nkd"), ("clkd", "cifar_clkd.py"),
                 ("msdcrd", "cifar_msdcrd.py")]
    for method, arg in arguments:
        config = cli.load_config(arg)
        label = methods.get(method).label(config.method)
        for key, value in config.method.items():
            if key == "name":
                continue
            lines.append(f"| {label} | `{arg}` | `{key}` | {_md(value)} | "
                         f"{_cell(keys.describe_method_key(method, key))} |")
    return "\n".join(lines)


def student_keys() -> str:
    """students.<name>.* of a lockstep config."""
    lines = ["| key | meaning |", "|---|---|",
             "| `students.<name>.method.<key>` | the student's method block, as `method.<key>` "
             "above |"]
    for key, meaning in keys.STUDENT_KEYS.items():
        lines.append(f"| `students.<name>.{key}` | {_cell(meaning)} |")
    return "\n".join(lines)


def pipeline_keys() -> str:
    """The quickstart pipeline's keys with their values and meanings."""
    config = cli.load_config("quickstart.py")
    asset = os.path.dirname(os.path.dirname(cli.CONFIG_DIR))
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, value in _flat(config):
        if isinstance(value, str) and value.startswith(asset + os.sep):
            value = os.path.relpath(value, asset)   # no machine-specific path
        meaning = keys.PIPELINE_KEYS.get(key) or keys.RUN_KEYS[key]
        lines.append(f"| `{key}` | {_md(value)} | {_cell(meaning)} |")
    return "\n".join(lines)


def kd_jax_command(dataset: str, method_key: str, teacher: str, student: str) -> str:
    """The kd_jax command that trains `method_key` on the pair with its reference recipe."""
    method, variant = methods.method_keys()[method_key]
    arg = f"{teacher}-{student}" + (f",{variant}" if variant else "")
    workdir = f"runs/{method_key}_{teacher}_{student}"
    return (f"python -m kd_jax.main --config {CONFIG_PREFIX[dataset]}{method}.py:{arg} "
            f"--workdir {workdir}")


def reference_rows() -> list[tuple[str, str, str, str, list[names.Command]]]:
    """(dataset, teacher, student, method key, reference commands) for every pair of the
    reference table and every method key its dataset's configs offer."""
    from kd_jax.recipes import __main__ as recipes_main
    rows = []
    for dataset in CONFIG_PREFIX:
        for teacher, student in table.pairs(dataset):
            for key in recipes_main.OFFERED[dataset]:
                if key in NO_REFERENCE_CODE:
                    continue
                method, variant = methods.method_keys()[key]
                if (teacher, student) not in builder.pairs(dataset, method, variant):
                    continue
                rows.append((dataset, teacher, student, key,
                             names.reference_commands(dataset, key, teacher, student)))
    return rows


def reference_names() -> str:
    """The reference repositories' commands and the kd_jax command of the same run."""
    parts = []
    current = None
    for dataset, teacher, student, key, commands in reference_rows():
        if dataset != current:
            current = dataset
            parts += ["", f"### {DATASET_LABEL[dataset]}", "",
                      "| pair | method | reference command | kd_jax command |",
                      "|---|---|---|---|"]
        ref = "<br>".join(f"{c.repo}: `{c.command}`" + (f" ({c.note})" if c.note else "")
                          for c in commands) or "none: no reference run of this pair"
        parts.append(f"| {teacher} -> {student} | {methods.label_of(key)} | {ref} | "
                     f"`{kd_jax_command(dataset, key, teacher, student)}` |")
    parts += ["", "### CIFAR-100 teachers", "",
              "| model | reference command | kd_jax command |", "|---|---|---|"]
    for teacher in sorted({t for t, _ in table.pairs(catalog.CIFAR100)}, key=str.lower):
        c = names.teacher_command(teacher)
        parts.append(f"| {teacher} | {c.repo}: `{c.command}` | `python -m kd_jax.main --config "
                     f"cifar_teacher.py:{teacher} --workdir runs/teacher_{teacher}` |")
    return "\n".join(parts).strip()


BLOCKS: dict[str, Callable[[], str]] = {
    "recipe-tables": recipe_tables,
    "config-files": config_files,
    "run-keys": run_keys,
    "method-keys": method_keys,
    "student-keys": student_keys,
    "pipeline-keys": pipeline_keys,
    "reference-names": reference_names,
}


# --- rewriting -----------------------------------------------------------------------------

def render(text: str, path: str = "") -> str:
    """`text` with every generated block replaced by its function's output."""
    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"{path}: unknown generated block {name!r}; known: "
                             + ", ".join(BLOCKS))
        return f"{match.group(1)}{BLOCKS[name]()}\n{match.group(4)}"
    return BLOCK.sub(replace, text)


def stale_blocks(path: str) -> list[str]:
    """The names of the generated blocks of `path` that differ from their output now."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return [m.group(2) for m in BLOCK.finditer(text) if m.group(2) in BLOCKS
            and m.group(3) != BLOCKS[m.group(2)]() + "\n"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report stale blocks (exit 1)")
    args = p.parse_args(argv)
    stale = []
    for path in doc_files():
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        new = render(text, path)
        if new != text:
            rel = os.path.relpath(path, ROOT)
            stale += [f"{rel}: {name}" for name in stale_blocks(path)]
            if not args.check:
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(new)
    if stale:
        print(("stale: " if args.check else "rewrote: ") + "; ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
