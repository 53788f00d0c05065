"""Command-line parsing for `python -m kd_jax.main`: every user mistake becomes one UsageError.

The config file is loaded here, as config_flags.DEFINE_config_file would (`get_config(ARG)`
for `--config FILE:ARG`), so that its own argument errors (an unknown pair) and the names of
the --config.KEY overrides (closest valid key suggested) are checked first. Then
config_flags.DEFINE_config_dict converts each override to the field's type, on a private
FlagValues: no global flag state is defined or shared between runs in one process. A
mistyped key, a bad value, an unknown pair, a missing flag or file ends in one
`kd_jax: error: ...` line (kd_jax.errors.exit_with_error), not a traceback. Nothing here imports
TensorFlow, and JAX only through the config file (kd_jax.recipes).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import os
import re
import shutil
from typing import Iterator, Optional, Sequence

from absl import flags

from kd_jax.errors import one_line

PROG = "python -m kd_jax.main"
# The shipped config files (package data: in the wheel too). `--config NAME.py[:ARG]` picks one
# by name; `--config path/to/file.py` loads the user's own.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
HELP_FLAGS = ("-h", "-help", "--help", "-?", "--helpshort", "--helpfull")
# --config.KEY=VALUE, --config.KEY VALUE, --noconfig.KEY (booleans), as config_flags reads them.
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")
_BAD_VALUE = re.compile(r"^flag --config\.([^=]+)=(.*?): ", re.DOTALL)
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             tuple: "a tuple, e.g. '(1, 2)', or the flag repeated"}

EXAMPLES = f"""\
examples:
  {PROG} --config quickstart.py --workdir runs/quickstart
  python -m kd_jax.teachers fetch resnet32x4      # teacher.checkpoint=published
  {PROG} --config cifar_kd.py:resnet32x4-resnet8x4 --workdir runs/kd \\
      --config.num_epochs=240
  {PROG} --config my_configs/mine.py --workdir runs/mine   # your own config file
  {PROG} --help --config cifar_kd.py     # that config's keys and values"""


class UsageError(Exception):
    """A command-line mistake; `main` prints it as one line and exits with code 2."""


@dataclasses.dataclass
class Args:
    config: object        # the ConfigDict, overrides applied, locked
    workdir: str
    config_arg: str       # the --config value, e.g. "cifar_kd.py:vgg13-vgg8"


def override_key(arg: str) -> Optional[str]:
    """'--config.optimizer.lr=0.1' -> 'optimizer.lr'; None for any other argument."""
    match = _OVERRIDE.match(arg)
    return match.group(1) if match else None


def parse(argv: Sequence[str]) -> Args:
    """argv (program name first) -> Args; raises UsageError, or SystemExit(0) after --help."""
    prog, args = argv[0], list(argv[1:])
    try:
        args = flags.FLAGS.read_flags_from_files(args, force_gnu=False)   # --flagfile=...
    except flags.Error as e:
        raise UsageError(one_line(e).removeprefix("ERROR:: ")) from None
    config_arg, args = _take(args, "config")
    workdir, args = _take(args, "workdir")
    if any(a.split("=", 1)[0] in HELP_FLAGS for a in args):
        print(help_text(config_arg))
        raise SystemExit(0)
    for name, value in (("config", config_arg), ("workdir", workdir)):
        if not value:
            _check_misspelled(args, name)
    if not config_arg:
        raise UsageError(f"missing --config: give a config file, e.g. --config "
                         f"quickstart.py (see {PROG} --help)")
    if not workdir:
        raise UsageError("missing --workdir: the directory for checkpoints, logs and the "
                         "summary (running again with the same one resumes)")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UsageError(f"--workdir={workdir!r} is a file, not a directory")
    from kd_jax.train import workdir_storage   # no JAX: answers at once
    storage_problem = workdir_storage.problem(workdir)
    if storage_problem:
        raise UsageError(storage_problem)
    config, rest = apply_overrides(load_config(config_arg), args, config_arg, prog)
    _parse_absl_flags([prog] + rest)
    return Args(config, workdir, config_arg)


def apply_overrides(config, args: Sequence[str], config_arg: str, prog: str = PROG):
    """(config with the --config.KEY=VALUE arguments of `args` applied and locked, the other
    arguments). Keys are checked first (closest valid key named), values converted to the
    field's type; a mistake raises UsageError. `config_arg` names the config in messages."""
    args = list(args)
    for arg in args:
        match = _OVERRIDE.match(arg)
        if match:
            check_key(config, match.group(1), config_arg)

    from ml_collections import config_flags
    fv = flags.FlagValues()   # private: nothing global to reset between in-process runs
    try:
        holder = config_flags.DEFINE_config_dict("config", config, flag_values=fv,
                                                 lock_config=True, sys_argv=[prog] + args)
        rest = fv([prog] + args, known_only=True)
    except flags.IllegalFlagValueError as e:
        raise UsageError(_bad_value_message(e, config, config_arg)) from None
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        raise UsageError(one_line(e.args[0] if isinstance(e, KeyError) and e.args else e)) \
            from None
    return holder.value, rest[1:]


