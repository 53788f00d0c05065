"""Re-running a finished run through the real command line: it trains nothing, says so,
prints the saved summary, and the summary keeps the original wall time and segments."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A zoo model pair small enough for a subprocess run (registered without kd_jax.train.testing).
ARGS = ["--config", "configs/cifar_kd.py:resnet32x4-resnet8x4", "--config.student.arch=resnet8",
        "--config.teacher.arch=resnet8", "--config.teacher.checkpoint=random",
        "--config.dataset.name=synthetic", "--config.dataset.num_train=16",
        "--config.dataset.num_test=8", "--config.dataset.image_size=8",
        "--config.dataset.num_classes=10", "--config.batch_size=8", "--config.num_epochs=1",
        "--config.tensorboard=False", "--config.export_model=False"]


def run(workdir):
    return subprocess.run([sys.executable, "-m", "kd_jax.main", *ARGS, "--workdir", workdir],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_rerun_of_a_finished_run_trains_nothing(tmp_path):
    wd = str(tmp_path / "run")
    first = run(wd)
    assert first.returncode == 0, first.stderr
    with open(os.path.join(wd, "summary.json")) as fh:
        summary = json.load(fh)
    with open(os.path.join(wd, "metrics.jsonl")) as fh:
        records = fh.read()
    second = run(wd)
    assert second.returncode == 0, second.stderr
    assert f"{wd} holds a finished run (step 2 of 2); nothing to do" in second.stdout
    assert "resuming" not in second.stderr and "Traceback" not in second.stderr
    assert f"wall time (s)            {summary['wall_time_s']:.1f}" in second.stdout
    with open(os.path.join(wd, "summary.json")) as fh:
        assert json.load(fh) == summary      # the original wall time and its one segment
    assert len(summary["segments"]) == 1 and summary["wall_time_s"] > 0
    with open(os.path.join(wd, "metrics.jsonl")) as fh:
        assert fh.read() == records          # nothing trained or evaluated again
