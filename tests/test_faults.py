"""Every write survives a full disk, a read-only directory and a kill (issue 31).

The harness is tests/faults.py (its docstring says how writes are seen and failed). Here:
- in the main suite: every write call in kd_jax's source belongs to a site (`WRITERS`), the
  troubleshooting table is the one generated from the sites, out of memory is told from a
  full disk by the cause, and a real full disk (a tmpfs, as root) at `best_model/`, the
  issue's first case, through the real command;
- marked `faults` (its own CI step: `--faults -m faults`): the discovery of every write of
  every scenario, and the matrix: each site failing with ENOSPC, EACCES and EROFS (injected,
  in this process), and killed with SIGKILL right at it (a subprocess).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

import faults
from faults import FAILURES, SCENARIOS, SITES

REPO = faults.REPO
PACKAGE = os.path.join(REPO, "kd_jax")


# --- every write in the source has a site -------------------------------------------------------

_WRITE_MODE = re.compile(r"[wax+]")
_OS_WRITES = {"open", "write", "replace", "rename", "link", "mkdir", "makedirs", "ftruncate",
              "posix_fallocate"}
_SHUTIL_WRITES = {"copytree", "copyfile", "copy", "copy2", "move", "copyfileobj"}
_NAMED_WRITERS = {"save_converted", "write_json", "write_text", "mkdtemp", "TemporaryDirectory",
                  "NamedTemporaryFile", "mkstemp", "savez", "savez_compressed", "savefig",
                  "extractall", "write_bytes"}


def _is_write(call: ast.Call) -> bool:
    """Whether `call` writes a file or a directory (or hands one to a library that does)."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
    owner = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ""
    if name == "open" and owner in ("", "builtins", "io"):
        mode = call.args[1] if len(call.args) > 1 else next(
            (k.value for k in call.keywords if k.arg == "mode"), None)
        return mode is not None and (not isinstance(mode, ast.Constant)
                                     or bool(_WRITE_MODE.search(str(mode.value))))
    if name == "open" and owner == "tarfile":
        mode = next((k.value for k in call.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and "w" in str(mode.value)
    if owner == "os":
        return name in _OS_WRITES
    if owner == "shutil":
        return name in _SHUTIL_WRITES
    if name == "save":   # torch.save, orbax's checkpointers and managers
        return owner == "torch" or "manager" in owner or "checkpointer" in owner
    return name in _NAMED_WRITERS


def source_writers() -> dict[str, list[str]]:
    """{"kd_jax/path.py:Class.function": [the write calls in it]} over kd_jax's source."""
    out = {}
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "assets"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, REPO)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            _walk(tree, rel, [], out)
    return out


def _walk(node, rel: str, scope: list, out: dict) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            _walk(child, rel, scope + [child.name], out)
            continue
        if isinstance(child, ast.Call) and _is_write(child):
            # A nested function counts as its enclosing top-level function or method.
            key = f"{rel}:{'.'.join(scope[:2] if len(scope) > 1 and scope[0][0].isupper() else scope[:1])}"
            out.setdefault(key, []).append(f"line {child.lineno}: {ast.unparse(child.func)}")
        _walk(child, rel, scope, out)


def test_every_write_in_the_source_has_a_site():
    """A write call in kd_jax's source (open for writing, os.replace, os.makedirs, torch.save,
    an orbax save, ...) lies in a function of faults.WRITERS, which names the sites it serves
    (each with its cases) or why it has none: a new write site fails here until it has."""
    found = source_writers()
    sites = {s.name for s in SITES}
    unknown = {k: v for k, v in found.items() if k not in faults.WRITERS}
    assert not unknown, ("write calls in functions that no site of tests/faults.py covers "
                         f"(add a Site and a WRITERS entry): {json.dumps(unknown, indent=1)}")
    stale = [k for k in faults.WRITERS if k not in found]
    assert not stale, f"WRITERS entries that no longer write: {stale}"
    for key, served in faults.WRITERS.items():
        if not isinstance(served, str):
            assert served and set(served) <= sites, (key, served)


# --- the failure table of docs/troubleshooting.md ------------------------------------------------

def test_the_failure_table_is_generated_from_the_sites():
    """docs/troubleshooting.md's table between the failure-table markers is faults.table():
    `python tests/faults.py table` prints it."""
    with open(faults.DOC, encoding="utf-8") as fh:
        text = fh.read()
    start, end = text.find(faults.MARKERS[0]), text.find(faults.MARKERS[1])
    assert 0 <= start < end, f"{faults.DOC}: no {faults.MARKERS[0]} ... {faults.MARKERS[1]}"
    assert text[start:end + len(faults.MARKERS[1])] == faults.doc_block(), (
        "the table differs from the sites of tests/faults.py: paste `python tests/faults.py "
        "table` between the markers")


# --- out of memory is not a full disk --------------------------------------------------------------

# Tensorstore's error for best_model/ on a full tmpfs (seen on this machine, orbax 0.11):
# the status XLA uses for out of device memory, with the errno in its payload.
TENSORSTORE_ENOSPC = (
    'RESOURCE_EXHAUSTED: Error writing "bn1.bias/0" in OCDBT database at local file "{d}/'
    'best_model.tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Error writing local file '
    '"{d}/best_model.tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/manifest.ocdbt": Failed '
    "writing: \"{d}/best_model.tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/manifest.ocdbt."
    "__lock\": Failed to write 166 bytes to file 13: No space left on device "
    "[os_error_code='28']")


def _xla_oom():
    import jax
    return jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                      "allocate 68719476736 bytes.")


