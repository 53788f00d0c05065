"""Importing the repository's files that are not modules of a package on sys.path: the
config files (loaded by path, as the CLI does), `.ci/` and `benchmarks/` scripts."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(relpath: str, name: str = ""):
    """The module at ROOT/relpath, executed once per call under `name` (default: its stem)."""
    path = os.path.join(ROOT, relpath)
    spec = importlib.util.spec_from_file_location(
        name or os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_module(name: str):
    """kd_jax/configs/<name>.py as a module (its get_config(arg))."""
    return load(os.path.join("kd_jax", "configs", f"{name}.py"), f"configs_{name}")
