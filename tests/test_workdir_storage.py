"""Object-store workdirs are refused (kd_jax.train.workdir_storage), with one line naming
the fix, before anything is written: a URL (gs://, s3://) and a directory on an
object-store FUSE mount (gcsfuse, found in a mount table written here)."""

import os

import pytest

from kd_jax import main as main_lib
from kd_jax.train import trainer, workdir_storage


def mount_table(tmp_path, *mounts):
    """A /proc/mounts-format file: (mount point, filesystem type) per line."""
    table = tmp_path / "mounts"
    table.write_text("".join(f"dev{i} {point.replace(' ', chr(92) + '040')} {kind} rw 0 0\n"
                             for i, (point, kind) in enumerate(mounts)))
    return str(table)


@pytest.mark.parametrize("workdir", ["gs://bucket/runs/sdd", "s3://b/r", "GS://b"])
def test_a_url_workdir_is_one_error_line(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main_lib.main(["kd_jax.main", "--config", "cifar_kd.py:resnet32x4-resnet8x4",
                       "--workdir", workdir])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"kd_jax: error: --workdir {workdir}: object-store URLs are not supported"), err
    assert "NFS, Filestore" in err[0]
    assert os.listdir(tmp_path) == []   # no local "gs:" directory


def test_the_trainer_refuses_a_url_workdir_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(workdir_storage.UnsupportedWorkdir, match="^--workdir gs://b/r: "):
        trainer.train(None, "gs://b/r")   # refused before the config is read


def test_a_workdir_on_gcsfuse_is_refused(tmp_path):
    bucket, local = tmp_path / "my bucket", tmp_path / "my bucket" / "local"
    local.mkdir(parents=True)
    table = mount_table(tmp_path, ("/", "ext4"), (str(bucket), "fuse.gcsfuse"),
                        (str(local), "ext4"))
    why = workdir_storage.problem(str(bucket / "runs" / "sdd"), table)   # not created yet
    assert why.startswith(f"--workdir {bucket}/runs/sdd is on an object-store mount "
                          f"(fuse.gcsfuse at {bucket}: gcsfuse (Cloud Storage))"), why
    # A mount inside the bucket's mount point wins; elsewhere, and without a table: fine.
    assert workdir_storage.problem(str(local / "run"), table) is None
    assert workdir_storage.problem(str(tmp_path / "run"), table) is None
    assert workdir_storage.problem(str(tmp_path / "run"), str(tmp_path / "none")) is None