@pytest.mark.parametrize("raised, code, expected", [
    (lambda d: _xla_oom(), 1, r"out of device memory with batch_size=8 .*"),
    (lambda d: MemoryError(), 1, r"out of host memory with batch_size=8 .*"),
    (lambda d: ValueError(TENSORSTORE_ENOSPC.format(d=d)), 2,
     r"{d}/best_model.tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/manifest.ocdbt: No "
     r"space left on device \(disk full\); free space on the disk of .*"),
    (lambda d: OSError(28, "No space left on device", f"{d}/metrics.jsonl"), 2,
     r"{d}/metrics.jsonl: No space left on device \(disk full\); free space on the disk of "
     r"{d}, then run the same command: it goes on from the last checkpoint"),
    (lambda d: PermissionError(13, "Permission denied", f"{d}/tb"), 2,
     r"{d}/tb: Permission denied \(no permission\); fix the permissions of {d}, then .*"),
], ids=["xla-oom", "host-oom", "tensorstore-enospc", "enospc", "eacces"])
def test_out_of_memory_is_told_from_a_full_disk_by_the_cause(raised, code, expected, tmp_path,
                                                             monkeypatch, capsys):
    """The same status text, RESOURCE_EXHAUSTED, from XLA (out of device memory: exit 1) and
    from tensorstore (a full disk: the errno in its payload; exit 2, the path named)."""
    from kd_jax import main as main_lib

    d = str(tmp_path / "w")

    def run(config, workdir):
        raise raised(d)

    monkeypatch.setattr(main_lib, "run", run)
    with pytest.raises(SystemExit) as e:
        main_lib.main(["kd_jax.main", "--config", faults.CONFIG, "--workdir", d])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code and len(err) == 1, err
    assert re.fullmatch("kd_jax: error: " + expected.format(d=re.escape(d)), err[0]), err[0]


def test_a_status_text_alone_is_neither_memory_nor_disk(tmp_path, monkeypatch):
    """RESOURCE_EXHAUSTED from anything but XLA, without an errno: a bug, its traceback kept."""
    from kd_jax import main as main_lib

    def run(config, workdir):
        raise ValueError("RESOURCE_EXHAUSTED: a quota of some service")

    monkeypatch.setattr(main_lib, "run", run)
    with pytest.raises(ValueError, match="a quota of some service"):
        main_lib.main(["kd_jax.main", "--config", faults.CONFIG, "--workdir",
                       str(tmp_path / "w")])


