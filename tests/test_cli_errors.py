"""The real command line in a subprocess: every user mistake ends in ONE `kd_jax: error:` line
on stderr, exit code 2, no traceback, no C++ start-up noise, and nothing left behind.

HOME points at a temporary directory (tfds's default data dir lives there) and KD_JAX_OFFLINE=1
forbids downloads, so that these tests never touch the real home or the network. Config
mistakes fail before JAX compiles anything (about a second each, mostly imports).
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = "cifar_kd.py"
# What the CLI must set by itself (the test process has some of them from conftest.py).
_LOGGING_ENV = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "GRPC_VERBOSITY",
                "GLOG_minloglevel", "TFDS_DATA_DIR")
NOISE = ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "Traceback", "Retrying",
         "Dl Completed", "Dl Size", "%|", "Variant folder", "FATAL")


def run_cli(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k not in _LOGGING_ENV}
    env.update(HOME=str(tmp_path / "home"), KD_JAX_OFFLINE="1")
    for key in ("KD_JAX_CACHE", "KD_JAX_TEACHERS"):   # teachers: none, under the empty HOME
        env.pop(key, None)
    os.makedirs(env["HOME"], exist_ok=True)
    return subprocess.run([sys.executable, "-m", "kd_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def error_line(proc) -> str:
    """The one non-empty stderr line, after checking exit code 2 and no other output there."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kd_jax: error: "), lines[0]
    return lines[0]


def workdir(tmp_path):
    return ["--workdir", str(tmp_path / "run")]


