"""No module of kd_jax imports a higher layer (docs/ARCHITECTURE.md).

The layer table lives in docs/ARCHITECTURE.md (between its `layers` markers) and is read
from there: one home. Every .py file under kd_jax/ is parsed with ast, function-level
(lazy) imports included; importing `a.b.c` counts as importing `a`, `a.b` and `a.b.c`, since
Python runs each package's __init__ on the way.
"""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "kd_jax")
DOC = os.path.join(ROOT, "docs", "ARCHITECTURE.md")
MARKERS = ("<!-- layers -->", "<!-- /layers -->")

def read_layers(doc: str = DOC) -> dict[str, tuple[int, str]]:
    """{module prefix: (layer number, layer name)} from the doc's table."""
    with open(doc) as fh:
        text = fh.read()
    start, end = (text.find(m) for m in MARKERS)
    assert 0 <= start < end, f"{doc}: no {MARKERS[0]} ... {MARKERS[1]} table"
    layers = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        for prefix in re.findall(r"`([\w.]+)`", cells[2]):
            assert prefix not in layers, f"{prefix} has two rows in {doc}"
            layers[prefix] = (int(cells[0]), cells[1])
    assert layers, f"{doc}: no rows in the layer table"
    return layers


def module_files(package_dir: str = PACKAGE) -> dict[str, str]:
    """{dotted module name: path} of every .py file (a package is its __init__.py)."""
    out = {}
    top = os.path.dirname(package_dir)
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, top)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def imported_modules(name: str, path: str, known: set[str]) -> set[str]:
    """The kd_jax modules that importing `name` (file `path`) runs, anywhere in the file."""
    is_package = path.endswith("__init__.py")
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: from the importing module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets.add(module)
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            targets.update(f"{module}.{a.name}" for a in node.names
                           if f"{module}.{a.name}" in known)
    out = set()
    for t in targets:
        parts = t.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in out if m in known}


def layer_of(module: str, layers: dict) -> tuple[int, str] | None:
    """The layer of the longest prefix row matching `module` (the root row matches only
    itself, so a new top-level module must get its own row)."""
    best = None
    for prefix, layer in layers.items():
        match = module == prefix or ("." in prefix and module.startswith(prefix + "."))
        if match and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def upward_imports(package_dir: str = PACKAGE, doc: str = DOC) -> list[tuple[str, str, str]]:
    """(importer, imported, why) for every import of a higher layer."""
    layers = read_layers(doc)
    files = module_files(package_dir)
    known = set(files)
    out = []
    for name, path in sorted(files.items()):
        mine = layer_of(name, layers)
        for target in sorted(imported_modules(name, path, known)):
            theirs = layer_of(target, layers)
            if mine and theirs and theirs[0] > mine[0]:
                out.append((name, target, f"layer {mine[0]} {mine[1]} imports layer "
                                          f"{theirs[0]} {theirs[1]}"))
    return out


def test_every_module_has_a_layer():
    layers = read_layers()
    missing = [m for m in module_files() if layer_of(m, layers) is None]
    assert not missing, (f"modules with no row in {DOC}'s layer table: {missing}; add each "
                         "to the layer whose modules it may import")


def test_every_row_names_a_module():
    known = set(module_files())
    stale = [p for p in read_layers() if p not in known]
    assert not stale, f"rows of {DOC}'s layer table naming no module of kd_jax: {stale}"


def test_no_module_imports_a_higher_layer():
    found = upward_imports()
    assert not found, "upward imports (see docs/ARCHITECTURE.md):\n" + "\n".join(
        f"{a} -> {b} ({why})" for a, b, why in found)


def test_an_added_upward_import_fails(tmp_path):
    """The check itself: a lazy import of the trainer from a loss module is caught."""
    import shutil

    copy = tmp_path / "kd_jax"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    with open(copy / "losses" / "kd.py", "a") as fh:
        fh.write("\n\ndef _lazy():\n    from kd_jax.train import trainer  # noqa: F401\n")
    found = {(a, b) for a, b, _ in upward_imports(str(copy))}
    assert ("kd_jax.losses.kd", "kd_jax.train.trainer") in found
    assert ("kd_jax.losses.kd", "kd_jax.train") in found


@pytest.mark.parametrize("source, expected", [
    ("from . import common", {"kd_jax", "kd_jax.losses", "kd_jax.losses.common"}),
    ("from .common import kl_rows", {"kd_jax", "kd_jax.losses", "kd_jax.losses.common"}),
    ("import kd_jax.train.step", {"kd_jax", "kd_jax.train", "kd_jax.train.step"}),
    ("from kd_jax import methods, numpy_thing", {"kd_jax", "kd_jax.methods"}),
])
def test_import_resolution(tmp_path, source, expected):
    path = tmp_path / "kd.py"
    path.write_text(f"def f():\n    {source}\n")
    known = set(module_files())
    assert imported_modules("kd_jax.losses.kd", str(path), known) == expected