def _take(args: list[str], name: str) -> tuple[Optional[str], list[str]]:
    """Removes --name=V / --name V (also with one dash) from args: (last V or None, rest)."""
    value, rest, i = None, [], 0
    while i < len(args):
        arg = args[i]
        if arg in (f"-{name}", f"--{name}"):
            if i + 1 == len(args):
                raise UsageError(f"{arg} needs a value")
            value, i = args[i + 1], i + 2
            continue
        if arg.startswith((f"-{name}=", f"--{name}=")):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def _check_misspelled(args: list[str], name: str) -> None:
    """--workdri=x when --workdir is missing: name the typo rather than the missing flag."""
    for arg in args:
        flag = arg.lstrip("-").split("=", 1)[0]
        if (arg.startswith("-") and not _OVERRIDE.match(arg) and flag not in flags.FLAGS
                and difflib.get_close_matches(flag, [name], cutoff=0.6)):
            raise UsageError(f"unknown flag --{flag}; did you mean --{name}?")


def _parse_absl_flags(argv: list[str]) -> None:
    """Whatever is not ours goes to absl's global flags (--verbosity, --logtostderr, ...);
    parsing them also tells absl logging that flags are parsed."""
    try:
        positional = flags.FLAGS(argv)[1:]
    except flags.UnrecognizedFlagError as e:
        known = ["config", "workdir", "help"] + list(flags.FLAGS)
        close = difflib.get_close_matches(e.flagname, known, n=1)
        hint = f"; did you mean --{close[0]}?" if close else f" (see {PROG} --help)"
        raise UsageError(f"unknown flag --{e.flagname}{hint}") from None
    except flags.Error as e:
        raise UsageError(one_line(e).removeprefix("flag ")) from None
    if positional:
        raise UsageError(f"unexpected argument {positional[0]!r}: flags take the form "
                         "--name=value (values with spaces need quotes)")


# --- the config file -----------------------------------------------------------------------

def config_files() -> list[str]:
    """The shipped config files (absolute paths in kd_jax/configs), sorted."""
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(os.path.join(CONFIG_DIR, f) for f in os.listdir(CONFIG_DIR)
                  if f.endswith(".py") and not f.startswith("_"))


def resolve_config_path(path: str) -> str:
    """A --config file: an existing path as given (the user's own file), else a shipped config
    by name: `cifar_kd.py` or `cifar_kd` (also `configs/cifar_kd.py`, the pre-package path).
    Raises UsageError, naming the closest shipped config, when neither exists."""
    if os.path.isdir(path):
        raise UsageError(f"--config {path} is a directory; give one of its .py files")
    if os.path.isfile(path):
        return path
    files = config_files()
    names = {os.path.basename(f): f for f in files}
    name = os.path.basename(path)
    if os.path.dirname(path) in ("", "configs"):
        for candidate in (name, name + ".py"):
            if candidate in names:
                return names[candidate]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UsageError(f"config file {path!r} not found (neither a file nor a shipped config); "
                     f"{hint}shipped configs: " + ", ".join(names))


def load_config(config_arg: str):
    """NAME.py[:arg] or path/to/file.py[:arg] -> get_config([arg]), as config_flags would
    call it (see resolve_config_path)."""
    from ml_collections import ConfigDict

    path, sep, arg = config_arg.partition(":")
    path = resolve_config_path(path)
    if not path.endswith(".py"):
        raise UsageError(f"--config {path}: expected a Python config file (*.py)")
    spec = importlib.util.spec_from_file_location("kd_jax_cli_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # an error inside the file is a bug: keep its traceback
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UsageError(f"{path} defines no get_config() function")
    try:
        config = get_config(arg) if sep else get_config()
    except ValueError as e:   # the config's check of its argument, e.g. an unknown pair
        raise UsageError(f"--config {config_arg}: {one_line(e)}") from None
    if not isinstance(config, ConfigDict):
        raise UsageError(f"{path}: get_config() returned {type(config).__name__}, "
                         "not a ConfigDict")
    return config


def _keys(config, prefix: str = "") -> list[str]:
    """Every dotted key of a ConfigDict, groups included."""
    out = []
    for key in config.keys():
        out.append(prefix + key)
        value = config[key]
        if hasattr(value, "keys") and hasattr(value, "get_type"):
            out.extend(_keys(value, f"{prefix}{key}."))
    return out


def check_key(config, path: str, config_arg: str) -> None:
    """Raises UsageError naming the closest valid key if `path` is not a key of config."""
    node, parts = config, path.split(".")
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth])
        if not (hasattr(node, "keys") and hasattr(node, "get_type")):
            raise UsageError(f"unknown config key {path!r}: {parent!r} is a value "
                             f"({node!r}), not a group of keys")
        if part in node:
            node = node[part]
            continue
        prefix = parent + "." if parent else ""
        siblings = sorted(node.keys())
        close = difflib.get_close_matches(part, siblings, n=1, cutoff=0.6)
        candidates = [prefix + close[0] + "".join("." + p for p in parts[depth + 1:])] \
            if close else []
        every = _keys(config)
        candidates += [k for k in every if k.rsplit(".", 1)[-1] == part]   # --config.lr
        candidates += difflib.get_close_matches(path, every, n=1, cutoff=0.75)
        if candidates:
            hint = f"did you mean {candidates[0]!r}?"
        else:
            where = f"keys of {parent!r}" if parent else "top-level keys"
            hint = f"{where}: {', '.join(siblings)}"
        raise UsageError(f"unknown config key {path!r}; {hint}")


