"""benchmarks/codebase_metrics.py: its counts on a hand-made tree, and its frame chain."""

import os

import pytest

import repo_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics():
    return repo_files.load(os.path.join("benchmarks", "codebase_metrics.py"))


def test_lines_and_longest_functions_of_a_small_tree(tmp_path):
    m = _metrics()
    (tmp_path / "kd_jax" / "train").mkdir(parents=True)
    (tmp_path / "kd_jax" / "train" / "a.py").write_text("x = 1\ny = 2\nz = 3\n")
    (tmp_path / "kd_jax" / "train" / "b.py").write_text("w = 1\n")
    (tmp_path / "kd_jax" / "c.py").write_text(
        "def outer():\n"          # 1: outer, lines 1-6 (6 lines)
        "    def inner():\n"      # 2: outer.<locals>.inner, lines 2-4 (3 lines)
        "        a = 1\n"
        "        return a\n"
        "    b = 2\n"
        "    return inner\n"
        "\n"
        "class K:\n"
        "    def method(self):\n"  # 9: K.method, lines 9-10 (2 lines)
        "        return 1\n")
    assert m.train_file_lines(str(tmp_path)) == [
        (os.path.join("kd_jax", "train", "a.py"), 3), (os.path.join("kd_jax", "train", "b.py"), 1)]
    c = os.path.join("kd_jax", "c.py")
    assert m.functions(str(tmp_path)) == [
        (6, "outer", c, 1), (3, "outer.<locals>.inner", c, 2), (2, "K.method", c, 9)]


@pytest.mark.parametrize("name, is_kl", [
    ("kl_rows", True), ("kl", True), ("sym_kl_div", True), ("nckd_loss", False),
    ("kld", False), ("tckd_stable", False)])
def test_kl_function_names(name, is_kl):
    assert bool(_metrics().KL_NAME.search(name)) == is_kl


@pytest.mark.slow
def test_frames_from_the_step_to_the_kl():
    """Runs the measure on this tree: the chain starts in the train step, passes through
    SDD's loss and DKD, and ends at the KL function."""
    r = _metrics().frames(ROOT)
    assert "error" not in r, r.get("error")
    chain = r["kd_jax"]
    assert chain[0][0] == os.path.join("kd_jax", "train", "step.py")
    assert chain[-1][1] == r["kl"].rsplit(".", 1)[1]
    files = [path for path, _ in chain]
    assert os.path.join("kd_jax", "methods", "sdd.py") in files
    assert os.path.join("kd_jax", "losses", "dkd.py") in files
    assert len(r["all"]) >= len(chain)
