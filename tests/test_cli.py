"""The command line, in-process: a few steps of every method on synthetic data.

Tiny models (kd_jax.testing: tiny_cnn student, tiny_cnn_wide random teacher), batch 8,
2 steps; one run with the real resnet14 -> resnet8 checks every output file.
"""

import json
import os
import sys

import numpy as np
import pytest

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax import cli as kd_cli
from kd_jax import main as kd_main
from kd_jax.train.config_validation import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = [
    "--config.dataset.name=synthetic", "--config.dataset.num_train=24",
    "--config.dataset.num_test=12", "--config.dataset.num_classes=10",
    "--config.dataset.image_size=16", "--config.batch_size=8", "--config.total_steps=2",
    "--config.log_every_steps=1", "--config.tensorboard=False", "--config.progress_bar=False",
    "--config.export_model=False",
]


def cli(config_arg, workdir, *overrides):
    """Parses the flags as `python -m kd_jax.main` does and runs; returns the summary.

    kd_jax.cli.parse works on a private FlagValues per call: no global flag state is
    defined, reset or shared between tests."""
    argv = ["kd_jax.main", f"--config={os.path.join(ROOT, 'kd_jax', 'configs', config_arg)}",
            f"--workdir={workdir}", *overrides]
    args = kd_cli.parse(argv)
    return kd_main.run(args.config, args.workdir)


def tiny(config_arg, workdir, *extra, teacher=True):
    models = ["--config.student.arch=tiny_cnn"]
    if teacher:
        models += ["--config.teacher.arch=tiny_cnn_wide", "--config.teacher.checkpoint=random"]
    return cli(config_arg, workdir, *TINY, *models, *extra)


def read_jsonl(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("config_arg,extra,term", [
    ("cifar_teacher.py:resnet8", [], "ce"),
    ("cifar_kd.py", [], "kd"),
    ("cifar_dkd.py", [], "tckd"),
    ("cifar_nkd.py", [], "nkd"),
    ("cifar_sdd.py", [], "sd_dkd"),
    ("cifar_sdd.py:resnet32x4-ShuffleV1,kd", [], "sd_kd"),
    ("cifar_sdd.py:resnet32x4-ShuffleV1,nkd", [], "sd_nkd"),
    ("cifar_clkd.py", [], "correlation"),
])
def test_every_method_runs(tmp_path, config_arg, extra, term):
    summary = tiny(config_arg, str(tmp_path), *extra, teacher="teacher" not in config_arg)
    assert summary["finished"] and summary["steps"] == 2
    assert 0.0 <= summary["last_top1"] <= 100.0 and summary["last_top5"] >= summary["last_top1"]
    train = [r for r in read_jsonl(str(tmp_path)) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in train)
    assert term in train[0], sorted(train[0])


def test_real_models_and_outputs(tmp_path):
    """resnet14 -> resnet8 (the zoo), TensorBoard on, 3 steps over an epoch boundary."""
    wd = str(tmp_path)
    summary = cli("cifar_kd.py", wd, *TINY, "--config.student.arch=resnet8",
                  "--config.teacher.arch=resnet14", "--config.teacher.checkpoint=random",
                  "--config.dataset.image_size=32", "--config.dataset.num_train=16",
                  "--config.total_steps=3", "--config.tensorboard=True",
                  "--config.export_model=True")
    assert summary["finished"] and summary["steps"] == 3 and summary["epochs_evaluated"] == 2
    with open(os.path.join(wd, "summary.json")) as fh:
        assert json.load(fh)["best_top1"] == summary["best_top1"]
    records = read_jsonl(wd)
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 3]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tb")))
    assert os.path.isdir(os.path.join(wd, "checkpoints", "3"))
    # The exported student loads back as a teacher.
    from kd_jax import convert
    model = convert.load_teacher(os.path.join(wd, "final_model"), "resnet8", 10)
    assert model.head.kernel[...].shape == (64, 10)


def test_missing_teacher_checkpoint_fails_early(tmp_path, monkeypatch):
    # The CIFAR-100 configs default to teacher.checkpoint=published: with no teachers
    # fetched, one line names the command that fetches the pair's teacher.
    monkeypatch.setenv("KD_JAX_TEACHERS", str(tmp_path / "teachers"))
    with pytest.raises(ConfigError, match=(
            r"^teacher.checkpoint='published': the published teacher resnet32x4 is not in "
            r".*teachers; fetch it with `python -m kd_jax.teachers fetch resnet32x4`$")):
        cli("cifar_kd.py", str(tmp_path), *TINY)
    with pytest.raises(ConfigError, match="needs teacher.checkpoint"):
        cli("cifar_kd.py", str(tmp_path), *TINY, "--config.teacher.checkpoint=")
    with pytest.raises(ConfigError, match="teacher.checkpoint='/no/such.pth': no such file"):
        cli("cifar_kd.py", str(tmp_path), *TINY, "--config.teacher.checkpoint=/no/such.pth")
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints"))


def test_wrong_teacher_checkpoint_names_the_key(tmp_path):
    torch = pytest.importorskip("torch", reason="needs torch: writing a .pth")
    path = os.path.join(str(tmp_path), "wrong.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, path)   # not a resnet14
    with pytest.raises(ConfigError, match=r"teacher.checkpoint=.*wrong.pth.*resnet14"):
        cli("cifar_kd.py", str(tmp_path / "run"), *TINY, "--config.student.arch=tiny_cnn",
            "--config.teacher.arch=resnet14", f"--config.teacher.checkpoint={path}")


def test_unknown_key_is_rejected(tmp_path):
    with pytest.raises(kd_cli.UsageError, match="unknown config key 'method.beta'"):
        cli("cifar_kd.py", str(tmp_path), *TINY, "--config.method.beta=8")


def test_parses_are_independent(tmp_path):
    """Overrides of one parse do not leak into the next (no shared flag state)."""
    config = os.path.join(ROOT, "kd_jax", "configs", "cifar_kd.py")
    first = kd_cli.parse(["p", f"--config={config}", f"--workdir={tmp_path}",
                          "--config.num_epochs=3", "--config.optimizer.lr=0.5"])
    second = kd_cli.parse(["p", f"--config={config}", f"--workdir={tmp_path}"])
    assert (first.config.num_epochs, first.config.optimizer.lr) == (3, 0.5)
    assert (second.config.num_epochs, second.config.optimizer.lr) == (240, 0.05)
    assert first.config is not second.config


def test_command_line_reports_config_errors_without_traceback(tmp_path):
    """`python -m kd_jax.main` with a bad setting: exit code 2 and one message naming the key."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "kd_jax.main",
         f"--config={os.path.join(ROOT, 'kd_jax', 'configs', 'cifar_kd.py')}",
         f"--workdir={tmp_path}", "--config.dataset.name=synthetic",
         "--config.teacher.checkpoint="],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "kd_jax: error: method.name='kd' needs teacher.checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_progress_is_plain_lines_in_a_log(tmp_path, capsys):
    """stderr is not a terminal here: one line per logging interval, no bar."""
    tiny("cifar_kd.py", str(tmp_path), "--config.progress_bar=True")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"], err
    assert all(" epoch 1 loss " in line and " img/s " in line for line in lines)
    assert "\r" not in err and "%|" not in err
    assert err.splitlines()[0].startswith("KD: tiny_cnn_wide -> tiny_cnn")