# --- the matrix: shared roots ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    """The download scenarios' files, served on 127.0.0.1 (URL and md5 in os.environ), and
    the quickstart's Fashion-MNIST (KD_JAX_FAULTS_IDX)."""
    directory = str(tmp_path_factory.mktemp("served"))
    env = faults.make_downloads(directory)
    saved = {k: os.environ.get(k) for k in (*env, faults.URL_ENV, "KD_JAX_FAULTS_IDX")}
    with faults.served(directory) as url:
        os.environ.update(env, **{faults.URL_ENV: url})
        from test_cli_quickstart import idx_dir
        os.environ["KD_JAX_FAULTS_IDX"] = idx_dir(tmp_path_factory.mktemp("idx"))
        yield url
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Bases:
    """Each scenario's root before its command, prepared once (faults.prepare; the
    quickstart's: the command itself, finished) and copied for every case."""

    def __init__(self, directory: str):
        self.directory, self.ready = directory, set()

    def copy(self, scenario: str, dest: str) -> str:
        base = os.path.join(self.directory, scenario)
        if scenario not in self.ready:
            faults.prepare(scenario, base)
            if scenario == "quickstart":
                command(scenario, base)
            self.ready.add(scenario)
        shutil.copytree(base, dest, symlinks=True)
        return dest


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return Bases(str(tmp_path_factory.mktemp("bases")))


def command(scenario: str, root: str, **interception):
    """Runs the scenario's command in this process (with `interception`: faults.Interceptor's
    fail / kill); returns (exit status, the Interceptor)."""
    s = SCENARIOS[scenario]
    try:
        with faults.environment(root), faults.patched(faults.scenario_patches(scenario, root)), \
                faults.Interceptor(root, **interception) as interceptor:
            code = faults.run_command(s.module, s.argv(root))
    finally:
        faults.release_orbax_threads()
    return code, interceptor


def in_subprocess(mode: str, scenario: str, site: str, root: str, arg: str):
    """`python tests/faults.py run MODE SCENARIO SITE ROOT ARG` (the compile scenario: with
    a compilation cache of its own)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    if scenario == "compile":
        env.update(faults.compile_env(root))
    return subprocess.run([sys.executable, faults.__file__, "run", mode, scenario, site, root,
                           arg], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def finishes(scenario: str, root: str) -> None:
    """The same command, the cause removed, finishes."""
    code, _ = command(scenario, root)
    assert code == 0, f"the rerun of {scenario} exited with {code}"
    SCENARIOS[scenario].done(root)


def assert_one_line(err: str, site, code: int, root: str) -> None:
    """One `kd_jax: error:` line, the last on stderr, naming the path and the cause as
    site.sees says; no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    errors_ = [line for line in lines if line.startswith("kd_jax: error:")]
    assert len(errors_) == 1 and lines[-1] == errors_[0], err[-3000:]
    assert re.fullmatch(faults.line_pattern(site, code, root), errors_[0]), (
        f"{errors_[0]!r} does not match {site.sees!r}")


def _needs(scenario: str) -> list:
    """The scenario's optional stacks as marks (skipped, saying so, where one is missing)."""
    return [pytest.mark.needs(*SCENARIOS[scenario].needs)] if SCENARIOS[scenario].needs else []


def _cases():
    for site in SITES:
        marks = [pytest.mark.faults, *_needs(site.scenario)]
        if site.xfail:
            marks.append(pytest.mark.xfail(reason=site.xfail, strict=True))
        yield site, marks


# --- the matrix ---------------------------------------------------------------------------------

