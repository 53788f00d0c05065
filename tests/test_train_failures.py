"""When things go wrong: non-finite weights, out-of-range config numbers, unfinished exports,
stops between seeds, the workdir lock, damaged checkpoints and failed saves.

Tiny KD runs (tiny_cnn <- random tiny_cnn_wide, batch 8) on synthetic data, as in
tests/test_train_resume.py (whose tiny_config they share).
"""

import math
import os

import jax
import numpy as np
import pytest

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax.train import config_validation, exports, finite, schedules, trainer
from kd_jax.train.checkpoint import Checkpointer
from kd_jax.train.config_validation import ConfigError
from test_train_resume import tiny_config


def all_finite(state) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


# --- (1) weights checked, not only losses ---------------------------------------------------

def one_step_epochs(total_steps):
    """One step per epoch (8 images, batch 8): the lr changes at every step."""
    c = tiny_config(total_steps)
    c.dataset.num_train = 8
    c.num_epochs, c.log_every_steps = total_steps, 100
    return c


def test_weights_made_non_finite_by_a_finite_loss_are_never_saved(tmp_path, monkeypatch):
    """The lr turns inf at epoch 2: step 2's loss is finite but its update makes the weights
    NaN. The run stops before saving step 2, naming checkpoint 1; resuming with a sane lr
    from it finishes with finite weights."""
    real_lr = schedules.learning_rate
    monkeypatch.setattr(schedules, "learning_rate",
                        lambda o, n, epoch: math.inf if epoch >= 2 else real_lr(o, n, epoch))
    wd = str(tmp_path)
    with pytest.raises(finite.NonFiniteError,
                       match=r"non-finite weights at step 2 \(epoch 2\): [\d,]+ of [\d,]+ values"
                             r".*Stopped without saving; the last good checkpoint is step 1"):
        trainer.train(one_step_epochs(3), wd)
    assert Checkpointer(wd).latest_step() == 1
    monkeypatch.undo()
    summary, state = trainer.train(one_step_epochs(3), wd)
    assert summary["finished"] and int(state.step) == 3 and all_finite(state)


def test_non_finite_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(schedules, "learning_rate", lambda o, n, epoch: math.inf)
    with pytest.raises(finite.NonFiniteError, match=r"at step 1 .*no checkpoint was saved yet"):
        trainer.train(one_step_epochs(2), str(tmp_path))
    assert Checkpointer(str(tmp_path)).latest_step() is None


def test_check_state_counts_every_non_finite_value():
    c = tiny_config(1)
    state = trainer.build(c, config_validation.validate(c), 10).state
    finite.check_state(state, step=0, epoch=1, lockstep=False, latest_step=None, directory="d")
    leaves, treedef = jax.tree.flatten(state)
    poisoned = [np.where(np.arange(x.size).reshape(x.shape) < 3, np.nan, x)
                if np.issubdtype(x.dtype, np.floating) and x.size > 5 and i == 3 else x
                for i, x in enumerate(map(np.asarray, leaves))]
    with pytest.raises(finite.NonFiniteError, match=r"weights at step 7 \(epoch 2\): 3 of "):
        finite.check_state(jax.tree.unflatten(treedef, poisoned), step=7, epoch=2,
                           lockstep=False, latest_step=None, directory="d")


@pytest.mark.parametrize("key, value, message", [
    ("optimizer.lr", math.inf, r"optimizer.lr=inf: expected a finite number"),
    ("optimizer.lr", math.nan, r"optimizer.lr=nan: expected a finite number"),
    ("method.temperature", math.inf, r"method.temperature=inf: expected a finite number"),
    ("method.ce_weight", math.inf, r"method.ce_weight=inf: expected a finite number"),
    ("optimizer.decay_rate", math.nan, r"optimizer.decay_rate=nan: expected a finite"),
    ("optimizer.decay_rate", -1.0, r"optimizer.decay_rate=-1.0: expected in \(0, 1\]"),
    ("optimizer.weight_decay", math.inf, r"optimizer.weight_decay=inf: expected a finite"),
    ("dataset.num_classes", 0, r"dataset.num_classes=0: expected an integer > 0"),
    ("dataset.num_classes", 1, r"dataset.num_classes=1: expected >= 2"),
    ("dataset.image_size", 1, r"dataset.image_size=1: smaller than the 2x downsampling of "
                              r"student.arch='tiny_cnn'; use at least 2"),
])
def test_validation_rejects_non_finite_and_out_of_range_numbers(key, value, message):
    c = tiny_config(1)
    group, name = key.rsplit(".", 1)
    c[group][name] = value
    with pytest.raises(ConfigError, match=message):
        config_validation.validate(c, num_devices=1)


