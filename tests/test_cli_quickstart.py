"""The quickstart pipeline end to end on a tiny Fashion-MNIST slice read from IDX files.

Uses /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist) when present, else
writes a small IDX set itself; tiny models (tiny_cnn_wide teacher, tiny_cnn students), one
epoch, batch 32: the point is the pipeline (teacher, lockstep students over seeds, verdict,
table, plot).
"""

import json
import os

import numpy as np

import kd_jax.train.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
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
