"""The measures of issue 23 ("a codebase a newcomer can change in an afternoon") for a tree.

    python benchmarks/codebase_metrics.py [ROOT]     # ROOT: a kd_jax checkout (default: this one)

Prints:
1. the lines of each .py file in ROOT/kd_jax/train/;
2. the longest functions in ROOT/kd_jax/ (qualified name, file, lines from `def` to its end);
3. the frames from the train step to the KL in SD-DKD, measured by running ROOT's kd_jax (in
   a subprocess with PYTHONPATH=ROOT): the command line trains SD-DKD on a tiny synthetic
   set; the KL function of kd_jax.losses (any function named `kl`, `kl_*` or `*_kl*`) is
   wrapped, and at its first call inside a trace of the train step the Python stack is
   recorded and the run is stopped (nothing compiles). Counted from the outermost frame in
   kd_jax/train/step.py down to the KL function, both included: all frames, and those in
   kd_jax/ (the chain a reader follows; JAX's own frames, e.g. value_and_grad, vmap, left
   out), and the kd_jax/ frames below kd_jax/train/ (the loss path alone);
4. if `duplicates` is on PATH, its first line for ROOT/kd_jax (pairs of places sharing runs
   of six or more identical or same-shape lines).
No names of the step's functions are assumed, so it runs on refactored trees as well.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KL_NAME = re.compile(r"(?:^|_)kl(?:_|$)")
STEP_FILE = os.path.join("kd_jax", "train", "step.py")


# --- 1, 2: static measures --------------------------------------------------------------------

def train_file_lines(root: str) -> list[tuple[str, int]]:
    """[(path relative to root, lines)] of ROOT/kd_jax/train/**.py, longest first."""
    out = []
    for dirpath, dirs, files in os.walk(os.path.join(root, "kd_jax", "train")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path) as fh:
                    out.append((os.path.relpath(path, root), sum(1 for _ in fh)))
    return sorted(out, key=lambda x: (-x[1], x[0]))


def functions(root: str) -> list[tuple[int, str, str, int]]:
    """[(lines, qualified name, file, first line)] of every function in ROOT/kd_jax."""
    out = []

    def visit(node, prefix, path):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out.append((child.end_lineno - child.lineno + 1, name, path, child.lineno))
                visit(child, f"{name}.<locals>.", path)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", path)
            else:
                visit(child, prefix, path)

    for dirpath, dirs, files in os.walk(os.path.join(root, "kd_jax")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path) as fh:
                    visit(ast.parse(fh.read(), path), "", os.path.relpath(path, root))
    return sorted(out, key=lambda x: (-x[0], x[2], x[3]))


# --- 3: frames from the train step to the KL (run inside ROOT's kd_jax) ----------------------

class _Reached(Exception):
    """Raised by the wrapped KL function once the stack has been recorded."""


def _kl_functions():
    """{id: (module name, function)} of the KL functions defined in kd_jax.losses."""
    import importlib
    import inspect
    import pkgutil

    import kd_jax.losses
    found = {}
    for info in pkgutil.iter_modules(kd_jax.losses.__path__, "kd_jax.losses."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isfunction(obj) and KL_NAME.search(name)
                    and obj.__module__.startswith("kd_jax.losses")):
                found[id(obj)] = (obj.__module__, obj)
    return found


def measure_frames(root: str) -> dict:
    """Runs SD-DKD's first train-step trace in this process (ROOT's kd_jax on sys.path)."""
    import traceback

    import kd_jax
    where = os.path.dirname(os.path.abspath(kd_jax.__file__))
    if where != os.path.join(os.path.abspath(root), "kd_jax"):
        return {"error": f"imported kd_jax from {where}, not from {root}"}
    import kd_jax.methods  # noqa: F401  binds the losses' functions where they are used
    from kd_jax import main as main_lib

    kls = _kl_functions()
    if not kls:
        return {"error": "no function named kl / kl_* / *_kl* in kd_jax.losses"}
    record = {}

    def wrap(fn):
        def wrapper(*args, **kwargs):
            stack = traceback.extract_stack()[:-1]   # without this wrapper's frame
            norm = [os.path.normpath(f.filename) for f in stack]
            starts = [i for i, f in enumerate(norm) if f.endswith(STEP_FILE)]
            if starts and not record:
                chain = stack[starts[0]:]
                record["kl"] = f"{fn.__module__}.{fn.__qualname__}"
                record["all"] = [(f.filename, f.name) for f in chain] + [
                    (fn.__code__.co_filename, fn.__name__)]
                raise _Reached()
            return fn(*args, **kwargs)
        return wrapper

    wrappers = {i: wrap(fn) for i, (_, fn) in kls.items()}
    for module in list(sys.modules.values()):   # every binding of a KL function, in kd_jax
        if getattr(module, "__name__", "").startswith("kd_jax"):
            for name, obj in list(vars(module).items()):
                if id(obj) in wrappers:
                    setattr(module, name, wrappers[id(obj)])

    workdir = tempfile.mkdtemp(prefix="kd_jax_metrics_")
    argv = ["kd_jax.main", "--config", "cifar_sdd.py:resnet32x4-resnet8x4,dkd",
            f"--workdir={os.path.join(workdir, 'run')}",
            "--config.dataset.name=synthetic", "--config.dataset.num_train=16",
            "--config.dataset.num_test=8", "--config.dataset.num_classes=10",
            "--config.student.arch=resnet8", "--config.teacher.arch=resnet8",
            "--config.teacher.checkpoint=random", "--config.batch_size=8",
            "--config.total_steps=1", "--config.progress_bar=False",
            "--config.export_model=False"]
    try:
        main_lib.main(argv)
    except _Reached:
        pass
    except SystemExit as e:
        return {"error": f"the SD-DKD run exited ({e.code}) before the KL was traced"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not record:
        return {"error": "the run finished without tracing the KL inside the train step"}
    package = os.path.join(os.path.abspath(root), "kd_jax") + os.sep
    record["kd_jax"] = [(os.path.relpath(f, root), n) for f, n in record["all"]
                        if os.path.abspath(f).startswith(package)]
    return record


def frames(root: str) -> dict:
    """measure_frames in a fresh interpreter whose kd_jax is ROOT's."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cache = tempfile.mkdtemp(prefix="kd_jax_metrics_cache_")
    env.update(PYTHONPATH=os.path.abspath(root), JAX_PLATFORMS="cpu", KD_JAX_OFFLINE="1",
               KD_JAX_CACHE=cache, JAX_COMPILATION_CACHE_DIR=os.path.join(cache, "jax"))
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--frames-json",
                               os.path.abspath(root)], capture_output=True, text=True,
                              env=env, cwd=cache, timeout=600)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
    return json.loads(lines[-1])


# --- 4: repeated blocks -----------------------------------------------------------------------

def duplicates(root: str) -> str | None:
    """`duplicates --repo ROOT/kd_jax --most 200`'s first line (None: not on PATH)."""
    if shutil.which("duplicates") is None:
        return None
    proc = subprocess.run(["duplicates", "--repo", os.path.join(root, "kd_jax"), "--most",
                           "200"], capture_output=True, text=True, timeout=600)
    return (proc.stdout.splitlines() or ["(no output)"])[0]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/codebase_metrics.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default=HERE,
                        help="a kd_jax source tree (default: %(default)s)")
    parser.add_argument("--top", type=int, default=5, help="longest functions to list")
    parser.add_argument("--frames-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    if not os.path.isdir(os.path.join(root, "kd_jax")):
        parser.error(f"{root} holds no kd_jax/ directory")
    if args.frames_json:
        print(json.dumps(measure_frames(root)))
        return 0

    print(f"tree: {root}")
    rows = train_file_lines(root)
    print(f"\n1. lines per file, kd_jax/train/ ({len(rows)} files, "
          f"{sum(n for _, n in rows)} lines):")
    for path, n in rows:
        print(f"   {n:5d}  {path}")

    funcs = functions(root)
    print(f"\n2. longest functions in kd_jax/ ({len(funcs)} functions):")
    for n, name, path, line in funcs[:args.top]:
        print(f"   {n:5d}  {name}  ({path}:{line})")

    print("\n3. frames from the train step to the KL in SD-DKD:")
    r = frames(root)
    if "error" in r:
        print(f"   not measured: {r['error']}")
    else:
        print(f"   KL function: {r['kl']}")
        print(f"   {len(r['all'])} Python frames from the first frame in {STEP_FILE} to the "
              f"KL, both included; {len(r['kd_jax'])} of them in kd_jax/:")
        for path, name in r["kd_jax"]:
            print(f"     {path}:{name}")
        train_dir = os.path.join("kd_jax", "train") + os.sep
        below = [p for p, _ in r["kd_jax"] if not p.startswith(train_dir)]
        print(f"   {len(below)} kd_jax/ frames from the first one below kd_jax/train/ (the "
              "method's loss) to the KL, both included")

    print("\n4. repeated blocks of 6+ lines inside kd_jax/ (`duplicates --repo kd_jax "
          "--most 200`):")
    line = duplicates(root)
    print("   duplicates is not on PATH: not measured" if line is None else f"   {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