def test_eval_batch_larger_than_the_test_set_is_capped_to_it(tmp_path):
    """eval_batch_size=1e8 would allocate 1e8 padded images on the host: the evaluation uses
    one batch of the whole test set instead, with the same result."""
    c = tiny_config(1)
    c.eval_batch_size = 10 ** 8
    summary, _ = trainer.train(c, str(tmp_path / "capped"))
    c.eval_batch_size = 8
    want, _ = trainer.train(c, str(tmp_path / "eight"))
    assert summary["last_top1"] == want["last_top1"] and summary["finished"]


# --- (2) export is part of finishing --------------------------------------------------------

def exporting_config(total_steps=2):
    c = tiny_config(total_steps)
    c.export_model = True
    return c


def test_export_cut_short_by_a_full_disk_is_redone_by_the_rerun(tmp_path, monkeypatch, capsys):
    """A full disk during the export: one StorageError naming the directory and the cause,
    the last checkpoint kept, no finished summary; the rerun exports from that checkpoint,
    says so, and the model loads."""
    import errno

    from kd_jax import convert
    from kd_jax.train import summary as summary_lib
    from kd_jax.errors import StorageError

    real_save = exports.convert.save_converted

    def full_disk(model, out_dir, meta, overwrite=False):
        if not out_dir.endswith(f"{trainer.FINAL_MODEL_DIR}.tmp"):   # best_model/: as usual
            return real_save(model, out_dir, meta, overwrite)
        os.makedirs(os.path.join(out_dir, "state.orbax-checkpoint-tmp-1"), exist_ok=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(exports.convert, "save_converted", full_disk)
    wd = str(tmp_path)
    with pytest.raises(StorageError, match=rf"could not export the model to {wd}/final_model: No space "
                                           r"left on device \(disk full\); checkpoint step 2 in "
                                           r".* is kept"):
        trainer.train(exporting_config(), wd)
    saved = summary_lib.read_json(os.path.join(wd, summary_lib.SUMMARY_FILE))
    assert saved is None or not saved["finished"]
    monkeypatch.undo()
    capsys.readouterr()
    summary, _ = trainer.train(exporting_config(), wd)
    out = capsys.readouterr().out
    assert "whose export is missing or partial" in out and "exporting it again from " \
        "checkpoint step 2" in out
    assert summary["finished"] and summary["steps"] == 2
    convert.load_teacher(os.path.join(wd, trainer.FINAL_MODEL_DIR), "tiny_cnn", 10)
    capsys.readouterr()
    trainer.train(exporting_config(), wd)     # now complete: nothing to do
    assert "nothing to do" in capsys.readouterr().out


def test_rerun_redoes_a_deleted_or_partial_export(tmp_path, capsys):
    """Killed after the last checkpoint: final_model missing, or teacher.json not written."""
    import shutil

    wd = str(tmp_path)
    trainer.train(exporting_config(), wd)
    final = os.path.join(wd, trainer.FINAL_MODEL_DIR)
    for damage in (lambda: shutil.rmtree(final),
                   lambda: os.remove(os.path.join(final, "teacher.json"))):
        damage()
        capsys.readouterr()
        trainer.train(exporting_config(), wd)
        assert "exporting it again" in capsys.readouterr().out
        assert os.path.isfile(os.path.join(final, "teacher.json"))


# --- (3) stops respected after the last step and between seeds ------------------------------

@pytest.mark.parametrize("where", ["last_evaluation", "final_checkpoint"])
def test_sigterm_after_the_last_step_of_a_seed_stops_before_the_next(tmp_path, monkeypatch,
                                                                     where):
    """SIGTERM during seed 0's last evaluation or final checkpoint: seed 0 finishes (its step
    is the last), then the run stops with RunStopped instead of training seed 1; the same
    command then skips seed 0 and trains seed 1."""
    import signal

    from kd_jax.train import seeds

    c = tiny_config(3)
    c.seeds = "0,1"
    hooked = trainer._evaluate if where == "last_evaluation" else trainer._save
    name = hooked.__name__

    def signalling(s, loop, *args):
        if loop.step == s.total_steps and s.config.seed == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return hooked(s, loop, *args)

    monkeypatch.setattr(trainer, name, signalling)
    with pytest.raises(trainer.RunStopped, match=r"SIGTERM: seed 0 finished; stopped before "
                                                 r"seed 1; run the same command") as e:
        seeds.run_seeds(c, str(tmp_path))
    assert e.value.signum == signal.SIGTERM
    assert os.path.isdir(tmp_path / "seed_0") and not os.path.exists(tmp_path / "seed_1")
    assert Checkpointer(str(tmp_path / "seed_0")).latest_step() == 3
    monkeypatch.undo()
    result = seeds.run_seeds(c, str(tmp_path))
    assert result["finished"] and result["seeds"] == [0, 1]


# --- (4) one run per workdir ----------------------------------------------------------------

HOLDER = ("import sys, time; from kd_jax.train import workdir_lock\n"
          "with workdir_lock.hold(sys.argv[1]):\n"
          "    print('held', flush=True); time.sleep(600)\n")


def start_holder(wd):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, wd], cwd=root,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_live_workdir_is_refused_then_a_stale_lock_is_taken_over(
        tmp_path, capsys):
    import signal

    from kd_jax.train import workdir_lock

    wd = str(tmp_path / "run")
    holder = start_holder(wd)
    try:
        with pytest.raises(workdir_lock.WorkdirInUse,
                           match=rf"--workdir {wd} is in use by a run of pid {holder.pid} on "
                                 r"host .* one run per workdir"):
            trainer.train(tiny_config(1), wd)
        assert not os.path.exists(os.path.join(wd, "checkpoints"))   # nothing touched
        os.kill(holder.pid, signal.SIGKILL)    # the holder dies: its lock file stays, stale
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert os.path.exists(os.path.join(wd, workdir_lock.LOCK_FILE))
    capsys.readouterr()
    summary, _ = trainer.train(tiny_config(1), wd)
    assert summary["finished"]
    assert (f"took over the lock of {wd} left by pid {holder.pid}" in capsys.readouterr().err)
    assert not os.path.exists(os.path.join(wd, workdir_lock.LOCK_FILE))   # released on exit