def _bad_value_message(error: Exception, config, config_arg: str) -> str:
    text = one_line(error)
    match = _BAD_VALUE.match(str(error))
    if not match:
        return text.removeprefix("flag ")
    key, raw = match.groups()
    from ml_collections.config_flags import config_path
    try:
        field_type = config_path.get_type(key, config)
        current = config_path.get_value(key, config)
    except (AttributeError, KeyError, TypeError):
        return text.removeprefix("flag ")
    if hasattr(current, "keys"):   # a whole group, e.g. --config.optimizer="{'lr': 0.1}"
        return (f"--config.{key}={raw}: expected a dict of {key}'s keys "
                f"({', '.join(sorted(current.keys()))})")
    expected = _EXPECTED.get(field_type, getattr(field_type, "__name__", str(field_type)))
    return (f"--config.{key}={raw}: expected {expected} ({key} is {current!r} in "
            f"{config_arg.partition(':')[0]})")


# --- --help ----------------------------------------------------------------------------------

def _summary(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = ast.get_docstring(ast.parse(fh.read())) or ""
    except (OSError, SyntaxError, ValueError):
        return ""
    return doc.strip().split("\n\n", 1)[0].replace("\n", " ")


def help_text(config_arg: Optional[str] = None) -> str:
    lines = [
        f"usage: {PROG} --config FILE[:ARG] --workdir DIR [--config.KEY=VALUE ...]",
        "",
        "Trains a student with knowledge distillation (or a model alone, or runs a pipeline",
        "such as the quickstart). Running again with the same --workdir resumes from its latest",
        "checkpoint. Mistakes end in one 'kd_jax: error: ...' line and exit code 2.",
        "",
        "flags:",
        "  --config FILE[:ARG]  a config file; ARG picks a variant, for most configs the pair",
        "                       TEACHER-STUDENT (an unknown one lists the known pairs)",
        "  --workdir DIR        checkpoints, metrics.jsonl, TensorBoard events, summary.json",
        "  --config.KEY=VALUE   overrides one config key, nested ones with dots, e.g.",
        "                       --config.optimizer.lr=0.1; unknown keys are refused",
        "  -h, --help           this help; with --config, also that config's keys and values",
        "  (absl's logging flags, e.g. --verbosity=1, are accepted as well)",
        "",
        "config files (shipped with kd_jax; give one by name, e.g. --config cifar_sdd.py:PAIR,",
        "or the path of your own file):",
    ]
    files = config_files()
    width = max((len(os.path.basename(f)) for f in files), default=0)
    for f in files:
        lines.append(f"  {os.path.basename(f):<{width}}  {_summary(f)}")
    if files:
        lines.append(f"  (in {os.path.dirname(files[0])}/)")
    lines += ["", EXAMPLES]
    if config_arg:
        try:
            config = load_config(config_arg)
        except UsageError as e:
            lines += ["", f"--config {config_arg}: {e}"]
        else:
            lines += ["", f"keys of --config {config_arg} (override with --config.KEY=VALUE):"]
            lines += ["  " + line for line in _flat_values(config)]
    return "\n".join(lines)


def _flat_values(config, prefix: str = "") -> Iterator[str]:
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys") and hasattr(value, "get_type"):
            yield from _flat_values(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key} = {value!r}"


# --- the workdir -----------------------------------------------------------------------------

@contextlib.contextmanager
def workdir_removed_on_failure(workdir: str) -> Iterator[None]:
    """Creates workdir; if the run then fails before writing a file there, removes it again
    (only when it did not exist before), so that a mistake leaves nothing behind."""
    existed = os.path.exists(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--workdir={workdir!r}: cannot create it ({e.strerror})") from None
    try:
        yield
    except BaseException:
        if not existed and not _holds_files(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _holds_files(directory: str) -> bool:
    for root, dirs, files in os.walk(directory):
        if files or any(os.path.islink(os.path.join(root, d)) for d in dirs):
            return True
    return False

