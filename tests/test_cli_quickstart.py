"""The quickstart pipeline end to end on a tiny Fashion-MNIST slice read from IDX files.

Uses /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist) when present, else
writes a small IDX set itself; tiny models (tiny_cnn_wide teacher, tiny_cnn students), one
epoch, batch 32: the point is the pipeline (teacher, lockstep students over seeds, verdict,
table, plot).
"""

import json
import os

import numpy as np

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
import repo_files
from test_cli import cli

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array):
    """IDX: 0, 0, type 0x08 (uint8), ndim, then big-endian int32 dims, then the bytes."""
    with open(path, "wb") as fh:
        fh.write(bytes([0, 0, 0x08, array.ndim]))
        for dim in array.shape:
            fh.write(int(dim).to_bytes(4, "big"))
        fh.write(array.astype(np.uint8).tobytes())


def idx_dir(tmp_path):
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if all(os.path.exists(os.path.join(DEBIAN_DIR, n)) or
           os.path.exists(os.path.join(DEBIAN_DIR, n + ".gz")) for n in names):
        return DEBIAN_DIR
    rng = np.random.default_rng(0)
    d = tmp_path / "fmnist"
    d.mkdir()
    for prefix, n in (("train", 256), ("t10k", 128)):
        labels = rng.integers(0, 10, n)
        # Class-dependent brightness, so that something is learnable.
        images = rng.integers(0, 64, (n, 28, 28)) + 18 * labels[:, None, None]
        write_idx(str(d / f"{prefix}-images-idx3-ubyte"), images)
        write_idx(str(d / f"{prefix}-labels-idx1-ubyte"), labels)
    return str(d)


