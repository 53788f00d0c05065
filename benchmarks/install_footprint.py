"""Installed size of kd_jax's core and of each extra, and the start-up time of the CLI.

    python benchmarks/install_footprint.py [--extras tf,plots,tpu,cuda12] [--keep DIR]

Builds the wheel of this checkout, then for the core and for core + each extra: a fresh venv
(no pip inside: this interpreter's pip installs into it), `pip install WHEEL[extra]` from the
package index, and the size on disk of its site-packages. An extra's size is what it adds to
the core. In the core venv it also times `python -m kd_jax.main --help` (best of 3, a warm
file cache) and lists whether TensorFlow got installed. Venvs are deleted unless --keep.

Needs network access to the package index (minutes: jaxlib, and the extras' wheels). [torch]
is not measured by default: the index's default torch is the CUDA build (several GB); the
docs/install.md installs the CPU build first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def du(path: str) -> int:
    """Bytes on disk below path (files only, symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return proc


def build_wheel(out: str) -> str:
    src = os.path.join(out, "src")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", os.path.join(out, "dist"), src)
    shutil.rmtree(src)
    (wheel,) = [os.path.join(out, "dist", f) for f in os.listdir(os.path.join(out, "dist"))]
    return wheel


def make_venv(path: str, requirement: str) -> tuple[str, str]:
    """A venv at path with `requirement` installed; returns (python, site-packages)."""
    run(sys.executable, "-m", "venv", "--without-pip", path)
    python = os.path.join(path, "bin", "python")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", requirement)
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    return python, site.stdout.strip()


def packages(python: str) -> set[str]:
    out = run(sys.executable, "-m", "pip", "--python", python, "list", "--format=freeze")
    return {line.split("==")[0].lower() for line in out.stdout.split()}


def help_seconds(python: str, cwd: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(python, "-m", "kd_jax.main", "--help", cwd=cwd, env=env)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="tf,plots,tpu",
                        help="comma-separated extras to measure (default: tf,plots,tpu)")
    parser.add_argument("--keep", help="build the venvs here and keep them")
    args = parser.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="kd_jax_footprint_")
    os.makedirs(work, exist_ok=True)
    try:
        wheel = build_wheel(work)
        print(f"wheel: {os.path.basename(wheel)} ({os.path.getsize(wheel) / 2**20:.1f} MiB)",
              flush=True)
        python, site = make_venv(os.path.join(work, "core"), wheel)
        core = du(site)
        installed = packages(python)
        print(f"core: {core / 2**30:.2f} GiB installed ({len(installed)} packages; tensorflow "
              f"{'INSTALLED' if {'tensorflow', 'tensorflow-cpu'} & installed else 'absent'})",
              flush=True)
        biggest = sorted(((du(os.path.join(site, d)), d) for d in os.listdir(site)
                          if os.path.isdir(os.path.join(site, d))
                          and not d.endswith(".dist-info")), reverse=True)[:6]
        print("  largest: " + ", ".join(f"{d} {b / 2**20:.0f} MiB" for b, d in biggest))
        print(f"  python -m kd_jax.main --help: {help_seconds(python, work):.2f} s "
              "(best of 3)", flush=True)
        if not args.keep:
            shutil.rmtree(os.path.join(work, "core"))
        for extra in filter(None, args.extras.split(",")):
            venv = os.path.join(work, extra)
            _, site = make_venv(venv, f"{wheel}[{extra}]")
            size = du(site)
            print(f"[{extra}]: +{(size - core) / 2**30:.2f} GiB (core + [{extra}] = "
                  f"{size / 2**30:.2f} GiB)", flush=True)
            if not args.keep:
                shutil.rmtree(venv)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