@pytest.mark.faults
@pytest.mark.parametrize("scenario", [pytest.param(s, marks=_needs(s)) for s in SCENARIOS])
def test_discovery_covers_every_write(scenario, bases, downloads, tmp_path):
    """Every operation of the scenario's command, and every file it leaves, belongs to a
    site (or to faults.IGNORED); every site's `fail` and `kill` operations happen."""
    root = bases.copy(scenario, str(tmp_path / "root"))
    before = faults.finished(root)
    if scenario == "compile":
        record = str(tmp_path / "ops.json")
        r = in_subprocess("record", scenario, "-", root, record)
        assert r.returncode == 0, r.stderr[-3000:]
        with open(record) as fh:
            ops = [faults.Op(*op) for op in json.load(fh)]
    else:
        code, interceptor = command(scenario, root)
        assert code == 0
        ops = interceptor.ops
    unknown = sorted({op.key(root) for op in ops
                      if not faults.site_of(faults.relative(op.path, root), scenario)
                      and not faults.ignored(faults.relative(op.path, root))})
    for rel, digest in faults.finished(root).items():   # written below Python too
        if before.get(rel) != digest and not faults.site_of(rel, scenario) \
                and not faults.ignored(rel):
            unknown.append(f"file {rel}")
    assert not unknown, f"writes of {scenario} that belong to no site: {unknown}"
    keys = [op.key(root) for op in ops]
    for site in SITES:
        if site.scenario != scenario:
            continue
        for pattern, nth in ((site.fail, site.nth), (site.kill_op, site.kill_at)):
            seen = sum(bool(re.fullmatch(pattern, k)) for k in keys)
            assert seen >= nth, f"{site.name}: {pattern!r} happens {seen} times, not {nth}"


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("site", [pytest.param(s, marks=m, id=s.name) for s, m in _cases()])
def test_a_write_that_fails(site, failure, bases, downloads, tmp_path, capfd):
    """Injected: the site's operation raises OSError(errno) as the kernel would. One line,
    exit 2 (or the command goes on, as the site says), nothing finished lost; the same
    command then finishes."""
    code_ = FAILURES[failure]
    root = bases.copy(site.scenario, str(tmp_path / "root"))
    capfd.readouterr()
    if site.scenario == "compile":
        r = in_subprocess("fail", site.scenario, site.name, root, failure)
        code, err, snapshot = r.returncode, r.stderr, None
        assert "never happened" not in err
    else:
        code, interceptor = command(site.scenario, root, fail=(site, code_))
        err = capfd.readouterr().err
        assert interceptor.fired, f"{site.fail} (#{site.nth}) never happened"
        snapshot = interceptor.snapshot
    if site.sees is None:
        assert code == 0 and "Traceback" not in err, err[-3000:]
        assert os.strerror(code_) in err, err[-3000:]
    else:
        assert code == 2, (code, err[-3000:])
        assert_one_line(err, site, code_, root)
    if snapshot is not None:
        assert not faults.lost(snapshot, root, site.moved), faults.lost(snapshot, root)
    finishes(site.scenario, root)


@pytest.mark.parametrize("site", [pytest.param(s, marks=m, id=s.name) for s, m in _cases()])
def test_a_kill_right_at_a_write(site, bases, downloads, tmp_path):
    """A subprocess runs the command and sends itself SIGKILL at the site's `kill`
    operation: nothing finished is lost, and the same command then finishes."""
    root = bases.copy(site.scenario, str(tmp_path / "root"))
    record = str(tmp_path / "killed.json")
    r = in_subprocess("kill", site.scenario, site.name, root, record)
    assert r.returncode == -signal.SIGKILL, (f"{site.kill_op} (#{site.kill_at}) never "
                                             f"happened: exit {r.returncode}", r.stderr[-3000:])
    with open(record) as fh:
        killed = json.load(fh)
    assert not faults.lost(killed["finished"], root, site.moved), (
        faults.lost(killed["finished"], root, site.moved))
    finishes(site.scenario, root)


# --- real full disks --------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at tmp_path/disk: a real disk that a case can fill."""
    with faults.tmpfs(str(tmp_path / "disk"), "16m", "the injected full disks of the matrix"
                      ) as disk:
        yield disk


REAL = {"best_model": (), "checkpoint": (pytest.mark.faults,),
        "final_model": (pytest.mark.faults,), "export_output": (pytest.mark.faults,),
        "cub_cache": (pytest.mark.faults,)}   # a memory map: SIGBUS unless allocated first


@pytest.mark.parametrize("site", [pytest.param(s, marks=[*REAL[s.name], *_needs(s.scenario)],
                                               id=s.name)
                                  for s in SITES if s.name in REAL])
def test_a_really_full_disk(site, small_disk, bases, tmp_path):
    """Real: the command runs on a tmpfs, in a subprocess that ends as `python -m kd_jax.X`
    does, and the disk is filled at the site's `fail` operation (best_model/, the issue's
    first case: tensorstore's ENOSPC, reported as RESOURCE_EXHAUSTED, once taken for out of
    memory). One line naming the path and the cause, exit 2, no traceback (at exit neither),
    nothing finished lost; space freed, the same command finishes."""
    root = os.path.join(small_disk, "root")
    bases.copy(site.scenario, root)
    before = faults.finished(root)
    r = in_subprocess("fill", site.scenario, site.name, root, small_disk)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert_one_line(r.stderr, site, 28, root)
    os.remove(os.path.join(small_disk, faults.FILLER))
    assert not faults.lost(before, root), faults.lost(before, root)
    finishes(site.scenario, root)
