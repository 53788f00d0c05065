"""The user documentation (README.md, docs/*.md) against the code.

- Every shell command naming `python -m kd_jax...` is checked: the module exists, its flags
  parse (argparse: parsed, not run; `kd_jax.main`: `kd_jax.cli.parse`, which builds the
  `--config NAME[:ARG]`). Commands are found in code blocks (continuation lines joined; not
  in blocks fenced as python, json or text: fence program output as text) and in inline
  code spans; a span naming a bare module (`python -m kd_jax.teachers`) needs only the
  module. Code blocks marked `<!-- file: NAME -->` are written into the directory the
  commands are checked in first, so `--config my_method.py` resolves.
- Generated blocks (`<!-- generated: NAME -->`) equal `docs/generate.py`'s output now, and
  every config key has a description in kd_jax/recipes/keys.py.
- docs/losses.md's signatures are the functions' own (inspect.signature).
- docs/reference_names.md: each kd_jax command builds the row's pair and method.
- The "add your own" examples of docs/extending.md run (a few steps on synthetic data).
- README.md: short, the four journeys in its first 100 lines, every docs page linked.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import inspect
import io
import os
import re
import runpy
import shlex
import sys
from typing import NamedTuple

import pytest

import repo_files

ROOT = repo_files.ROOT
README = os.path.join(ROOT, "README.md")
generate = repo_files.load(os.path.join("docs", "generate.py"), "docs_generate")

# Pages other branches add (issue 30: own_data.md; the reproduce command's page): the README
# links them already. Until they land, a link to one (and a command on its line) is skipped.
PENDING_PAGES = {"docs/own_data.md", "docs/reproduce.md"}
README_MAX_LINES = 260
FENCE = re.compile(r"^\s*```(\w*)")
FILE_MARK = re.compile(r"<!-- file: ([\w.-]+) -->")
INLINE = re.compile(r"`([^`\n]+)`")
SHELL_SEPARATORS = {"&&", "||", ";", "|"}


class Command(NamedTuple):
    where: str        # "docs/x.md:12"
    argv: tuple       # (module, arg, ...)
    skip: str = ""    # why it is not checked yet ("" = checked)


def doc_paths() -> list[str]:
    return generate.doc_files()


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def _missing_links(line: str) -> list[str]:
    """The docs/*.md pages a line links to that do not exist."""
    return [p for p in re.findall(r"\((docs/[\w.-]+\.md)\)", line)
            if not os.path.exists(os.path.join(ROOT, p))]


def kd_jax_invocations(text: str) -> list[list[str]]:
    """[module, args...] of each `python -m kd_jax...` in a shell line (also inside a quoted
    argument, as in `gcloud ... --command "cd kd_jax && python -m kd_jax.main ..."`)."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:   # an unbalanced quote: not a shell line
        return []
    found = []
    for i, token in enumerate(tokens):
        if token in ("python", "python3") and tokens[i + 1:i + 2] == ["-m"] \
                and i + 2 < len(tokens) and tokens[i + 2].startswith("kd_jax"):
            args = []
            for arg in tokens[i + 3:]:
                if arg in SHELL_SEPARATORS or arg.startswith((">", "2>")):
                    break
                args.append(arg)
            found.append([tokens[i + 2]] + args)
        elif " " in token and "python -m kd_jax" in token:
            found += kd_jax_invocations(token)
    return found


def documented_commands(path: str) -> list[Command]:
    """Every `python -m kd_jax...` of a markdown file: in shell code blocks (continuation
    lines joined) and in inline code spans."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    out, fence, pending = [], None, ""
    for number, line in enumerate(lines, 1):
        where = f"{_rel(path)}:{number}"
        opened = FENCE.match(line)
        if opened and fence is None:
            fence = opened.group(1) or "sh"
            continue
        if fence is not None:
            if line.strip().startswith("```"):
                fence, pending = None, ""
                continue
            if fence in ("python", "json", "text", "ipython"):
                continue
            pending += line.rstrip("\\") + " " if line.endswith("\\") else line
            if line.endswith("\\"):
                continue
            full, pending = pending, ""
            spans = [full]
        else:
            spans = [s for s in INLINE.findall(line) if "python -m kd_jax" in s]
        missing = _missing_links(line) if fence is None else []
        for span in spans:
            for argv in kd_jax_invocations(span):
                skip = ""
                if missing and set(missing) <= PENDING_PAGES:
                    skip = (f"on a line linking {', '.join(missing)}, which lands from "
                            "another branch")
                out.append(Command(where, tuple(argv), skip))
    return out


def example_files() -> dict[str, str]:
    """{name: text} of every code block marked `<!-- file: NAME -->` in the docs."""
    found = {}
    for path in doc_paths():
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for m in re.finditer(r"<!-- file: ([\w.-]+) -->\n```\w*\n(.*?)```", text, re.S):
            assert m.group(1) not in found, f"{_rel(path)}: example file {m.group(1)} twice"
            found[m.group(1)] = m.group(2)
    return found


ALL_COMMANDS = [c for p in doc_paths() for c in documented_commands(p)]


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("doc_examples")
    for name, text in example_files().items():
        (directory / name).write_text(text)
    return directory


@contextlib.contextmanager
def isolated_registries():
    """Config files may register methods or models: undo it after each check, so that the
    next load of the same file registers again."""
    from kd_jax.methods import registry as method_registry
    from kd_jax.models import registry as model_registry
    saved = (dict(method_registry._SPECS), dict(model_registry._REGISTRY),
             set(model_registry._NON_REFERENCE))
    try:
        yield
    finally:
        method_registry._SPECS.clear()
        method_registry._SPECS.update(saved[0])
        model_registry._REGISTRY.clear()
        model_registry._REGISTRY.update(saved[1])
        model_registry._NON_REFERENCE.clear()
        model_registry._NON_REFERENCE.update(saved[2])


class _Parsed(Exception):
    """Raised by the patched argparse once the command's flags parsed."""


def _module_exists(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:   # a package runs its __main__
        return importlib.util.find_spec(module + ".__main__") is not None
    return True


def check_command(argv: tuple) -> None:
    """Parses `python -m MODULE ARGS` without running it; fails the test on a bad flag, an
    unknown module or a --config that does not build."""
    module, args = argv[0], list(argv[1:])
    try:
        exists = _module_exists(module)
    except ModuleNotFoundError:
        exists = False
    assert exists, f"no module {module} (python -m {module} cannot run)"
    if not args:   # `python -m kd_jax.teachers` named in a sentence: the module is enough
        return
    err = io.StringIO()
    if module == "kd_jax.main":
        from kd_jax import cli
        try:
            with contextlib.redirect_stdout(io.StringIO()), isolated_registries():
                cli.parse(["kd_jax.main"] + args)
        except cli.UsageError as e:
            pytest.fail(f"python -m kd_jax.main {' '.join(args)}: kd_jax: error: {e}")
        except SystemExit as e:   # --help
            assert e.code in (0, None), f"--help exited with {e.code}"
        return

    # Stop right after the outermost parse succeeds: parse_args (its unknown-argument check
    # included), or parse_known_args where a module calls it directly.
    depth = [0]
    originals = (argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args)

    def stopping(original):
        def parse(self, *a, **kw):
            depth[0] += 1
            try:
                result = original(self, *a, **kw)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise _Parsed()
            return result
        return parse

    saved_argv = sys.argv
    sys.argv = [module] + args
    argparse.ArgumentParser.parse_args = stopping(originals[0])
    argparse.ArgumentParser.parse_known_args = stopping(originals[1])
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
                isolated_registries():
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except _Parsed:
        return
    except SystemExit as e:
        assert e.code in (0, None), (f"python -m {module} {' '.join(args)}: exit {e.code}: "
                                     + err.getvalue().strip())
        return
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = originals
        sys.argv = saved_argv
    pytest.fail(f"python -m {module} ran without parsing its flags {args}")


def test_the_docs_hold_commands():
    """The scan finds the commands (a broken scanner would pass every page)."""
    modules = {c.argv[0] for c in ALL_COMMANDS}
    assert {"kd_jax.main", "kd_jax.teachers", "kd_jax.evaluate", "kd_jax.export",
            "kd_jax.convert", "kd_jax.results"} <= modules
    assert len(ALL_COMMANDS) > 100


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: c.where)
def test_documented_command_parses(command, examples_dir, monkeypatch):
    if command.skip:
        pytest.skip(command.skip)
    monkeypatch.chdir(examples_dir)
    check_command(command.argv)


def test_command_check_catches_mistakes(examples_dir, monkeypatch):
    """The checker fails on an unknown key, pair, flag or module (so a passing page means
    something)."""
    monkeypatch.chdir(examples_dir)
    for bad in [("kd_jax.main", "--config", "cifar_kd.py:resnet32x4-foo", "--workdir", "w"),
                ("kd_jax.main", "--config", "cifar_kd.py", "--workdir", "w",
                 "--config.num_epoch=3"),
                ("kd_jax.teachers", "fetch"), ("kd_jax.evaluate", "m", "--datset", "cifar100"),
                ("kd_jax.nothing",)]:
        with pytest.raises(BaseException) as info:
            check_command(bad)
        assert info.type.__name__ in ("Failed", "AssertionError"), bad


# --- generated blocks and the config keys --------------------------------------------------

def test_generated_blocks_are_current():
    stale = {_rel(p): generate.stale_blocks(p) for p in doc_paths()}
    stale = {p: names for p, names in stale.items() if names}
    assert not stale, f"stale generated blocks {stale}: run python docs/generate.py"


def test_every_generated_block_is_used():
    text = "".join(open(p, encoding="utf-8").read() for p in doc_paths())
    used = set(re.findall(r"<!-- generated: ([\w-]+) -->", text))
    assert used == set(generate.BLOCKS), sorted(set(generate.BLOCKS) ^ used)


def _key_sets():
    """(run keys, method keys {(method, key)}, student keys, pipeline keys) of the shipped
    configs."""
    run, method, student, pipeline = set(), set(), set(), set()
    for name, config in generate.shipped_configs().items():
        for key, _ in generate._flat(config):
            parts = key.split(".")
            if "pipeline" in config:
                pipeline.add(key)
            elif parts[0] == "method" and key != "method.name":
                method.add((config.method.name, parts[1]))
            elif parts[0] == "students":
                if parts[2] == "method":
                    if parts[3] != "name":
                        method.add((config.students[parts[1]].method.name, parts[3]))
                else:
                    student.add(parts[2])
                run.add("students")
            else:
                run.add(key)
    return run, method, student, pipeline


def test_every_config_key_has_a_description():
    from kd_jax.recipes import keys
    run, method, student, pipeline = _key_sets()
    assert sorted(run - set(keys.RUN_KEYS)) == [], "describe them in kd_jax/recipes/keys.py"
    missing = sorted(k for m, k in method if k not in keys.METHOD_KEYS)
    assert missing == [], "describe them in kd_jax/recipes/keys.py METHOD_KEYS"
    assert sorted(student - set(keys.STUDENT_KEYS)) == []
    assert sorted(k for k in pipeline if k not in keys.PIPELINE_KEYS
                  and k not in keys.RUN_KEYS) == []
    # ... and no description of a key that no config has.
    assert sorted(set(keys.RUN_KEYS) - run) == []
    assert sorted(set(keys.METHOD_KEYS) - {k for _, k in method}) == []
    assert sorted(set(keys.METHOD_KEY_NOTES) - method) == []
    assert sorted(set(keys.STUDENT_KEYS) - student) == []
    assert sorted(set(keys.PIPELINE_KEYS) - pipeline) == []


# --- docs/losses.md ------------------------------------------------------------------------

def signature_text(fn) -> str:
    """`name(a, b, *, c, d=False, **kw)` from inspect.signature."""
    out, star = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            out.append("*" + p.name)
            star = True
        elif p.kind is p.VAR_KEYWORD:
            out.append("**" + p.name)
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                out.append("*")
                star = True
            default = p.default
            if default is p.empty:
                out.append(p.name)
            else:
                shown = default.__name__ if isinstance(default, type) else repr(default)
                out.append(f"{p.name}={shown}")
    return f"{fn.__name__}({', '.join(out)})"


def test_loss_signatures_are_the_real_ones():
    from kd_jax import losses
    with open(os.path.join(ROOT, "docs", "losses.md"), encoding="utf-8") as fh:
        text = fh.read()
    functions = {n: getattr(losses, n) for n in losses.__all__ if callable(getattr(losses, n))}
    documented = {}
    for span in INLINE.findall(text):
        m = re.fullmatch(r"(\w+)\((.*)\)", span)
        if m and m.group(1) in functions:
            documented.setdefault(m.group(1), []).append(span)
    assert sorted(set(functions) - set(documented)) == [], "undocumented in docs/losses.md"
    wrong = {n: s for n, spans in documented.items() for s in spans
             if s != signature_text(functions[n])}
    assert not wrong, {n: (s, signature_text(functions[n])) for n, s in wrong.items()}


def test_losses_example_runs(capsys):
    namespace: dict = {}
    exec(compile(example_files()["losses_example.py"], "losses_example.py", "exec"), namespace)
    assert capsys.readouterr().out.strip() == "['ce', 'dkd', 'nckd', 'tckd', 'warmup']"


# --- docs/reference_names.md ---------------------------------------------------------------

def test_reference_names_cover_the_table_and_build_their_pair():
    """Every pair of kd_jax.reference.table has rows; each row's kd_jax command builds that
    pair with that method (a command that parses but trains something else would fail)."""
    from kd_jax import cli, methods
    from kd_jax.reference import table
    rows = generate.reference_rows()
    for dataset in generate.CONFIG_PREFIX:
        assert {(t, s) for d, t, s, _, _ in rows if d == dataset} == set(table.pairs(dataset))
    for dataset, teacher, student, key, commands in rows:
        argv = shlex.split(generate.kd_jax_command(dataset, key, teacher, student))
        config = cli.load_config(argv[argv.index("--config") + 1])
        assert config.dataset.name == dataset
        assert config.teacher.arch.endswith(teacher) and config.student.arch.endswith(student)
        assert methods.get(config.method.name).method_key(config.method) == key
        assert commands or key in ("nkd", "dkd", "sd_kd", "sd_dkd", "sd_nkd")


# --- the README ----------------------------------------------------------------------------

def _readme_lines() -> list[str]:
    with open(README, encoding="utf-8") as fh:
        return fh.read().split("\n")


def test_readme_is_a_front_door():
    lines = _readme_lines()
    assert len(lines) <= README_MAX_LINES
    head = "\n".join(lines[:100])
    journeys = {
        "quickstart": "python -m kd_jax.main --config quickstart.py",
        "SD-DKD on CIFAR-100 with a published teacher": "python -m kd_jax.teachers fetch",
        "SD-DKD's training command": "--config cifar_sdd.py:resnet32x4-resnet8x4",
        "Colab on a TPU": "colab/kd_jax_tpu.ipynb",
        "your own method": "docs/extending.md",
    }
    missing = [name for name, text in journeys.items() if text not in head]
    assert not missing, f"not in the README's first 100 lines: {missing}"


def test_every_docs_page_is_linked_and_every_link_exists():
    text = "\n".join(_readme_lines())
    pages = {_rel(p) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))}
    assert sorted(p for p in pages if f"({p})" not in text) == []
    broken = []
    for path in doc_paths():
        base = os.path.dirname(path)
        with open(path, encoding="utf-8") as fh:
            for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", fh.read()):
                full = os.path.normpath(os.path.join(base, target))
                if not os.path.exists(full) and _rel(full) not in PENDING_PAGES:
                    broken.append(f"{_rel(path)} -> {target}")
    assert broken == []


# --- docs/extending.md: the "add your own" examples run ------------------------------------

TINY = ["--config.dataset.name=synthetic", "--config.dataset.num_train=24",
        "--config.dataset.num_test=12", "--config.dataset.num_classes=10",
        "--config.dataset.image_size=16", "--config.batch_size=8", "--config.total_steps=2",
        "--config.log_every_steps=1", "--config.tensorboard=False",
        "--config.progress_bar=False"]


def _doc_commands(page: str, needle: str) -> list[list[str]]:
    """The argv (after the module) of the page's commands containing `needle`."""
    found = [list(c.argv[1:]) for c in documented_commands(os.path.join(ROOT, "docs", page))
             if needle in " ".join(c.argv)]
    assert found, f"docs/{page} has no command with {needle!r}"
    return found


def _run(args: list[str], *extra: str) -> dict:
    """`python -m kd_jax.main ARGS EXTRA` in-process on tiny synthetic data (2 steps)."""
    from kd_jax import cli
    from kd_jax import main as kd_main
    parsed = cli.parse(["kd_jax.main", *args, *TINY, *extra])
    return kd_main.run(parsed.config, parsed.workdir)


TINY_PAIR = ["--config.student.arch=tiny_cnn", "--config.teacher.arch=tiny_cnn_wide"]


def test_own_method_example_trains(monkeypatch, tmp_path):
    """docs/extending.md's my_method.py, run with its documented command (tiny models,
    synthetic data, 2 steps): the user file registers a method the trainer then runs."""
    import kd_jax.testing  # noqa: F401  tiny_cnn, tiny_cnn_wide
    from kd_jax.methods import registry
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_method.py").write_text(example_files()["my_method.py"])
    (args,) = _doc_commands("extending.md", "my_method.py")
    with isolated_registries():
        summary = _run(args, *TINY_PAIR, "--config.teacher.checkpoint=random",
                       "--config.export_model=False")
        assert "my_kd" in registry.names()
    assert summary["finished"] and summary["steps"] == 2
    workdir = args[args.index("--workdir") + 1]
    with open(tmp_path / workdir / "metrics.jsonl") as fh:
        assert '"my_kd"' in fh.read()   # the method's own loss term is logged


def test_own_teacher_examples_train(monkeypatch, tmp_path):
    """docs/extending.md: a kd_jax run's final_model as the teacher, and the same teacher
    exported to a PyTorch .pth by the documented command."""
    import kd_jax.testing  # noqa: F401
    monkeypatch.chdir(tmp_path)
    (teacher,) = _doc_commands("extending.md", "cifar_teacher.py")
    _run(teacher, "--config.student.arch=tiny_cnn_wide")
    (student,) = _doc_commands("extending.md", "checkpoint=runs/teacher_r32x4/final_model")
    assert _run(student, *TINY_PAIR, "--config.export_model=False")["finished"]
    from kd_jax import export as kd_export
    (export,) = _doc_commands("extending.md", "--to torch")
    assert kd_export.main(export) == 0
    (from_pth,) = _doc_commands("extending.md", "checkpoint=teacher.pth")
    assert _run(from_pth, *TINY_PAIR, "--config.export_model=False")["finished"]