def test_lock_is_exclusive_and_released(tmp_path):
    from kd_jax.train import workdir_lock

    wd = str(tmp_path / "new")
    with workdir_lock.hold(wd):
        with pytest.raises(workdir_lock.WorkdirInUse, match=rf"pid {os.getpid()} on host"):
            with workdir_lock.hold(wd):
                pass
    assert not os.path.exists(wd)     # created for the lock, left empty: removed
    with workdir_lock.hold(wd):       # free again
        pass


def test_cli_refuses_a_live_workdir_in_one_line(tmp_path):
    import subprocess
    import sys

    from test_cli_rerun import ARGS, ROOT

    wd = str(tmp_path / "run")
    holder = start_holder(wd)
    try:
        r = subprocess.run([sys.executable, "-m", "kd_jax.main", *ARGS, "--workdir", wd],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"kd_jax: error: --workdir {wd} is in use by a run of pid {holder.pid}"), r.stderr


# --- (6) damaged checkpoints ----------------------------------------------------------------

def _files(path):
    return [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]


def _data_files(step_dir):
    return [f for f in _files(os.path.join(step_dir, "state")) if f"{os.sep}d{os.sep}" in f]


def _delete_data(step_dir):
    for f in _data_files(step_dir):
        os.remove(f)


def _truncate_data(step_dir):
    for f in _data_files(step_dir):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _flip_bytes(step_dir):
    for f in _data_files(step_dir):
        with open(f, "r+b") as fh:
            data = bytearray(fh.read())
            for i in range(0, len(data), 7):
                data[i] ^= 0xFF
            fh.seek(0)
            fh.write(data)


