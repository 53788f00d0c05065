"""kd_jax.train.mirror: the newest finished checkpoint (and the run's small files) packed into
one tar file on the mirror, overwritten in place, and restored into an empty workdir."""

import os
import tarfile
import time

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
                                        "metrics.jsonl"]
    # Overwritten in place: the mirror never holds more than run.tar, its .part and run.json.
    fake_run(run, [12])
    mirror.pack(str(run), str(drive))
    assert sorted(os.listdir(drive)) == ["run.json", "run.tar", "run.tar.part"]
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