CASES = {
    "typo": ([KD, "--config.num_epoch=1"],
             "kd_jax: error: unknown config key 'num_epoch'; did you mean 'num_epochs'?"),
    "unknown key": ([KD, "--config.foo=1"],
                    "kd_jax: error: unknown config key 'foo'; top-level keys: batch_size,"),
    "nested typo": ([KD, "--config.optimizer.lrr=0.1"],
                    "kd_jax: error: unknown config key 'optimizer.lrr'; did you mean "
                    "'optimizer.lr'?"),
    "key at the wrong level": ([KD, "--config.lr=0.1"],
                               "unknown config key 'lr'; did you mean 'optimizer.lr'?"),
    "bad int": ([KD, "--config.num_epochs=abc"],
                "kd_jax: error: --config.num_epochs=abc: expected an integer (num_epochs is "
                "240 in cifar_kd.py)"),
    "bad bool": ([KD, "--config.tensorboard=maybe"],
                 "--config.tensorboard=maybe: expected true or false"),
    "unknown pair": (["cifar_kd.py:resnet32x4-foo"],
                     "unknown cifar100 pair 'resnet32x4-foo' for KD; known pairs: "),
    "no such config file": (["cifar_kdd.py"],
                            "kd_jax: error: config file 'cifar_kdd.py' not found (neither a "
                            "file nor a shipped config); did you mean 'cifar_kd.py'?"),
    "missing teacher checkpoint": ([KD, "--config.teacher.checkpoint=/no/such.pth"],
                                   "kd_jax: error: teacher.checkpoint='/no/such.pth': no "
                                   "such file or directory"),
    # CI machines have no teachers: the default teacher.checkpoint=published names the fetch.
    "published teacher not fetched": ([KD], "kd_jax: error: teacher.checkpoint='published': "
                                      "the published teacher resnet32x4 is not in "),
    "published teacher: the fetch command": (
        [KD], "; fetch it with `python -m kd_jax.teachers fetch resnet32x4`"),
    "missing data_dir": ([KD, "--config.teacher.checkpoint=random",
                          "--config.dataset.data_dir=/no/such/dir"],
                         "kd_jax: error: dataset.data_dir='/no/such/dir': no such directory"),
    "positional argument": ([KD, "extra"], "kd_jax: error: unexpected argument 'extra'"),
    "quickstart: unknown student": (["quickstart.py", "--config.students=ce,foo"],
                                    "kd_jax: error: students='ce,foo': unknown student 'foo'"),
    # Checked against the pair's models (ShuffleV1's 4x4 pre-pool map) before any data is read.
    "MSDCRD window too big": (["cifar_msdcrd.py:resnet32x4-ShuffleV1",
                               "--config.teacher.checkpoint=random",
                               "--config.method.windows=(1,2,8)"],
                              "kd_jax: error: method.windows=(1, 2, 8): the student's 4x4 and "
                              "the teacher's 8x8 pre-pool maps"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mistake_is_one_error_line(tmp_path, case):
    args, expected = CASES[case]
    proc = run_cli(tmp_path, "--config", *args, *workdir(tmp_path))
    assert expected in error_line(proc)


def test_quickstart_checks_its_students_before_the_teacher(tmp_path):
    """A bad student setting fails before the teacher is retrained (teacher_dir="")."""
    proc = run_cli(tmp_path, "--config", "quickstart.py", "--config.teacher_dir=",
                   "--config.teacher_epochs=1", "--config.teacher_limit_train=64",
                   "--config.student_arch=resnet7", *workdir(tmp_path))
    assert "kd_jax: error: student.arch='resnet7'; allowed: " in error_line(proc)
    assert "teacher" not in proc.stdout, proc.stdout
    assert not os.path.exists(tmp_path / "run"), "a failed run left its workdir behind"


@pytest.mark.parametrize("args,expected", [
    ([], "kd_jax: error: missing --config"),
    (["--workdir", "w"], "kd_jax: error: missing --config"),
    (["--config", KD], "kd_jax: error: missing --workdir"),
    (["--config", KD, "--workdri=w"], "kd_jax: error: unknown flag --workdri; did you mean "
                                      "--workdir?"),
    (["--config", KD, "--workdir", "w", "--verbosityy=1"], "unknown flag --verbosityy; did "
                                                           "you mean --verbosity?"),
])
def test_missing_or_misspelled_flags(tmp_path, args, expected):
    assert expected in error_line(run_cli(tmp_path, *args))
    assert not os.path.exists(os.path.join(ROOT, "w"))


def test_help_lists_configs_and_exits_0(tmp_path):
    proc = run_cli(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    out = proc.stdout
    assert "usage: python -m kd_jax.main --config FILE[:ARG] --workdir DIR" in out
    shipped = os.listdir(os.path.join(ROOT, "kd_jax", "configs"))
    for name in sorted(f for f in shipped if f.endswith(".py") and not f.startswith("_")):
        assert name in out
    assert "cifar_kd.py" in out and "KD (Hinton et al.) on CIFAR-100" in out
    assert "python -m kd_jax.main --config quickstart.py --workdir runs/quickstart" in out


def test_help_with_a_config_shows_its_keys(tmp_path):
    proc = run_cli(tmp_path, "-h", "--config", "cifar_kd.py:vgg13-vgg8")
    assert proc.returncode == 0, proc.stderr
    assert "optimizer.lr = 0.05" in proc.stdout and "student.arch = 'vgg8'" in proc.stdout


def test_missing_cifar100_offline_fails_fast_and_leaves_nothing(tmp_path):
    proc = run_cli(tmp_path, "--config", KD, *workdir(tmp_path),
                   "--config.teacher.checkpoint=random")
    line = error_line(proc)
    cache = tmp_path / "home" / ".cache" / "kd_jax" / "cifar"
    assert f"cifar100 not found in {cache} and downloads are off (KD_JAX_OFFLINE is set)" in line
    assert "cifar-100-python.tar.gz" in line and "--config.dataset.data_dir" in line
    for noise in NOISE:   # no download was attempted: no retries, no progress bars
        assert noise not in proc.stderr + proc.stdout
    assert not os.path.exists(tmp_path / "run")
    assert not os.path.exists(cache) and not os.path.exists(tmp_path / "home" /
                                                            "tensorflow_datasets")


def test_tensorflow_path_is_quiet_and_cleans_up(tmp_path):
    """Corrupt CUB-200 archives: tfds (and TensorFlow, the [tf] extra) load, tfds fails to
    prepare; no C++ start-up noise, one error line, and tfds's temporary folders are removed."""
    pytest.importorskip("tensorflow", reason="needs tensorflow: the tfds path ([tf] extra)")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("CUB_200_2011.tgz", "segmentations.tgz"):
        (data_dir / name).write_bytes(b"not a tar file")
    proc = run_cli(tmp_path, "--config", "cub_kd.py", *workdir(tmp_path),
                   "--config.teacher.checkpoint=random", f"--config.dataset.data_dir={data_dir}")
    line = error_line(proc)
    assert "preparing it failed (NonMatchingChecksumError" in line
    for noise in NOISE:
        assert noise not in proc.stderr
    assert sorted(os.listdir(data_dir)) == ["CUB_200_2011.tgz", "segmentations.tgz"]
    assert not os.path.exists(tmp_path / "run")


def test_cifar_archive_corrupt_is_one_error_line_without_tensorflow(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar-100-python.tar.gz").write_bytes(b"not a tar file")
    proc = run_cli(tmp_path, "--config", KD, *workdir(tmp_path),
                   "--config.teacher.checkpoint=random", f"--config.dataset.data_dir={data_dir}")
    assert (f"kd_jax: error: {data_dir}/cifar-100-python.tar.gz: not a readable cifar100 "
            "archive (ReadError") in error_line(proc)
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("script", ["losses.py", "input_pipeline.py"])
def test_benchmark_help_describes_every_flag(script):
    proc = subprocess.run([sys.executable, os.path.join("benchmarks", script), "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    options = proc.stdout.split("options:", 1)[1]
    flags = [f for f in set(re.findall(r"^  (--[a-z_-]+)", options, re.M)) if f != "--help"]
    assert flags, proc.stdout
    # Each flag's entry (up to the next flag) has a description and its default.
    for entry in re.split(r"\n  (?=-)", options)[1:]:
        if entry.startswith("-h"):
            continue
        assert "(default:" in " ".join(entry.split()), entry
        assert len(entry.split()) > 3, entry


@pytest.mark.parametrize("config_arg", ["cifar_kd.py:vgg13-vgg8", "cifar_kd:vgg13-vgg8",
                                        "configs/cifar_kd.py:vgg13-vgg8"])
def test_shipped_config_by_name(tmp_path, config_arg):
    """A shipped config by name (with or without .py; configs/NAME.py as before the move)."""
    proc = run_cli(tmp_path, "-h", "--config", config_arg)
    assert proc.returncode == 0, proc.stderr
    assert "student.arch = 'vgg8'" in proc.stdout


def test_own_config_file_by_path(tmp_path):
    """A config file of the user's own, anywhere, is loaded by its path; one whose name is
    also a shipped config's wins over it (a path that exists is always the user's)."""
    mine = tmp_path / "cifar_kd.py"
    mine.write_text("from kd_jax.configs import cifar_kd\n\n\ndef get_config(arg=None):\n"
                    "    c = cifar_kd.get_config(arg)\n    c.num_epochs = 7\n    return c\n")
    proc = run_cli(tmp_path, "-h", "--config", f"{mine}:vgg13-vgg8")
    assert proc.returncode == 0, proc.stderr
    assert "num_epochs = 7" in proc.stdout and "student.arch = 'vgg8'" in proc.stdout