def _garbage_metadata(step_dir):
    for name in (os.path.join("meta", "metadata"), os.path.join("state", "_METADATA")):
        with open(os.path.join(step_dir, name), "w") as fh:
            fh.write("{not json")


def _missing_state(step_dir):
    import shutil
    shutil.rmtree(os.path.join(step_dir, "state"))


@pytest.fixture(scope="module")
def finished_6(tmp_path_factory):
    """6 steps (checkpoints at 3 and 6), uninterrupted: the workdir and the final state."""
    wd = str(tmp_path_factory.mktemp("finished_6"))
    _, state = trainer.train(tiny_config(6), wd)
    return wd, state


@pytest.mark.parametrize("damage", [_delete_data, _truncate_data, _flip_bytes,
                                    _garbage_metadata, _missing_state])
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_resumes(
        tmp_path, finished_6, damage, capsys):
    import shutil

    from test_train_resume import assert_states_equal

    src, want = finished_6
    wd = str(tmp_path / "run")
    shutil.copytree(src, wd)
    damage(os.path.join(wd, "checkpoints", "6"))
    capsys.readouterr()
    summary, state = trainer.train(tiny_config(6), wd)
    err = capsys.readouterr().err
    assert (f"kd_jax: note: checkpoint step 6 cannot be restored (" in err
            and f"); set aside as {wd}/damaged_checkpoints/6, resuming from step 3" in err), err
    assert os.path.isdir(os.path.join(wd, "damaged_checkpoints", "6"))   # kept, not deleted
    assert summary["finished"] and int(state.step) == 6
    assert_states_equal(state, want)      # steps 4-6 retrained exactly


def test_no_restorable_checkpoint_is_one_error_and_nothing_moves(tmp_path, finished_6):
    import shutil

    from kd_jax.train.checkpoint import DamagedCheckpointError

    src, _ = finished_6
    wd = str(tmp_path / "run")
    shutil.copytree(src, wd)
    for step in ("3", "6"):
        _missing_state(os.path.join(wd, "checkpoints", step))
    with pytest.raises(DamagedCheckpointError, match=r"checkpoint step 6 in .* cannot be "
                                                     r"restored \(.*\), and no older one can"):
        trainer.train(tiny_config(6), wd)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]


