"""A built wheel installs for real and works outside the repository: its dependencies come from
the package index into a fresh venv that sees none of this interpreter's packages; the configs
are inside the package, `--help` lists them, and a synthetic run by config name trains without
torch or TensorFlow.

The wheel is built from a copy of the source tree without tests, benchmarks, docs or CI
scripts (pip wheel, no build isolation). The venv is a plain `python -m venv` of this
interpreter's base Python (no system site-packages); pip installs the wheel into it with its
dependencies, pinned by constraints/pyX.Y.txt where this Python has one (the stack CI tests;
pip's cache makes a rerun quick). Everything then runs from a directory outside the repo, with
no PYTHONPATH and no user site-packages.

Needs the package index: without it (and not under CI=true), the tests skip saying so.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The package must need none of these (.ci/check_verdict.py included).
IGNORE = shutil.ignore_patterns(".git", ".venv*", "venv", "runs", "build", "dist", "*.egg-info",
                                "__pycache__", ".pytest_cache", "tests", "benchmarks", "docs",
                                ".ci", "constraints")
CONSTRAINTS = os.path.join(ROOT, "constraints", "py%d.%d.txt" % sys.version_info[:2])
# pip's messages when the index cannot be reached (as opposed to a failed resolution).
NO_NETWORK = ("NewConnectionError", "Failed to establish a new connection",
              "Temporary failure in name resolution", "Name or service not known",
              "Network is unreachable", "ConnectTimeoutError")
OPTIONAL_STACKS = ("torch", "tensorflow")


def sh(*args, timeout=600, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def pip_install(python, wheel, env):
    """pip installs `wheel` with its dependencies into the venv of `python` (retries and a
    timeout per connection; a whole-install limit of 20 minutes for a cold pip cache)."""
    args = [python, "-m", "pip", "install", "-q", "--retries", "5", "--timeout", "60", wheel]
    if os.path.isfile(CONSTRAINTS):
        args += ["-c", CONSTRAINTS]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1200, env=env)
    if proc.returncode and not os.environ.get("CI") and any(m in proc.stderr for m in NO_NETWORK):
        pytest.skip("needs the package index, which pip could not reach: "
                    + proc.stderr.strip().splitlines()[-1][:200])
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
       "-q", "-w", str(tmp / "dist"), str(src))
    (wheel,) = (tmp / "dist").glob("kd_jax-*.whl")

    # No PYTHONPATH, no user site-packages, no host venv: the venv's own packages only.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "XLA_FLAGS", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", JAX_PLATFORMS="cpu", KD_JAX_OFFLINE="1",
               KD_JAX_CACHE=str(tmp / "cache"))
    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", str(venv), env=env)
    python = str(venv / "bin" / "python")
    pip_install(python, str(wheel), env)
    (tmp / "run").mkdir()
    return wheel, python, tmp / "run", env, venv


def test_wheel_holds_the_configs(installed):
    wheel = installed[0]
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(f for f in os.listdir(os.path.join(ROOT, "kd_jax", "configs"))
                     if f.endswith(".py"))
    assert shipped and all(f"kd_jax/configs/{f}" in names for f in shipped)
    assert any(n.startswith("kd_jax/assets/quickstart_teacher/") for n in names)


PROBE = """
import importlib.util, json, site, sys
import kd_jax
print(json.dumps({"kd_jax": kd_jax.__file__, "path": sys.path, "prefix": sys.prefix,
                  "base": [sys.base_prefix, sys.base_exec_prefix],
                  "site": site.getsitepackages(), "user_site": site.ENABLE_USER_SITE,
                  "found": [m for m in %r if importlib.util.find_spec(m) is not None]}))
""" % (OPTIONAL_STACKS,)


@pytest.mark.slow
def test_venv_sees_only_its_own_packages(installed):
    """kd_jax and every package dir come from the venv: nothing of the host leaks in, so a
    dependency missing from pyproject.toml fails here. Neither torch nor TensorFlow got
    installed by the core's dependencies."""
    _, python, cwd, env, venv = installed
    probe = json.loads(sh(python, "-c", PROBE, cwd=cwd, env=env).stdout)
    assert probe["prefix"] == str(venv)
    assert probe["kd_jax"].startswith(str(venv)), probe["kd_jax"]
    assert probe["user_site"] is False
    assert all(p.startswith(str(venv)) for p in probe["site"]), probe["site"]
    # sys.path: the venv, and the base interpreter's standard library (no site-packages).
    outside = [p for p in probe["path"] if p and not p.startswith(str(venv))]
    assert all(p.startswith(tuple(probe["base"])) and "-packages" not in p for p in outside), \
        outside
    assert probe["found"] == [], f"the core install pulled in {probe['found']}"


def imported_modules(stderr: str) -> set[str]:
    """The modules of `python -X importtime`'s report (its last column)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_repo(installed):
    _, python, cwd, env, venv = installed
    help_text = sh(python, "-m", "kd_jax.main", "--help", cwd=cwd, env=env).stdout
    assert "/kd_jax/configs/)" in help_text and f"(in {venv}" in help_text, help_text[-2000:]
    for name in ("cifar_sdd.py", "cifar_kd.py", "quickstart.py"):
        assert f"  {name} " in help_text

    workdir = cwd / "smoke"
    run = sh(python, "-X", "importtime", "-m", "kd_jax.main",
             "--config", "cifar_kd.py:resnet32x4-resnet8x4",
             f"--workdir={workdir}", "--config.dataset.name=synthetic",
             "--config.dataset.num_train=16", "--config.dataset.num_test=8",
             "--config.dataset.num_classes=10", "--config.student.arch=resnet8",
             "--config.teacher.arch=resnet8", "--config.teacher.checkpoint=random",
             "--config.batch_size=8", "--config.total_steps=2", "--config.progress_bar=False",
             "--config.tensorboard=True", "--config.export_model=False", cwd=cwd, env=env)
    assert (workdir / "summary.json").is_file()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tb"))
    assert not (cwd / "kd_jax").exists()
    modules = imported_modules(run.stderr)
    assert "kd_jax.train.trainer" in modules   # the report is read right
    stacks = sorted({m.split(".")[0] for m in modules}
                    & {*OPTIONAL_STACKS, "tensorflow_datasets"})
    assert stacks == [], f"a synthetic run imported {stacks}"
