"""kd_jax.train.mirror: the newest finished checkpoint (and the run's small files) packed into
one tar file on the mirror, written under a scratch name and renamed, the previous copy
kept, never a file deleted or replaced (Drive's trash); restored into an empty workdir from
the newest complete copy (a disconnect can cut a write or a rotation anywhere)."""

import os
import tarfile
import time

import pytest

from kd_jax.train import mirror


def fake_run(workdir, steps):
    for step in steps:
        os.makedirs(workdir / "checkpoints" / str(step) / "state", exist_ok=True)
        (workdir / "checkpoints" / str(step) / "state" / "data").write_bytes(bytes(step))
    # An unfinished save (orbax's temporary name) is never the newest.
    os.makedirs(workdir / "checkpoints" / "99.orbax-checkpoint-tmp-1", exist_ok=True)
    (workdir / "config.json").write_text("{}")
    (workdir / "metrics.jsonl").write_text('{"step": 1}\n')


def names(path):
    with tarfile.open(path) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def test_pack_keeps_only_the_newest_checkpoint(tmp_path):
    run, drive = tmp_path / "run", tmp_path / "drive"
    fake_run(run, [4, 8])
    assert mirror.pack(str(run), str(drive)) == 8
    assert names(drive / "run.tar") == ["checkpoints/8/state/data", "config.json",
                                        mirror.MARKER, "metrics.jsonl"]
    fake_run(run, [12])
    mirror.pack(str(run), str(drive))
    assert sorted(os.listdir(drive)) == ["run.json", "run.prev.tar", "run.tar"]
    assert "checkpoints/12/state/data" in names(drive / "run.tar")


def test_restore_into_an_empty_workdir_only(tmp_path):
    run, drive, fresh = tmp_path / "run", tmp_path / "drive", tmp_path / "fresh"
    fake_run(run, [3, 6])
    mirror.pack(str(run), str(drive))
    assert mirror.restore(str(drive), str(fresh)) == 6
    assert (fresh / "checkpoints" / "6" / "state" / "data").read_bytes() == bytes(6)
    assert (fresh / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert mirror.restore(str(drive), str(fresh)) is None   # has its own checkpoints now
    assert mirror.restore(str(tmp_path / "nothing"), str(tmp_path / "x")) is None


def test_mirror_thread_packs_new_checkpoints_and_at_exit(tmp_path):
    run, drive = tmp_path / "run", tmp_path / "drive"
    fake_run(run, [1])
    with mirror.Mirror(str(run), str(drive), every_s=0.05) as m:
        deadline = time.time() + 10
        while m.synced_step != 1 and time.time() < deadline:
            time.sleep(0.05)
        assert m.synced_step == 1
        fake_run(run, [2])
    assert m.synced_step == 2 and "checkpoints/2/state/data" in names(drive / "run.tar")


def packs_without_deleting(monkeypatch):
    """Fails the test if the mirror deletes a file or renames onto an existing one (Drive's
    trash counts against the quota)."""
    real_rename = os.rename

    def rename(src, dst):
        assert not os.path.exists(dst), f"rename onto an existing {dst}"
        real_rename(src, dst)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the mirror deleted or replaced a file: {args}")

    monkeypatch.setattr(os, "rename", rename)
    for name in ("remove", "unlink", "replace"):
        monkeypatch.setattr(os, name, refuse)


def test_pack_rotates_three_copies_and_never_deletes(tmp_path, monkeypatch):
    run, drive = tmp_path / "run", tmp_path / "drive"
    packs_without_deleting(monkeypatch)
    for step in (1, 2, 3, 4, 5):
        fake_run(run, [step])
        assert mirror.pack(str(run), str(drive)) == step
    assert sorted(os.listdir(drive)) == ["run.json", "run.prev.tar", "run.tar", "run.tar.part"]
    assert "checkpoints/5/state/data" in names(drive / "run.tar")
    assert "checkpoints/4/state/data" in names(drive / "run.prev.tar")
    assert "checkpoints/3/state/data" in names(drive / "run.tar.part")   # the next scratch


def test_a_cut_write_leaves_run_tar_whole(tmp_path, monkeypatch):
    """The write of step 8's tar fails half-way (a disconnect): run.tar still holds step 4
    whole, and restore brings back step 4."""
    run, drive = tmp_path / "run", tmp_path / "drive"
    fake_run(run, [4])
    mirror.pack(str(run), str(drive))
    fake_run(run, [8])
    real_add = tarfile.TarFile.add

    def cut(self, name, *args, **kwargs):
        if name.endswith("metrics.jsonl"):
            raise OSError("Transport endpoint is not connected")
        return real_add(self, name, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "add", cut)
    with pytest.raises(OSError, match="not connected"):
        mirror.pack(str(run), str(drive))
    monkeypatch.undo()
    assert "checkpoints/4/state/data" in names(drive / "run.tar")
    assert mirror.restore(str(drive), str(tmp_path / "fresh")) == 4


def test_restore_falls_back_to_the_previous_copy(tmp_path, capsys):
    """run.tar cut short (truncated, as by a copy a disconnect stopped): restore takes
    run.prev.tar and says so; with every copy cut short it starts without one."""
    run, drive = tmp_path / "run", tmp_path / "drive"
    for step in (3, 6):
        fake_run(run, [step])
        mirror.pack(str(run), str(drive))
    size = os.path.getsize(drive / "run.tar")
    with open(drive / "run.tar", "r+b") as fh:
        fh.truncate(size // 2)
    assert mirror.restore(str(drive), str(tmp_path / "fresh")) == 3
    assert "run.tar in " in capsys.readouterr().out
    assert (tmp_path / "fresh" / "checkpoints" / "3" / "state" / "data").read_bytes() == bytes(3)
    assert not (tmp_path / "fresh" / mirror.MARKER).exists()
    with open(drive / "run.prev.tar", "r+b") as fh:
        fh.truncate(1024)
    assert mirror.restore(str(drive), str(tmp_path / "fresher")) is None
    assert "no complete copy" in capsys.readouterr().out


@pytest.mark.parametrize("cut_after", [1, 2, 3])
def test_a_cut_rotation_restores_the_newest_and_heals(tmp_path, monkeypatch, cut_after):
    """A disconnect after 1, 2 or 3 of a rotation's 4 renames: restore takes the newest
    complete copy under whatever name, and the next pack leaves the usual three names."""
    run, drive = tmp_path / "run", tmp_path / "drive"
    for step in (1, 2, 3):
        fake_run(run, [step])
        mirror.pack(str(run), str(drive))
    real_rename, done = os.rename, []

    def rename(src, dst):
        if len(done) == cut_after:
            raise OSError("Transport endpoint is not connected")
        done.append(dst)
        real_rename(src, dst)

    fake_run(run, [4])
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        mirror.pack(str(run), str(drive))
    monkeypatch.undo()
    assert mirror.restore(str(drive), str(tmp_path / f"fresh{cut_after}")) == 4
    packs_without_deleting(monkeypatch)
    fake_run(run, [5])
    mirror.pack(str(run), str(drive))
    assert sorted(os.listdir(drive)) == ["run.json", "run.prev.tar", "run.tar", "run.tar.part"]
    assert "checkpoints/5/state/data" in names(drive / "run.tar")