def test_quickstart_pipeline(tmp_path, capsys):
    """Teacher retrained (no shipped one), five lockstep students over two seeds, the verdict."""
    wd = str(tmp_path / "run")
    summary = cli("quickstart.py", wd, f"--config.dataset.data_dir={idx_dir(tmp_path)}",
                  "--config.dataset.limit_train=128", "--config.dataset.limit_test=96",
                  "--config.teacher_limit_train=256", "--config.teacher_epochs=1",
                  "--config.teacher_dir=", "--config.seeds=0,1",
                  "--config.num_epochs=1", "--config.eval_every_epochs=1",
                  "--config.batch_size=32", "--config.eval_batch_size=64",
                  "--config.teacher_arch=tiny_cnn_wide", "--config.student_arch=tiny_cnn",
                  "--config.progress_bar=False", "--config.log_every_steps=4")
    students = summary["students"]
    assert list(students) == ["ce", "sd_dkd", "sd_kd"]
    assert summary["seeds"] == [0, 1] and summary["teacher"]["student"] == "tiny_cnn_wide"
    assert summary["teacher"]["checkpoint"] == os.path.join(wd, "teacher", "final_model")
    for name in students:
        for seed in (0, 1):
            with open(os.path.join(wd, "students", f"seed_{seed}", name, "summary.json")) as fh:
                s = json.load(fh)
            assert s["finished"] and s["steps"] == 4 and s["seed"] == seed
            assert s["teacher"] == (None if name == "ce" else "tiny_cnn_wide")
    # The verdict is the comparison of the printed numbers with the combined spread.
    for name, v in summary["verdict"].items():
        a, b = students[name]["last_top1"], students["ce"]["last_top1"]
        assert v["diff"] == a["mean"] - b["mean"] and v["spread"] == a["std"] + b["std"]
        assert v["verdict"].startswith("beats") == (v["diff"] > v["spread"])
    out = capsys.readouterr().out
    assert "student alone (CE)" in out and "SD-DKD" in out and "\nverdict: " in out
    # The machine that printed it (XLA's CPU code, and so its rounding, depends on it).
    machine = summary["machine"]
    assert machine["platform"] == "cpu" and machine["cores"] == os.cpu_count()
    assert f"\nmachine: {machine['cpu']}, {machine['cores']} cores" in out
    with open(os.path.join(wd, "quickstart_accuracy.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(wd, "quickstart_summary.json")) as fh:
        assert json.load(fh)["students"]["sd_dkd"]["method"] == "SD-DKD"


def test_shipped_teacher_is_intact():
    """The committed teacher matches its recorded sha256 (else the quickstart retrains it)."""
    from kd_jax.recipes import quickstart
    from kd_jax.train import pipeline
    path, why = pipeline.shipped_teacher(quickstart.ASSET_DIR)
    assert path is not None, why


# --- the README's quickstart table, and the check .ci/run makes against it -------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _check_verdict_script():
    """.ci/check_verdict.py (CI code, outside the package), imported by path."""
    return repo_files.load(os.path.join(".ci", "check_verdict.py"))


def _mean_std(cell):
    mean, _, std = cell.partition(" ± ")
    return float(mean), float(std or 0.0)


def test_readme_verdict_follows_from_its_numbers():
    """The README's printed verdicts are the rule applied to the README's printed numbers,
    and its rows are the quickstart's default students (what .ci/run's check compares)."""
    from kd_jax.recipes import quickstart
    check_verdict = _check_verdict_script()

    table = check_verdict.readme_table(README)
    rows = table["rows"]
    assert set(rows) == {"student alone (CE)", "SD-DKD", "SD-KD"}
    assert quickstart.config().students == "ce,sd_kd,sd_dkd"
    base_mean, base_std = _mean_std(rows["student alone (CE)"]["last"])
    beat = []
    for label, row in rows.items():
        if label == "student alone (CE)":
            assert row["vs"] is None and row["verdict"] is None
            continue
        mean, std = _mean_std(row["last"])
        diff, spread = _mean_std(row["vs"])
        assert abs(diff - (mean - base_mean)) <= 0.011 and abs(spread - (std + base_std)) <= 0.011
        assert abs(diff - spread) > 0.05, f"{label}: too close to call at 2 decimals"
        expected = ("beats the student alone" if diff > spread else
                    "is worse than the student alone" if diff < -spread else
                    "no clear difference from the student alone")
        assert row["verdict"] == expected, label
        beat += [label] if diff > spread else []
    assert table["verdict"] == ("verdict: " + ", ".join(sorted(beat)) + " beat the student "
                                "alone by more than the combined spread")


def _summary(verdicts):
    """A quickstart_summary.json of the default students with the given verdict texts."""
    stat = {"mean": 80.0, "std": 0.5, "n": 3}
    students = {"ce": {"method": "CE", "student": "resnet8", "last_top1": stat,
                       "best_top1": stat}}
    for name in verdicts:
        method = {"sd_dkd": "SD-DKD", "sd_kd": "SD-KD", "kd": "KD"}[name]
        students[name] = {"method": method, "student": "resnet8", "last_top1": stat,
                          "best_top1": stat}
    return {"teacher": {"student": "resnet14", "top1": 89.9, "source": "test"},
            "students": students, "seeds": [0, 1, 2],
            "verdict": {n: {"diff": 4.0, "spread": 1.0, "verdict": v}
                        for n, v in verdicts.items()}}


def test_check_verdict_against_the_readme(tmp_path, capsys):
    check_verdict = _check_verdict_script()

    beats = "beats the student alone"
    run = tmp_path / "run"
    run.mkdir()
    argv = [str(run), "--readme", README]
    assert check_verdict.main(argv) == 2
    assert "no quickstart_summary.json" in capsys.readouterr().out

    def check(verdicts):
        with open(run / "quickstart_summary.json", "w") as fh:
            json.dump(_summary(verdicts), fh)
        return check_verdict.main(argv), capsys.readouterr().out

    rc, out = check({"sd_dkd": beats, "sd_kd": beats})
    assert rc == 0 and "same verdict as" in out and "SD-DKD, SD-KD beat" in out
    assert check_verdict.main(argv[:1] + ["--readme", str(tmp_path / "none.md")]) == 2
    assert "cannot read the expected verdict" in capsys.readouterr().out
    rc, out = check({"sd_dkd": beats, "sd_kd": "no clear difference from the student alone"})
    assert rc == 1 and ("SD-KD: the README says 'beats the student alone'; this run: 'no "
                        "clear difference from the student alone'") in out
    assert "SD-DKD:" not in out.split("DIFFERS")[1]
    rc, out = check({"sd_dkd": beats})
    assert rc == 1 and "SD-KD: the README's table has it" in out
    rc, out = check({"sd_dkd": beats, "sd_kd": beats, "kd": beats})
    assert rc == 1 and "KD: not in the README's table" in out


def test_readme_without_the_block_is_a_clear_error(tmp_path):
    import pytest
    check_verdict = _check_verdict_script()

    (tmp_path / "README.md").write_text("# no table here\n")
    with pytest.raises(ValueError, match="no <!-- quickstart-output --> ... "):
        check_verdict.readme_table(str(tmp_path / "README.md"))
