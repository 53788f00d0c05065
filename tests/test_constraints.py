"""The constraints files, constraints/pyX.Y.txt: the stacks CI's legs install and test.

Each pins every package its leg installs (the header names the extras: `kd_jax[dev]`), each
pin lies within pyproject.toml's ranges, and docs/install.md's table of tested versions says
what the files pin, one row per file.
"""

import glob
import os
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "constraints", "py3.*.txt")))


def python_of(path: str) -> str:
    return re.fullmatch(r"py(3\.\d+)\.txt", os.path.basename(path)).group(1)


def read_constraints(path: str) -> tuple[list[str], dict[str, Version]]:
    """(the extras its header names, {canonical name: pinned version})."""
    with open(path) as fh:
        text = fh.read()
    extras = re.search(r"kd_jax\[([a-z0-9,]*)\]", text).group(1).split(",")
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return extras, pins


def project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["project"]


def requirements(python: str, extras: list[str]) -> list[Requirement]:
    """pyproject.toml's requirements that `pip install .[extras]` asks for on `python`."""
    deps = project()
    asked = [(Requirement(r), "") for r in deps["dependencies"]]
    asked += [(Requirement(r), e) for e in extras for r in deps["optional-dependencies"][e]]
    return [r for r, extra in asked
            if r.marker is None or r.marker.evaluate({"python_version": python, "extra": extra})]


def test_there_is_a_file_per_python_of_the_classifiers():
    prefix = "Programming Language :: Python :: "
    classified = [c[len(prefix):] for c in project()["classifiers"] if c.startswith(prefix)]
    assert [python_of(f) for f in FILES] == classified == ["3.11", "3.12", "3.13"]
    # .ci/run: the full leg on 3.11, a lean leg (.ci/lean_leg) on each of the others.
    with open(os.path.join(ROOT, ".ci", "run")) as fh:
        ci = fh.read()
    assert "find_python 3.11" in ci
    assert re.search(r"for version in ([\d. ]+); do\n\s+\.ci/lean_leg", ci).group(1).split() \
        == classified[1:]


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_pins_cover_and_satisfy_pyproject(path):
    extras, pins = read_constraints(path)
    assert "dev" in extras
    for req in requirements(python_of(path), extras):
        name = canonicalize_name(req.name)
        assert name in pins, f"{os.path.basename(path)} does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{os.path.basename(path)}: {name}=={pins[name]} is outside pyproject's {req}"
    # The lean legs test without torch and TensorFlow: their files must not bring them in.
    if "torch" not in extras:
        assert "torch" not in pins
    if "tf" not in extras:
        assert not {"tensorflow", "tensorflow-cpu"} & set(pins)


def install_doc_table() -> dict[str, dict[str, str]]:
    """docs/install.md's table: {python: {column: cell}}."""
    with open(os.path.join(ROOT, "docs", "install.md")) as fh:
        text = fh.read()
    block = text.split("<!-- tested-versions -->")[1].split("<!-- /tested-versions -->")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in block.strip().splitlines()]
    header, body = rows[0], rows[2:]
    return {row[0]: dict(zip(header, row)) for row in body}


def test_install_doc_table_is_what_the_files_pin():
    table = install_doc_table()
    assert sorted(table) == [python_of(f) for f in FILES]
    for path in FILES:
        _, pins = read_constraints(path)
        row = table[python_of(path)]
        for column, cell in row.items():
            if column in ("Python", "CI runs"):
                continue
            for name in column.split(", "):
                pinned = pins.get(canonicalize_name(name))
                shown = None if cell == "-" else cell.split()[0]
                assert shown == (pinned and str(pinned)), \
                    f"docs/install.md, Python {row['Python']}, {name}: {cell!r}; " \
                    f"{os.path.basename(path)} pins {pinned}"
