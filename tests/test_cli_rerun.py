"""Re-running a finished run through the real command line: it trains nothing, says so,
prints the saved summary, and the summary keeps the original wall time and segments."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A zoo model pair small enough for a subprocess run (registered without kd_jax.testing).
ARGS = ["--config", "cifar_kd.py:resnet32x4-resnet8x4", "--config.student.arch=resnet8",
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


def test_ctrl_c_saves_and_the_same_command_resumes(tmp_path):
    """Ctrl-C (SIGINT) mid-run: one error line naming the saved step, exit code 130; the same
    command then resumes from that step and finishes."""
    import re
    import signal

    wd = str(tmp_path / "run")
    args = [*ARGS, "--config.num_epochs=100", "--config.log_every_steps=1",
            "--config.eval_every_epochs=100", "--workdir", wd]
    # Ctrl-C's handler as in a terminal, whatever this process passes on (a background job
    # inherits SIGINT ignored, and the run then rightly leaves it so).
    main = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
            f" sys.argv = ['kd_jax.main'] + {args!r}; runpy.run_module('kd_jax.main', "
            "run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", main], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:        # progress lines: training has started
            if line.startswith("step "):
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("step ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    m = re.fullmatch(rf"kd_jax: error: stopped by SIGINT: saved step (\d+) of 200 in {wd}; run "
                     r"the same command \(same --workdir\) to resume", lines[0])
    assert m is not None, lines[0]
    step = int(m[1])
    assert 1 <= step < 200
    again = subprocess.run([sys.executable, "-m", "kd_jax.main", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming from step {step} of 200" in again.stdout + again.stderr
    with open(os.path.join(wd, "summary.json")) as fh:
        summary = json.load(fh)
    assert summary["finished"] and summary["steps"] == 200 and len(summary["segments"]) == 2


def test_a_ctrl_c_turned_into_another_error_is_still_an_interrupt():
    """Python re-raises a KeyboardInterrupt from some hooks (class creation in an import) as
    a RuntimeError; the command line still reports an interruption, not a traceback."""
    from kd_jax.main import _caused_by_ctrl_c

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Error calling __set_name__") from e
    except RuntimeError as e:
        assert _caused_by_ctrl_c(e)
    try:
        try:
            raise KeyError("x")
        except KeyError:
            raise ValueError("y")
    except ValueError as e:
        assert not _caused_by_ctrl_c(e)
    # A library that hides the interrupt behind its own error (`raise ... from None`): the
    # user still pressed Ctrl-C.
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("partially initialized module") from None
    except ImportError as e:
        assert _caused_by_ctrl_c(e)