def test_a_save_that_fails_on_a_full_disk_is_one_line_and_keeps_the_previous(tmp_path,
                                                                           monkeypatch):
    """The save of step 6 fails (orbax re-raises the writer's ENOSPC as a plain message):
    one StorageError naming the directory, the cause and the kept step 3; the same command
    then resumes from step 3."""
    import orbax.checkpoint as ocp

    from kd_jax.errors import StorageError

    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 6:
            raise ValueError("Failed to write checkpoint: OSError: [Errno 28] No space left "
                             "on device: '/ckpt/6.orbax-checkpoint-tmp/state'")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    wd = str(tmp_path)
    with pytest.raises(StorageError, match=rf"could not save checkpoint step 6 in "
                                           rf"{wd}/checkpoints: No space left on device "
                                           r"\(disk full\); checkpoint step 3 in .* is kept"):
        trainer.train(tiny_config(6), wd)
    monkeypatch.undo()
    assert Checkpointer(wd).latest_step() == 3
    summary, state = trainer.train(tiny_config(6), wd)
    assert summary["finished"] and int(state.step) == 6


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted at tmp_path/disk: a real disk that a test can fill."""
    import pathlib

    import faults

    with faults.tmpfs(str(tmp_path / "disk"), "4m", "the patched full-disk tests above"
                      ) as disk:
        yield pathlib.Path(disk)


def test_a_really_full_disk_at_a_save_is_one_line_and_the_run_goes_on_after(small_disk):
    """The same as above on a real full disk: the run checkpoints step 3, a file then takes
    all but 16 KiB of the disk (room for the logs, not for a checkpoint), so the save of step
    6 fails with the writer's own ENOSPC. The user sees one StorageError; step 3 is kept;
    once the space is freed the same command finishes the run."""
    from kd_jax.errors import StorageError

    wd = str(small_disk / "run")
    trainer.train(tiny_config(3), wd)
    free = os.statvfs(small_disk)
    with open(small_disk / "filler", "wb") as fh:
        fh.write(b"\0" * (free.f_bavail * free.f_frsize - 16 * 1024))
    with pytest.raises(StorageError, match=rf"could not save checkpoint step 6 in "
                                           rf"{wd}/checkpoints: No space left on device "
                                           r"\(disk full\); checkpoint step 3 in .* is kept"):
        trainer.train(tiny_config(6), wd)
    assert Checkpointer(wd).latest_step() == 3
    os.remove(small_disk / "filler")
    summary, state = trainer.train(tiny_config(6), wd)
    assert summary["finished"] and int(state.step) == 6
    assert Checkpointer(wd).latest_step() == 6


# --- (7) rough edges ------------------------------------------------------------------------

def test_metrics_hold_each_step_once_after_a_resume(tmp_path):
    """A killed run logged steps 4-5 after its step-3 checkpoint (and a torn line); the
    resumed run trains them again and each step is logged once."""
    import json

    from test_train_resume import train_steps_logged

    wd = str(tmp_path)
    c = tiny_config(5)
    c.log_every_steps = 1
    trainer.train(dataclasses_copy(c, total_steps=3), wd)
    with open(os.path.join(wd, "metrics.jsonl"), "a") as fh:   # what the killed run wrote
        for step in (4, 5):
            fh.write(json.dumps({"step": step, "kind": "train", "loss": 1.0}) + "\n")
        fh.write('{"step": 6, "ki')
    trainer.train(c, wd)
    assert train_steps_logged(wd) == [1, 2, 3, 4, 5]


def dataclasses_copy(config, **changes):
    import copy
    c = copy.deepcopy(config)
    for k, v in changes.items():
        c[k] = v
    return c


def test_truncated_gz_idx_file_is_one_error_naming_it(tmp_path):
    import gzip

    from kd_jax.data.base import DataFileError
    from kd_jax.data.fashion_mnist import read_idx

    path = str(tmp_path / "train-images-idx3-ubyte.gz")
    header = bytes([0, 0, 8, 3]) + (100).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    blob = gzip.compress(header + bytes(100 * 28 * 28))
    with open(path, "wb") as fh:
        fh.write(blob[:len(blob) // 2])
    with pytest.raises(DataFileError, match=rf"{path}: cannot be read \(EOFError.*truncated"):
        read_idx(path)


def test_convert_of_a_file_that_is_not_a_torch_checkpoint_is_one_line(tmp_path, capsys):
    """Without PyTorch (kd_jax.convert.pth reads .pth files): text, binary bytes and a pickle
    of something else are each one line naming the file and what it is not, exit 2."""
    import pickle

    from kd_jax.convert.__main__ import main

    for content in (b"hello, not torch\n", bytes(range(256)) * 40, pickle.dumps({"a": 1})):
        path = tmp_path / "model.pth"
        path.write_bytes(content)
        assert main(["--arch", "tiny_cnn", "--num-classes", "10", str(path),
                     str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"kd_jax: error: {path}: not a PyTorch checkpoint: neither a zip archive "
                       "nor a tar file nor a pickle stream opening with torch.save's magic "
                       f"number (it starts with {content[:16]!r}); expected a .pth file written "
                       "by torch.save"], err
        assert not (tmp_path / "out").exists()


def test_out_of_memory_is_one_line_naming_the_batch(monkeypatch, capsys, tmp_path):
    from kd_jax import main as main_lib

    def oom(config, workdir):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                         "allocate 68719476736 bytes.\nBufferAssignment...")

    monkeypatch.setattr(main_lib, "run", oom)
    with pytest.raises(SystemExit) as e:
        main_lib.main(["kd_jax.main", "--config", "configs/cifar_kd.py:resnet32x4-resnet8x4",
                       "--config.batch_size=4096", "--workdir", str(tmp_path / "w")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "kd_jax: error: out of device memory with batch_size=4096 (global, eval_batch_size="
        "4096) (RESOURCE_EXHAUSTED: Out of memory while trying to allocate 68719476736 "
        "bytes.): lower --config.batch_size"), err


def test_results_marks_unfinished_runs_and_names_a_broken_summary(tmp_path, capsys):
    import json

    from kd_jax import results

    base = {"method": "KD", "teacher": "resnet32x4", "student": "ShuffleV1",
            "dataset": "cifar100", "best_top1": 73.0, "last_top1": 72.0,
            "published_top1": 74.07}
    for name, finished in (("done", True), ("stopped", False)):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "summary.json").write_text(json.dumps(dict(base, finished=finished)))
    assert results.main([str(tmp_path / "done"), str(tmp_path / "stopped")]) == 0
    out, err = capsys.readouterr()
    assert "| done | KD |" in out and "| stopped (unfinished) | KD |" in out
    assert "not finished (stopped, or seeds missing): stopped" in err
    os.makedirs(tmp_path / "broken")
    (tmp_path / "broken" / "summary.json").write_text(json.dumps(base)[:40])
    assert results.main([str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'broken' / 'summary.json'}: not valid JSON" in err[0]


def test_lockstep_rerun_redoes_the_export_of_the_student_that_lacks_it(tmp_path, capsys):
    """A lockstep run is finished only when every student's export is complete."""
    import shutil

    from test_lockstep_seeds import lockstep_config

    wd = str(tmp_path)
    c = lockstep_config(total_steps=2)
    c.export_model = True
    trainer.train(c, wd)
    names = sorted(c.students.keys())
    shutil.rmtree(os.path.join(wd, names[1], trainer.FINAL_MODEL_DIR))
    capsys.readouterr()
    summary, _ = trainer.train(c, wd)
    out = capsys.readouterr().out
    assert (f"whose export is missing or partial ({wd}/{names[1]}/final_model); exporting it "
            "again" in out), out
    assert summary["finished"]
    for name in names:
        assert os.path.isfile(os.path.join(wd, name, trainer.FINAL_MODEL_DIR, "teacher.json"))


