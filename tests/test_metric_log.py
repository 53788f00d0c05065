"""MetricLog's progress output: a tqdm bar on a terminal, plain lines in a log file."""

import os
import re
import sys
import types

import numpy as np
import pytest

from kd_jax.train import metric_log
from kd_jax.train.metric_log import MetricLog

LINE = re.compile(r"^step \d+/\d+ epoch \d+ loss \d+\.\d{4} img/s \d+\.\d eta \d+:\d\d:\d\d$")


@pytest.fixture
def clock(monkeypatch):
    """A controllable time.perf_counter for metric_log."""
    now = [0.0]
    monkeypatch.setattr(metric_log, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def test_plain_lines_when_not_a_terminal(tmp_path, capsys, clock):
    log = MetricLog(str(tmp_path), tensorboard=False, total_steps=100, interactive=False)
    log.message("KD: header")
    clock[0] = 10.0   # the first interval: 10 steps in 10 s (compilation included)
    log.progress(10, loss=2.345678, img_s=312.44, epoch=1)
    clock[0] = 12.0   # then 10 steps in 2 s: 80 steps left -> 16 s
    log.progress(10, loss=2.0, img_s=1000.0, epoch=1)
    log.message("epoch 1 step 20: test top-1 1.00")
    log.close()
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "KD: header",
        "step 10/100 epoch 1 loss 2.3457 img/s 312.4 eta 0:01:30",
        "step 20/100 epoch 1 loss 2.0000 img/s 1000.0 eta 0:00:16",
        "epoch 1 step 20: test top-1 1.00",
    ]
    assert "\r" not in err and "%|" not in err


def test_auto_mode_follows_stderr(tmp_path, capsys, monkeypatch):
    """Under pytest's capture stderr is no terminal: lines. A terminal gets the bar."""
    log = MetricLog(str(tmp_path), tensorboard=False, total_steps=40, initial_step=20)
    log.progress(5, loss=1.5, img_s=100.0, epoch=3)
    log.close()
    (line,) = capsys.readouterr().err.splitlines()
    assert LINE.match(line) and line.startswith("step 25/40 epoch 3 loss 1.5000"), line

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    log = MetricLog(str(tmp_path), tensorboard=False, total_steps=40)
    assert log._bar is not None
    log.close()


def test_bar_on_a_terminal(tmp_path, capsys):
    log = MetricLog(str(tmp_path), tensorboard=False, total_steps=100, interactive=True)
    log.message("KD: header")
    log.progress(50, loss=2.5, img_s=300.0, epoch=1)
    log.close()
    err = capsys.readouterr().err
    assert "KD: header" in err and "50/100" in err and "%|" in err
    assert "step 50/100 epoch" not in err


def test_no_progress_output_when_disabled(tmp_path, capsys):
    log = MetricLog(str(tmp_path), tensorboard=False, progress_bar=False, total_steps=10)
    log.progress(5, loss=1.0, img_s=10.0, epoch=1)
    log.message("only this")
    log.close()
    assert capsys.readouterr().err == "only this\n"


def test_crc32c_known_value():
    # The CRC-32C check value of the Castagnoli polynomial (RFC 3720, B.4).
    from kd_jax.train import tb_events
    assert tb_events.crc32c(b"123456789") == 0xE3069283
    assert tb_events.crc32c(bytes(32)) == 0x8A9136AA


def test_tensorboard_events_read_back_by_tensorflow(tmp_path):
    """The event file, written without TensorFlow, read by TensorFlow's own record reader
    (checks every CRC) and parsed as Event protos: the scalars TensorBoard shows."""
    tf = pytest.importorskip("tensorflow", reason="needs tensorflow: reading the events back")
    log = MetricLog(str(tmp_path), tensorboard=True, progress_bar=False)
    log.write(5, "train", {"loss": 2.5, "lr": np.float32(0.05), "name": "x", "ok": True})
    log.write(7, "eval", {"top1": 61.25, "step_count": -3})
    log.close()
    (path,) = [os.path.join(tmp_path, "tb", f) for f in os.listdir(tmp_path / "tb")]
    events = [tf.compat.v1.Event.FromString(r.numpy())
              for r in tf.data.TFRecordDataset(path)]
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert scalars == [(5, "train/loss", 2.5), (5, "train/lr", np.float32(0.05)),
                       (7, "eval/top1", 61.25), (7, "eval/step_count", -3.0)]
    assert all(e.wall_time > 1.7e9 for e in events)