def test_sigterm_at_the_end_of_the_quickstart_teacher_stops_before_the_students(
        tmp_path, monkeypatch):
    """The quickstart pipeline: SIGTERM during the teacher's final checkpoint; the teacher
    finishes (and exports), then the pipeline stops instead of training the students."""
    import signal

    from test_cli import cli
    from test_cli_quickstart import idx_dir

    real_save = trainer._save

    def save(s, loop, clock):
        real_save(s, loop, clock)
        if loop.step == s.total_steps and "teacher" in s.workdir:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer, "_save", save)
    wd = str(tmp_path / "run")
    with pytest.raises(trainer.RunStopped, match=r"SIGTERM: the teacher finished; stopped "
                                                 r"before the students"):
        cli("quickstart.py", wd, f"--config.dataset.data_dir={idx_dir(tmp_path)}",
            "--config.dataset.limit_train=64", "--config.dataset.limit_test=32",
            "--config.teacher_limit_train=64", "--config.teacher_epochs=1",
            "--config.teacher_dir=", "--config.seeds=0", "--config.num_epochs=1",
            "--config.batch_size=32", "--config.teacher_arch=tiny_cnn_wide",
            "--config.student_arch=tiny_cnn", "--config.progress_bar=False")
    assert os.path.isfile(os.path.join(wd, "teacher", "final_model", "teacher.json"))
    assert not os.path.exists(os.path.join(wd, "students"))
