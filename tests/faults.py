"""Fault injection over every place kd_jax writes (issue 31), in the manner of SQLite's I/O
error tests: each write site fails with ENOSPC, EACCES and EROFS, and is killed (SIGKILL)
right at it; every case must end in one `kd_jax: error:` line naming the path and the cause
(exit 2, no traceback), lose nothing finished, and the same command must then finish.

    python tests/faults.py table        # the failure table of docs/troubleshooting.md
    python tests/faults.py run MODE SCENARIO SITE ROOT ARG   # one case, as a command

SITES is the list of write sites; each names the SCENARIOS command that reaches it and the
operation at which it fails (`fail`) or is killed (`kill`): a regular expression over
"KIND ROOT-RELATIVE-PATH" (KIND: open, os.open, write, mkdir, rename, replace, link,
torch.save, savefig), with `nth` its occurrence. The scenarios are the commands (`python -m
kd_jax.main`, `.export`, `.convert`, `.teachers`, `.results`, `.reproduce`) and two library
entry points run as commands would run them (COMMANDS: the notebook's mirror, CUB's cache).
The table of docs/troubleshooting.md is generated from SITES (`table()`), so it cannot claim
more than tests/test_faults.py tests.

How writes are seen (`Interceptor`): the Python-level write operations are patched for the
duration of a command: `open` for writing (builtins, io and tarfile's own; the file object
is wrapped so that each `write` is an operation too), `os.open` for writing, `os.write` to a
regular file, `os.mkdir` (os.makedirs and pathlib go through it) of a directory that does
not exist yet, `os.rename`, `os.replace`, `os.link`, `torch.save` and matplotlib's `savefig`.
Tensorstore (orbax's array writer) writes from C++, below Python: its files are classified
after the run by walking the root, and its failures are injected at the Python operations
around it (orbax creates the directory it writes into, and renames it when done; a real
full disk inside tensorstore is tested on a tmpfs in tests/test_faults.py).

How a failure is injected (`Interceptor(fail=...)`): at the matching operation the harness
records what is finished (`finished`: every file's sha256, and the prefix of append-only
logs), then raises OSError(errno, strerror, path) as the kernel would: `open` for writing
first creates (or truncates) the file, since a full disk fails the write after it.
A kill (`Interceptor(kill=...)`, in a subprocess: `python tests/faults.py run kill ...`)
writes that record to a file and sends SIGKILL to its own process. A finished file counts as
lost unless its bytes are still at its path, or where the site's `moved` allows (a rotation
the next command reads from: the mirror's run.tar as run.prev.tar).

Discovery (`test_discovery_covers_every_write`): every operation a scenario performs, and
every file it leaves, must belong to a site of SITES (or to IGNORED, with the reason), and
every site's `fail` and `kill` must match an operation: a new write site without a case
fails the harness. tests/test_faults.py also scans kd_jax's source for write calls
(`WRITERS`), so that a write in code no scenario runs is caught too.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import glob
import hashlib
import io
import json
import os
import re
import signal
import stat
import sys
import tarfile
import threading
from typing import Callable, Iterator, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
CONFIG = os.path.join(TESTS, "faults_config.py")
DOC = os.path.join(REPO, "docs", "troubleshooting.md")
MARKERS = ("<!-- failure-table -->", "<!-- /failure-table -->")

FAILURES = {"ENOSPC": errno.ENOSPC, "EACCES": errno.EACCES, "EROFS": errno.EROFS}


# --- the write sites ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Site:
    """One place kd_jax writes, what a failure there shows, and what to do.

    pattern: the root-relative paths of the site (re.fullmatch); fail / kill: the operation
    ("KIND PATH", re.fullmatch) whose `nth` occurrence (from 1) fails / is killed. sees: the
    error line after `kd_jax: error: `, with placeholders the test turns into a regular
    expression: ROOT (the scenario's root), NUM (a number), HOST and PID (a part file's),
    PAIR (a reproduction's pair directory), KEY (a cache key), CAUSE (e.g. 'No space left on
    device (disk full)'), STRERROR (e.g. 'No space left on device'), ADVICE (e.g. 'free
    space on the disk of DIR'), ANY (anything);
    None: the command goes on (`goes_on`, shown in the table instead). moved: (pattern,
    regex) pairs: a finished file whose path matches `pattern` is not lost where its bytes
    are, after the kill, at a path matching re.sub(pattern, regex, path): a rotation the
    next command undoes or reads from (the mirror's run.tar, kept as run.prev.tar)."""

    name: str
    scenario: str
    where: str                # what the user knows it as (the table's first column)
    pattern: str
    fail: str
    sees: Optional[str]
    todo: str
    kill: Optional[str] = None    # default: `fail`
    nth: int = 1
    kill_nth: Optional[int] = None
    goes_on: str = ""         # sees=None: what happens instead of an error
    killed: str = "nothing is printed (the process is gone)"
    xfail: str = ""           # a known failure: the reason (strict: fixed, it fails)
    moved: tuple = ()         # ((pattern, regex), ...): see above

    @property
    def kill_op(self) -> str:
        return self.kill or self.fail

    @property
    def kill_at(self) -> int:
        return self.kill_nth or self.nth


RESUMES = "run the same command: it goes on from the last checkpoint"
RUN = r"run(/teacher|/students(/seed_\d+)?(/[\w.@-]+)?|/seed_\d+)?"   # a run's directory
PART = r"\.part-[\w.-]+-\d+"   # a part file of kd_jax.data.download.part_path
KEPT = "checkpoint step NUM in ROOT/run/checkpoints is kept"

SITES = (
    Site("workdir", "train", "the workdir itself (`--workdir`)", RUN,
         fail=r"mkdir run",
         sees="--workdir='ROOT/run': cannot create it (STRERROR)",
         todo="free space or fix the permissions of the parent directory (or use another "
              "--workdir), then run the same command"),
    Site("lock", "train", "`kd_jax.lock` (one run per workdir)", rf"{RUN}/kd_jax\.lock",
         fail=r"os\.open run/kd_jax\.lock", kill=r"write run/kd_jax\.lock",
         sees="ROOT/run/kd_jax.lock: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says; a lock left by a killed run is taken over"),
    Site("config", "train", "`config.json`", rf"{RUN}/config\.json(\.tmp)?",
         fail=r"open run/config\.json\.tmp", kill=r"replace run/config\.json\.tmp",
         sees="ROOT/run/config.json.tmp: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says"),
    Site("metrics", "train", "`metrics.jsonl`", rf"{RUN}/metrics\.jsonl(\.tmp)?",
         fail=r"write run/metrics\.jsonl", nth=3,
         sees="ROOT/run/metrics.jsonl: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says; records after the last checkpoint are dropped and logged again"),
    Site("tensorboard", "train", "TensorBoard events (`tb/`)", rf"{RUN}/tb(/events\.out\..*)?",
         fail=r"write run/tb/events\.out\.tfevents\..*", nth=3,
         sees="ROOT/run/tb/events.out.tfevents.ANY: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says (the next segment writes a new event file)"),
    Site("checkpoint", "train", "checkpoints (`checkpoints/N`, orbax)",
         rf"{RUN}/checkpoints(/.*)?",
         fail=r"mkdir run/checkpoints/6\.orbax-checkpoint-tmp",
         kill=r"rename run/checkpoints/6\.orbax-checkpoint-tmp",
         sees="could not save checkpoint step 6 in ROOT/run/checkpoints: CAUSE; " + KEPT
              + ". ADVICE, then run the same command to go on from there",
         todo="as the line says: the run resumes from the kept checkpoint"),
    Site("timed_checkpoint", "timed", "a checkpoint by time (`checkpoint_every_minutes`, "
         "within an epoch)", r"run/checkpoints(/.*)?",
         fail=r"mkdir run/checkpoints/4\.orbax-checkpoint-tmp",
         kill=r"rename run/checkpoints/4\.orbax-checkpoint-tmp",
         sees="could not save checkpoint step 4 in ROOT/run/checkpoints: CAUSE; " + KEPT
              + ". ADVICE, then run the same command to go on from there",
         todo="as the line says: the run resumes from the kept checkpoint"),
    Site("best_model", "train", "`best_model/` (at every better evaluation)",
         rf"{RUN}/best_model(\.tmp|\.old)?(/.*)?",
         fail=r"mkdir run/best_model\.tmp", kill=r"rename run/best_model\.tmp",
         sees="could not export the model to ROOT/run/best_model: CAUSE; no checkpoint was "
              "saved yet. ADVICE, then run the same command to go on from there",
         todo="as the line says: the evaluation, and the export, are redone"),
    Site("final_model", "train", "`final_model/` (the export that finishes a run)",
         rf"{RUN}/final_model(\.tmp|\.old)?(/.*)?",
         fail=r"mkdir run/final_model\.tmp", kill=r"rename run/final_model\.tmp",
         sees="could not export the model to ROOT/run/final_model: CAUSE; " + KEPT
              + ". ADVICE, then run the same command to go on from there",
         todo="as the line says: the rerun says the export is missing and redoes it"),
    Site("summary", "train", "`summary.json`", rf"{RUN}/summary\.json(\.tmp)?",
         fail=r"open run/summary\.json\.tmp", kill=r"replace run/summary\.json\.tmp",
         sees="ROOT/run/summary.json.tmp: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says: the finished run's summary is rebuilt from its checkpoint"),
    Site("compile_cache", "compile", "the compilation cache (`$KD_JAX_CACHE/jax_cache`, "
         "JAX's)", r"cache|(.*/)?jax_cache(/.*)?", fail=r"open (.*/)?jax_cache/.*-cache",
         sees=None, goes_on="JAX warns `Error writing persistent compilation cache entry "
                            "for '...': OSError: ...` and the run goes on (it compiles again "
                            "next time)",
         todo="nothing (free space to keep compiled steps across runs)"),
    Site("metrics_resume", "resume", "`metrics.jsonl` rewritten on resume (records after "
         "the checkpoint dropped)", r"run/metrics\.jsonl\.tmp",
         fail=r"open run/metrics\.jsonl\.tmp", kill=r"replace run/metrics\.jsonl\.tmp",
         sees="ROOT/run/metrics.jsonl.tmp: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says"),
    Site("set_aside", "damaged", "`damaged_checkpoints/` (a damaged checkpoint set aside)",
         r"run/damaged_checkpoints(/.*)?",
         fail=r"mkdir run/damaged_checkpoints", kill=r"rename run/checkpoints/6",
         sees="ROOT/run/damaged_checkpoints: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says"),
    Site("seeds_summary", "seeds", "the seeds table (`summary.json` over `seed_*/`)",
         r"run/summary\.json(\.tmp)?",
         fail=r"open run/summary\.json\.tmp", kill=r"replace run/summary\.json\.tmp",
         sees="ROOT/run/summary.json.tmp: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says: finished seeds are not trained again"),
    Site("quickstart_summary", "quickstart", "`quickstart_summary.json`",
         r"run/quickstart_summary\.json(\.tmp)?",
         fail=r"open run/quickstart_summary\.json\.tmp",
         kill=r"replace run/quickstart_summary\.json\.tmp",
         sees="ROOT/run/quickstart_summary.json.tmp: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says: the finished runs are not trained again"),
    Site("quickstart_plot", "quickstart", "`quickstart_accuracy.png`",
         r"run/quickstart_accuracy\.png", fail=r"savefig run/quickstart_accuracy\.png",
         sees="ROOT/run/quickstart_accuracy.png: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says"),
    Site("export_output", "export", "an export's file (`kd_jax.export ... OUT`)",
         r"out/model\.pth(\.tmp\d+)?",
         fail=r"write out/model\.pth\.tmp\d+", kill=r"replace out/model\.pth\.tmp\d+",
         sees="ROOT/out/model.pth.tmpNUM: CAUSE; ADVICE, then run the same command again",
         todo="as the line says; an earlier OUT is kept until the new one is complete"),
    Site("converted", "convert", "a conversion's directory (`kd_jax.convert ... OUT_DIR`)",
         r"converted(/.*)?", fail=r"mkdir converted", kill=r"replace converted/teacher\.json\.tmp",
         sees="ANY: CAUSE; ADVICE, then run the same command again",
         todo="as the line says (with --overwrite after a partial one)"),
    Site("teacher_download", "teachers", "a teacher's download (`$KD_JAX_CACHE/downloads`)",
         r"cache(/downloads(/cifar_teachers\.tar(\.part)?)?)?",
         fail=r"write cache/downloads/cifar_teachers\.tar\.part", nth=2,
         kill=r"write cache/downloads/cifar_teachers\.tar\.part", kill_nth=2,
         sees="ROOT/cache/downloads/cifar_teachers.tar.part: CAUSE; ADVICE, then run the same "
              "command again",
         todo="as the line says: the download resumes from the partial file"),
    Site("teacher_scratch", "teachers", "a teacher's extraction (`$TMPDIR`)", r"tmp/.*",
         fail=r"open tmp/tmp\w+/ckpt\.pth",
         sees="ROOT/tmp/ANY/ckpt.pth: CAUSE; ADVICE, then run the same command again",
         todo="as the line says; the cached download is kept"),
    Site("teacher_record", "teachers", "a teacher's record with the sha256 of its files "
         "(`teacher.json`, written again once they are hashed)",
         r"teachers/\.resnet56\.\w+/teacher\.json(\.tmp)?",
         fail=r"open teachers/\.resnet56\.\w+/teacher\.json\.tmp", nth=2,
         kill=r"replace teachers/\.resnet56\.\w+/teacher\.json\.tmp", kill_nth=2,
         sees="ROOT/teachers/.resnet56.ANY/teacher.json.tmp: CAUSE; ADVICE, then run the same "
              "command again",
         todo="as the line says; nothing is installed before its record is complete"),
    Site("teacher_install", "teachers", "a teacher's install (`$KD_JAX_TEACHERS`)",
         r"teachers(/.*)?", fail=r"mkdir teachers/\.resnet56\.\w+",
         kill=r"replace teachers/\.resnet56\.\w+",
         sees="ROOT/teachers/.resnet56.ANY: CAUSE; ADVICE, then run the same command again",
         todo="as the line says; nothing half-written is installed"),
    Site("cifar_download", "cifar", "a CIFAR download (`dataset.data_dir` or the cache; a "
         "part file per host and process)",
         rf"cache(/cifar(/cifar-10-python\.tar\.gz({PART})?)?)?",
         fail=rf"write cache/cifar/cifar-10-python\.tar\.gz{PART}",
         kill=rf"replace cache/cifar/cifar-10-python\.tar\.gz{PART}",
         sees="ROOT/cache/cifar/cifar-10-python.tar.gz.part-HOST-PID: CAUSE; ADVICE, then "
              + RESUMES,
         todo="as the line says: the download starts again (a killed one's part file is "
              "removed)"),
    Site("cub_cache", "cub", "CUB's resized cache (`$KD_JAX_CACHE/caltech_birds2011`)",
         r"cache(/caltech_birds2011(/.*)?)?",
         # The third open: the one that allocates the memory map (numpy's open_memmap opens
         # the file twice); a real full disk from there on is SIGBUS unless allocated first.
         fail=rf"open cache/caltech_birds2011/\w+/train_images\.npy{PART}", nth=3,
         kill=rf"replace cache/caltech_birds2011/\w+/train_images\.npy{PART}", kill_nth=1,
         sees="ROOT/cache/caltech_birds2011/KEY/train_images.npy.part-HOST-PID: CAUSE; ADVICE, "
              "then " + RESUMES,
         todo="as the line says: the cache is built again (a killed build's part files are "
              "removed)"),
    Site("own_cache_lock", "own", "own data's cache lock (`$KD_JAX_CACHE/own_data/*.lock`)",
         r"cache(/own_data(/[^/]+\.lock)?)?", fail=r"open cache/own_data/[^/]+\.lock",
         sees=None, goes_on="`kd_jax: note: the decoded dataset could not be cached (...: CAUSE)` "
                            "and the run goes on (it decodes the images again next time)",
         todo="nothing (free space or fix the permissions to keep the decoded images)"),
    Site("own_cache", "own", "own data's decoded cache (`$KD_JAX_CACHE/own_data`)",
         r"cache(/own_data(/.*)?)?", fail=r"mkdir cache/own_data/[^/]+\.tmp\d+",
         kill=r"rename cache/own_data/[^/]+\.tmp\d+",
         sees=None, goes_on="`kd_jax: note: the decoded dataset could not be cached (...: CAUSE)` "
                            "and the run goes on (it decodes the images again next time)",
         todo="nothing (free space or fix the permissions to keep the decoded images)"),
    Site("mirror", "mirror", "the notebook's mirror (`run.tar` on Drive, written as "
         "`run.tar.part`, then rotated)",
         r"mirror(/run\.(tar(\.part|\.old)?|prev\.tar|json))?",
         fail=r"write mirror/run\.tar\.part", kill=r"rename mirror/run\.tar\.part",
         sees="ROOT/mirror/run.tar.part: CAUSE; ADVICE, then run the same command again",
         todo="free space on Drive; the run on the VM's disk is complete, pack it again (a "
              "restore meanwhile takes the newest complete copy)",
         moved=((r"mirror/run\.tar", r"mirror/run\.(prev\.tar|tar\.old|tar\.part)"),)),
    Site("reproduce_plan", "reproduce", "a reproduction's `plan.json`",
         r"run/plan\.json(\.[\w.-]+\.\d+\.tmp)?",
         fail=r"open run/plan\.json\.[\w.-]+\.\d+\.tmp",
         kill=r"link run/plan\.json\.[\w.-]+\.\d+\.tmp",
         sees="ROOT/run/plan.json.HOST.PID.tmp: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says"),
    Site("reproduce_tables", "reproduce", "a reproduction's tables (`DIR/TABLE.md`, `.csv`)",
         r"run/tiny\.(md|csv)(\.tmp)?", fail=r"open run/tiny\.md\.tmp",
         kill=r"replace run/tiny\.md\.tmp",
         sees="ROOT/run/tiny.md.tmp: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says: the finished runs are skipped, the tables written again"),
    Site("reproduce_lockstep", "reproduce", "a pair's `lockstep.json` (its lockstep decision)",
         r"run/[\w.]+-[\w.]+(/lockstep\.json(\.[\w.-]+\.\d+\.tmp)?)?",
         fail=r"open run/[\w.-]+/lockstep\.json\.[\w.-]+\.\d+\.tmp",
         kill=r"link run/[\w.-]+/lockstep\.json\.[\w.-]+\.\d+\.tmp",
         sees="ROOT/run/PAIR/lockstep.json.HOST.PID.tmp: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says"),
    Site("reproduce_run", "reproduce", "a reproduction's runs (`DIR/PAIR/seed_N/...`, each a "
         "run's files as above)", r"run/[\w.-]+/seed_\d+(/.*)?",
         fail=r"mkdir run/[\w.-]+/seed_0",
         kill=r"rename run/[\w.-]+/seed_0/checkpoints/6\.orbax-checkpoint-tmp",
         sees="ROOT/run/PAIR/seed_0: CAUSE; ADVICE, then " + RESUMES,
         todo="as the line says: finished runs are skipped, the others resume"),
    Site("results_tables", "results", "a results table (`kd_jax.results --markdown/--csv`)",
         r"out/table\.(md|csv)(\.tmp)?", fail=r"open out/table\.md\.tmp",
         kill=r"replace out/table\.md\.tmp",
         sees="ROOT/out/table.md.tmp: CAUSE; ADVICE, then run the same command again",
         todo="as the line says"),
)

# Paths a scenario writes that are no kd_jax write site, each with the reason.
IGNORED = {r"tmp(/__autograph_generated_file\w+\.py)?": "TensorFlow's autograph writes the "
           "functions it converts (CUB's tf.data resize) into $TMPDIR (an anonymous file "
           "too); a failure there is TensorFlow's"}

# The writes of kd_jax's source (tests/test_faults.py scans for them): the function that
# writes -> the sites above it serves, or why it has no case.
WRITERS = {
    "kd_jax/cli.py:workdir_removed_on_failure": ("workdir",),
    "kd_jax/train/workdir_lock.py:_acquire": ("lock",),
    "kd_jax/train/workdir_lock.py:hold": ("lock", "workdir"),
    "kd_jax/train/logs.py:save_config": ("config",),
    "kd_jax/train/metric_log.py:MetricLog.__init__": ("metrics", "tensorboard"),
    "kd_jax/train/metric_log.py:drop_records_after": ("metrics_resume",),
    "kd_jax/train/tb_events.py:EventWriter.__init__": ("tensorboard",),
    "kd_jax/train/checkpoint.py:Checkpointer.save": ("checkpoint", "timed_checkpoint"),
    "kd_jax/train/checkpoint.py:Checkpointer._set_aside": ("set_aside",),
    "kd_jax/train/exports.py:save_model": ("best_model", "final_model"),
    "kd_jax/convert/converted.py:save_converted": ("best_model", "final_model", "converted",
                                                   "teacher_install"),
    "kd_jax/convert/converted.py:write_meta": ("best_model", "final_model", "converted",
                                               "teacher_record"),
    "kd_jax/convert/pth.py:save": ("export_output",),
    "kd_jax/train/summary.py:write_json": ("summary", "seeds_summary", "quickstart_summary",
                                           "config"),
    "kd_jax/train/summary.py:write_text": ("summary", "seeds_summary", "quickstart_summary",
                                           "config", "results_tables", "reproduce_tables"),
    "kd_jax/train/summary.py:report": ("summary",),
    "kd_jax/train/seeds.py:run_seeds": ("seeds_summary",),
    "kd_jax/train/pipeline.py:run_pipeline": ("quickstart_summary",),
    "kd_jax/results.py:_write": ("results_tables",),
    "kd_jax/convert/__main__.py:main": ("converted",),
    "kd_jax/teachers/fetch.py:fetch_one": ("teacher_scratch",),
    "kd_jax/train/pipeline.py:_plot": ("quickstart_plot",),
    "kd_jax/export.py:export": ("export_output",),
    "kd_jax/teachers/download.py:download": ("teacher_download",),
    "kd_jax/teachers/download.py:_attempt": ("teacher_download",),
    "kd_jax/teachers/fetch.py:extract_checkpoint": ("teacher_scratch",),
    "kd_jax/teachers/fetch.py:_install": ("teacher_install", "teacher_record"),
    "kd_jax/data/download.py:download": ("cifar_download",),
    "kd_jax/data/download.py:write_part": ("cifar_download",),
    "kd_jax/data/download.py:put_in_place": ("cifar_download",),
    "kd_jax/data/cub.py:build": ("cub_cache",),
    "kd_jax/data/cub.py:_write_split": ("cub_cache",),
    "kd_jax/data/own_cache.py:_locked": ("own_cache_lock",),
    "kd_jax/data/own_cache.py:_write": ("own_cache",),
    "kd_jax/reproduce/runner.py:create_once": ("reproduce_plan", "reproduce_lockstep"),
    "kd_jax/reproduce/report.py:write": ("reproduce_tables",),
    "kd_jax/train/mirror.py:pack": ("mirror",),
    "kd_jax/train/mirror.py:_rotate": ("mirror",),
    "kd_jax/train/mirror.py:restore": "unpacks run.tar into an empty workdir before a run: a "
                                      "failure leaves no checkpoint, and the same cell unpacks "
                                      "it again",
    "kd_jax/train/pipeline.py:ship_teacher": "the maintainer's `--ship`, which writes into "
                                             "the source tree (kd_jax/assets) once per release",
}


# --- the scenarios ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scenario:
    """A command (run in this process: `run_command`) and what its root holds before it."""

    name: str
    module: str               # kd_jax.main, kd_jax.export, ... (or a pseudo-command: COMMANDS)
    argv: Callable[[str], list]   # root -> the command's arguments
    done: Callable[[str], None]   # root -> asserts the command finished
    needs: tuple = ()         # optional stacks (tests/conftest.py's needs marker)


def _main_argv(*extra: str) -> Callable[[str], list]:
    return lambda root: ["--config", CONFIG, "--workdir", os.path.join(root, "run"), *extra]


def _read(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _run_finished(root: str, run: str = "run") -> None:
    from kd_jax.train import exports

    summary = _read(os.path.join(root, run, "summary.json"))
    assert summary["finished"], summary
    for model in ("final_model", "best_model"):
        assert exports.is_complete(os.path.join(root, run, model)), model


def _summary_finished(*parts: str) -> Callable[[str], None]:
    def done(root: str) -> None:
        summary = _read(os.path.join(root, *parts, "summary.json"))
        assert summary["finished"], summary
    return done


def _cub_cached(root: str) -> None:
    from kd_jax.data import cub
    (directory,) = glob.glob(os.path.join(root, "cache", cub.NAME, "*"))
    assert cub.is_complete(directory), directory


def _seeds_finished(root: str) -> None:
    summary = _read(os.path.join(root, "run", "summary.json"))
    assert summary["finished"] and summary["seeds"] == [0, 1], summary


def _file_done(*parts: str) -> Callable[[str], None]:
    def done(root: str) -> None:
        path = os.path.join(root, *parts)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, path
    return done


QUICKSTART = ["--config", "quickstart.py", "--config.teacher_dir=", "--config.seeds=0",
              "--config.num_epochs=1", "--config.teacher_epochs=1", "--config.batch_size=32",
              "--config.dataset.limit_train=64", "--config.dataset.limit_test=32",
              "--config.teacher_limit_train=64", "--config.teacher_arch=tiny_cnn_wide",
              "--config.student_arch=tiny_cnn", "--config.progress_bar=False"]
URL_ENV = "KD_JAX_FAULTS_URL"   # the local server of the download scenarios


def compile_env(root: str) -> dict:
    """The `compile` scenario's subprocess: a compilation cache of its own, empty, written
    for every program."""
    return {"JAX_COMPILATION_CACHE_DIR": os.path.join(root, "cache", "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


SCENARIOS = {s.name: s for s in (
    Scenario("train", "kd_jax.main", _main_argv(), _run_finished),
    # The run of `train` in a subprocess whose compilation cache starts empty (COMPILE_ENV).
    Scenario("compile", "kd_jax.main", _main_argv(), _run_finished),
    Scenario("resume", "kd_jax.main", _main_argv(), _run_finished),
    # Checkpoints by time only (every sync point: a multiple of log_every_steps, an epoch end).
    Scenario("timed", "kd_jax.main",
             _main_argv("--config.checkpoint_every_minutes=1e-9",
                        "--config.checkpoint_every_epochs=0", "--config.export_model=False",
                        "--config.tensorboard=False"), _summary_finished("run")),
    Scenario("damaged", "kd_jax.main", _main_argv(), _run_finished),
    Scenario("seeds", "kd_jax.main", _main_argv("--config.seeds=0,1",
                                                "--config.export_model=False"),
             _seeds_finished),
    Scenario("quickstart", "kd_jax.main",
             lambda root: [*QUICKSTART, "--workdir", os.path.join(root, "run"),
                           "--config.dataset.data_dir=" + os.environ.get("KD_JAX_FAULTS_IDX", "")],
             _file_done("run", "quickstart_accuracy.png")),
    Scenario("export", "kd_jax.export",
             lambda root: [os.path.join(root, "run", "final_model"), "--to", "torch",
                           os.path.join(root, "out", "model.pth"), "--overwrite"],
             _file_done("out", "model.pth")),
    Scenario("convert", "kd_jax.convert",
             lambda root: ["--arch", "tiny_cnn", "--num-classes", "10",
                           os.path.join(root, "out", "model.pth"),
                           os.path.join(root, "converted"), "--overwrite"],
             _file_done("converted", "teacher.json")),
    Scenario("teachers", "kd_jax.teachers",
             lambda root: ["--dir", os.path.join(root, "teachers"), "fetch", "resnet56",
                           "--no-evaluate", "--url",
                           os.environ.get(URL_ENV, "") + "/cifar_teachers.tar"],
             _file_done("teachers", "resnet56", "teacher.json")),
    Scenario("cifar", "kd_jax.main",
             _main_argv("--config.dataset.name=cifar10", "--config.dataset.image_size=32",
                        "--config.dataset.limit_train=24", "--config.dataset.limit_test=8",
                        "--config.export_model=False", "--config.tensorboard=False"),
             _file_done("run", "summary.json")),
    Scenario("mirror", "mirror", lambda root: [os.path.join(root, "run"),
                                               os.path.join(root, "mirror")],
             _file_done("mirror", "run.tar")),
    Scenario("results", "kd_jax.results",
             lambda root: [os.path.join(root, "run"), "--markdown",
                           os.path.join(root, "out", "table.md")],
             _file_done("out", "table.md")),
    # A published table's plan (kd_jax.testing's tiny one): one pair, KD, seed 0.
    Scenario("reproduce", "kd_jax.reproduce",
             lambda root: ["tiny", "--workdir", os.path.join(root, "run"), "--seeds", "0",
                           "--methods", "kd", "--pairs", "tiny_cnn_wide-tiny_cnn",
                           "--lockstep", "always"],
             _file_done("run", "tiny.csv")),
    # Own data: an image folder (written by prepare), decoded into the cache.
    Scenario("own", "kd_jax.main",
             lambda root: ["--config", "custom_teacher.py:tiny_cnn",
                           "--workdir", os.path.join(root, "run"),
                           "--config.dataset.data_dir=" + os.path.join(root, "images"),
                           "--config.dataset.image_size=16", "--config.dataset.workers=0",
                           "--config.num_epochs=1", "--config.batch_size=4",
                           "--config.progress_bar=False", "--config.tensorboard=False",
                           "--config.export_model=False"],
             _summary_finished("run")),
    # CUB's cache built from a prepared tfds data dir (a fake builder: cub_patches).
    Scenario("cub", "cub", lambda root: [os.path.join(root, "tfds")], _cub_cached,
             needs=("tensorflow",)),
)}


def prepare(scenario: str, root: str) -> None:
    """What `scenario`'s root holds before its command: a finished run for the commands that
    read one, a run stopped after its first checkpoint for `resume`, ... (no interception)."""
    os.makedirs(root, exist_ok=True)
    run = os.path.join(root, "run")

    def command(module: str, argv: list) -> None:
        with environment(root), patched(scenario_patches(scenario, root)):
            code = run_command(module, argv)
        assert code == 0, f"preparing {scenario}: {module} {argv} exited with {code}"

    if scenario in ("train", "compile", "timed", "seeds", "teachers", "cifar", "quickstart",
                    "reproduce"):
        return          # from nothing (quickstart: see test_faults.bases, which runs it once)
    if scenario == "own":                     # the image folder
        from test_own_data import write_shapes_folder
        write_shapes_folder(os.path.join(root, "images"), per_class=4)
        return
    if scenario == "cub":                     # the prepared tfds data's record
        info = os.path.join(root, "tfds", "caltech_birds2011", "2.1.0", "dataset_info.json")
        os.makedirs(os.path.dirname(info))
        with builtins_open(info, "w") as fh:
            fh.write('{"version": "2.1.0"}')
        return
    if scenario == "resume":   # stopped after step 3, having logged step 4
        command("kd_jax.main", _main_argv("--config.total_steps=3")(root))
        with builtins_open(os.path.join(run, "metrics.jsonl"), "a") as fh:
            fh.write(json.dumps({"step": 4, "kind": "train", "loss": 1.0}) + "\n")
        return
    command("kd_jax.main", _main_argv()(root))
    if scenario == "damaged":   # the newest checkpoint's arrays deleted
        state = os.path.join(run, "checkpoints", "6", "state")
        for directory, _, files in os.walk(state):
            for name in files:
                if os.path.basename(directory) == "d":
                    os.remove(os.path.join(directory, name))
    elif scenario in ("export", "convert"):   # an earlier export (convert: its input)
        command("kd_jax.export", SCENARIOS["export"].argv(root))
    elif scenario == "mirror":                # an earlier pack
        from kd_jax.train import mirror
        mirror.pack(run, os.path.join(root, "mirror"))
    elif scenario == "results":               # an earlier table
        command("kd_jax.results", SCENARIOS["results"].argv(root))


@contextlib.contextmanager
def served(directory: str) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving `directory`; yields its base URL."""
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class QuietServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass   # a client that stopped reading (its write failed) resets the connection:
            # the server's report of it would be on the stderr the test reads as the command's

    httpd = QuietServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_downloads(directory: str) -> dict:
    """The files the download scenarios fetch, written into `directory`: a
    cifar_teachers.tar holding resnet56 (random weights, the published layout; tests/
    test_teachers.py) and a small cifar-10-python.tar.gz (tests/test_data_cifar.py).
    Returns the environment the scenarios read (the CIFAR archive's md5)."""
    import pathlib

    import numpy as np
    from test_data_cifar import make
    from test_teachers import make_tar

    os.makedirs(directory, exist_ok=True)
    make_tar(os.path.join(directory, "cifar_teachers.tar"))
    path, _, _ = make("cifar10", "python", pathlib.Path(directory), np.random.default_rng(0))
    with builtins_open(path, "rb") as fh:
        return {"KD_JAX_FAULTS_MD5": hashlib.md5(fh.read()).hexdigest()}


def mirror_main(argv: list) -> int:
    """The notebook's mirror as a command: `with Mirror(WORKDIR, MIRROR)` packs the finished
    run once at exit (as the notebook's training cells do)."""
    from kd_jax import errors
    from kd_jax.train import mirror

    @errors.command()
    def main(argv: list) -> int:
        with mirror.Mirror(argv[0], argv[1], every_s=3600):
            pass
        return 0

    return main(argv)


def cub_main(argv: list) -> int:
    """CUB's cache as a training command builds it (`python -m kd_jax.main` on a CUB config
    loads the dataset first, and fails as kd_jax.main does): `cub.load(DATA_DIR)`."""
    from kd_jax import main as main_lib
    from kd_jax.data import cub

    with main_lib.exits_on_failure(lambda: None):
        cub.load(argv[0], threads=1)
    return 0


COMMANDS = {"mirror": mirror_main, "cub": cub_main}   # pseudo-commands of the scenarios


def cub_patches(root: str) -> list:
    """(owner, name, value): tfds's prepared CUB is a fake builder of 4 + 2 small images (its
    dataset_info.json in ROOT/tfds: prepare)."""
    from test_data_tfds import FakeBuilder

    from kd_jax.data import imagenet

    builder = FakeBuilder({"train": 4, "test": 2})
    builder.data_dir = os.path.join(root, "tfds", "caltech_birds2011", "2.1.0")
    return [(imagenet, "prepared_builder", lambda name, data_dir: builder)]


def run_command(module: str, argv: list) -> int:
    """Runs the command as `python -m MODULE ARGV` would, in this process; its exit status."""
    import importlib

    import kd_jax.testing  # noqa: F401  the scenarios' models and reproduce's tiny table

    if module in COMMANDS:
        main = COMMANDS[module]
    else:
        imported = importlib.import_module(module)
        if hasattr(imported, "__path__"):   # a package: python -m runs its __main__
            imported = importlib.import_module(module + ".__main__")
        main = imported.main
    try:
        code = main(["kd_jax.main", *argv]) if module == "kd_jax.main" else main(argv)
    except SystemExit as e:
        code = e.code
    return 0 if code is None else code


# --- what is finished ---------------------------------------------------------------------------

_APPEND_ONLY = re.compile(r"(.*/)?(metrics\.jsonl|events\.out\.tfevents\..*)")
_IN_FLIGHT = re.compile(r".*(\.tmp\d*|\.part(-[^/]*)?|\.orbax-checkpoint-tmp[^/]*(/.*)?"
                        r"|kd_jax\.lock|/tmp/.*|^tmp/.*|\.(old|tmp)\d*(/.*)?)"
                        r"|(.*/)?\.[\w-]+\.\w{8}(\.old)?(/.*)?")   # tempfile.mkdtemp's staging


def finished(root: str) -> dict:
    """{root-relative path: sha256 (or "prefix:<sha256>:<size>" of an append-only log)} of
    every file under `root` that no write is in the middle of (no temporary or partial file,
    no lock)."""
    out = {}
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if _IN_FLIGHT.fullmatch(rel) or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            digest = hashlib.sha256(data).hexdigest()
            out[rel] = f"prefix:{digest}:{len(data)}" if _APPEND_ONLY.fullmatch(rel) else digest
    return out


def lost(before: dict, root: str, moved: tuple = ()) -> list:
    """The files of `before` (a `finished` record) that are gone or changed under `root`
    (append-only logs: whose earlier content is no longer their start), unless their bytes
    are where a site's `moved` says they may be."""
    bad = []
    for rel, digest in before.items():
        path = os.path.join(root, rel)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            if not _moved(rel, digest, root, moved):
                bad.append(f"{rel} (gone)")
            continue
        if digest.startswith("prefix:"):
            _, want, size = digest.split(":")
            if hashlib.sha256(data[:int(size)]).hexdigest() != want:
                bad.append(f"{rel} (its earlier records changed)")
        elif hashlib.sha256(data).hexdigest() != digest and not _moved(rel, digest, root,
                                                                        moved):
            bad.append(f"{rel} (changed)")
    return bad


def _moved(rel: str, digest: str, root: str, moved: tuple) -> bool:
    """Whether the bytes of `rel` (its sha256 `digest`) are at a path that `moved` allows."""
    allowed = [re.sub(pattern, regex, rel) for pattern, regex in moved
               if re.fullmatch(pattern, rel)]
    return any(re.fullmatch(regex, other) and value == digest
               for other, value in finished_any(root).items() for regex in allowed)


def finished_any(root: str) -> dict:
    """{root-relative path: sha256} of every file under `root`, in flight or not."""
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


# --- seeing and failing the writes --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Op:
    kind: str
    path: str    # absolute

    def key(self, root: str) -> str:
        """'KIND ROOT-RELATIVE-PATH', as a site's `fail` / `kill` match it."""
        return f"{self.kind} {relative(self.path, root)}"


def relative(path, root: str) -> str:
    path = os.path.abspath(os.fsdecode(path))
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _WatchedFile:
    """A file object opened for writing whose every write is an operation (`write`)."""

    def __init__(self, raw, path: str, hook: Callable[[Op], None]):
        self._raw, self._path, self._hook = raw, path, hook

    def write(self, data):
        self._hook(Op("write", self._path))
        return self._raw.write(data)

    def writelines(self, lines):
        self._hook(Op("write", self._path))
        return self._raw.writelines(lines)

    def __enter__(self):
        self._raw.__enter__()
        return self

    def __exit__(self, *exc):
        return self._raw.__exit__(*exc)

    def __iter__(self):
        return iter(self._raw)

    def __getattr__(self, name):
        return getattr(self._raw, name)


class Interceptor:
    """Patches the Python-level write operations (see the module docstring) while active.

    Every operation is recorded in `ops`. With `fail=(site, errno)` the site's `nth` `fail`
    operation raises OSError(errno); with `kill=(site, path)` the site's `kill_nth` `kill`
    operation writes `snapshot` to `path` and sends SIGKILL to this process; with
    `fill=(site, mount)` the `fail` operation first fills the disk at `mount` (a real full
    disk). `snapshot`: what was `finished` at the site's first operation."""

    def __init__(self, root: str, fail: Optional[tuple] = None, kill: Optional[tuple] = None,
                 fill: Optional[tuple] = None):
        self.root = os.path.abspath(root)
        self.fail, self.kill, self.fill = fail, kill, fill
        self.ops: list[Op] = []
        self.snapshot: Optional[dict] = None
        self.fired: Optional[Op] = None
        self._seen = 0
        self._lock = threading.Lock()
        self._saved: list = []

    # -- the hook: every operation, before it runs ---------------------------------------------
    def _hook(self, op: Op) -> None:
        if op.path.startswith(("/dev/", "/proc/")):   # devices, not files
            return
        with self._lock:
            self.ops.append(op)
            if self.fired is not None or not (self.fail or self.kill or self.fill):
                return
            site = (self.fail or self.kill or self.fill)[0]
            if self.snapshot is None and re.fullmatch(site.pattern,
                                                      relative(op.path, self.root)):
                # What is finished when the site starts writing: its own earlier files too.
                self.snapshot = finished(self.root)
            pattern, nth = (site.kill_op, site.kill_at) if self.kill else (site.fail, site.nth)
            if not re.fullmatch(pattern, op.key(self.root)):
                return
            self._seen += 1
            if self._seen != nth:
                return
            self.fired = op
            if self.snapshot is None:
                self.snapshot = finished(self.root)
        if self.fill:   # a real full disk from here on: the operation itself goes ahead
            fill_disk(self.fill[1])
            return
        if self.kill:
            with builtins_open(self.kill[1], "w") as fh:
                json.dump({"op": op.key(self.root), "finished": self.snapshot}, fh)
            os.kill(os.getpid(), signal.SIGKILL)
        code = self.fail[1]
        raise OSError(code, os.strerror(code), op.path)

    # -- the patched operations ----------------------------------------------------------------
    def _open(self, real):
        def open_(file, mode="r", *args, **kwargs):
            writes = isinstance(file, (str, bytes, os.PathLike)) and any(c in mode
                                                                         for c in "wax+")
            if not writes:
                return real(file, mode, *args, **kwargs)
            path = os.path.abspath(os.fsdecode(file))
            try:
                self._hook(Op("open", path))
            except OSError as e:
                if e.errno == errno.ENOSPC and "r" not in mode:   # created, the write fails
                    real(file, mode.replace("x", "w"), *args, **kwargs).close()
                raise
            return _WatchedFile(real(file, mode, *args, **kwargs), path, self._hook)
        return open_

    def _os_open(self, real):
        def os_open(path, flags, *args, **kwargs):
            if flags & _WRITE_FLAGS:
                self._hook(Op("os.open", os.path.abspath(os.fsdecode(path))))
            return real(path, flags, *args, **kwargs)
        return os_open

    def _os_write(self, real):
        def os_write(fd, data):
            if fd > 2:
                try:
                    regular = stat.S_ISREG(os.fstat(fd).st_mode)
                    path = os.readlink(f"/proc/self/fd/{fd}") if regular else None
                except OSError:
                    path = None
                if path is not None:
                    self._hook(Op("write", path))
            return real(fd, data)
        return os_write

    def _mkdir(self, real):
        def mkdir(path, *args, **kwargs):
            if not os.path.exists(path):
                self._hook(Op("mkdir", os.path.abspath(os.fsdecode(path))))
            return real(path, *args, **kwargs)
        return mkdir

    def _move(self, real, kind):
        def move(src, dst, *args, **kwargs):
            self._hook(Op(kind, os.path.abspath(os.fsdecode(src))))
            return real(src, dst, *args, **kwargs)
        return move

    def _saving(self, real, kind):
        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)):
                self._hook(Op(kind, os.path.abspath(os.fsdecode(f))))
            return real(obj, f, *args, **kwargs)
        return save

    def _patch(self, owner, name, make) -> None:
        real = getattr(owner, name)
        self._saved.append((owner, name, real))
        setattr(owner, name, make(real))

    def __enter__(self) -> "Interceptor":
        if _importable("matplotlib"):   # before open is patched: its font cache is not ours
            from matplotlib import figure, font_manager  # noqa: F401
        real_open = builtins.open
        patched = self._open(real_open)
        for owner in (builtins, io):
            self._saved.append((owner, "open", real_open))
            setattr(owner, "open", patched)
        self._saved.append((tarfile, "bltn_open", tarfile.bltn_open))
        tarfile.bltn_open = patched
        self._patch(os, "open", self._os_open)
        self._patch(os, "write", self._os_write)
        self._patch(os, "mkdir", self._mkdir)
        self._patch(os, "rename", lambda real: self._move(real, "rename"))
        self._patch(os, "link", lambda real: self._move(real, "link"))
        self._patch(os, "replace", lambda real: self._move(real, "replace"))
        if "torch" in sys.modules or _importable("torch"):
            import torch
            self._patch(torch, "save", lambda real: self._saving(real, "torch.save"))
        if _importable("matplotlib"):
            from matplotlib import figure
            self._patch(figure.Figure, "savefig",
                        lambda real: self._saving(real, "savefig"))   # (figure, path)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, real in reversed(self._saved):
            setattr(owner, name, real)
        self._saved.clear()


builtins_open = builtins.open   # the real one, whatever is patched later
FILLER = "filler"


@contextlib.contextmanager
def tmpfs(directory: str, size: str, without: str) -> Iterator[str]:
    """A tmpfs of `size` (e.g. "16m") mounted at `directory` for the block: a real disk a
    test can fill. Mounting needs root: otherwise the test is skipped, saying so and what
    runs `without` it."""
    import subprocess

    import pytest

    os.makedirs(directory, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", directory],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CAP_SYS_ADMIN); {without} still run: "
                    f"{mount.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", directory], check=True)


def fill_disk(mount: str) -> None:
    """Takes every free block of the file system at `mount` (a tmpfs) with mount/filler."""
    free = os.statvfs(mount)
    with builtins_open(os.path.join(mount, FILLER), "ab") as fh:
        fh.write(b"\0" * (free.f_bavail * free.f_frsize))


def release_orbax_threads() -> None:
    """Ends the threads a failed orbax save leaves waiting (minutes) for signals that will
    never be sent, so that this process, which goes on to other cases, can exit: each is
    cancelled, then its signals set (it then returns without running its work). A command
    does not need this: it exits at once after its error line (kd_jax.errors.exit_now)."""
    from orbax.checkpoint._src.futures import future, signaling_client

    client = signaling_client.get_signaling_client()
    for thread in threading.enumerate():
        if isinstance(thread, future._SignalingThread) and thread.is_alive():
            thread.cancel()
            for signal_ in thread._receive_signals:
                key = future.AwaitableSignalsContract.get_unique_awaitable_singal_key(
                    signal_, thread._operation_id)
                client.key_value_set(key, "released", allow_overwrite=True)
            threading.Thread.join(thread, timeout=30)   # its own join raises Cancelled


def _importable(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


# --- classifying ------------------------------------------------------------------------------

GENERIC = ("train", "compile")   # the sites of every run (and of every compilation)


def site_of(rel: str, scenario: str) -> Optional[Site]:
    """The site a root-relative path belongs to in `scenario`: the scenario's own sites
    first, then those of every run (GENERIC), the workdir last."""
    for site in sorted(SITES, key=lambda s: (s.scenario != scenario, s.name == "workdir")):
        if site.scenario in (scenario, *GENERIC) and re.fullmatch(site.pattern, rel):
            return site
    return None


def ignored(rel: str) -> bool:
    return any(re.fullmatch(p, rel) for p in IGNORED)


# --- the cases, in a subprocess -----------------------------------------------------------------

@contextlib.contextmanager
def environment(root: str) -> Iterator[None]:
    """The scenario's environment in this process: the caches and temporary files under
    `root` (restored after)."""
    import tempfile

    saved = {k: os.environ.get(k) for k in ("KD_JAX_CACHE", "KD_JAX_TEACHERS", "TMPDIR")}
    tmp = os.path.join(root, "tmp")
    os.makedirs(tmp, exist_ok=True)
    os.environ.update(KD_JAX_CACHE=os.path.join(root, "cache"), TMPDIR=tmp)
    os.environ.pop("KD_JAX_TEACHERS", None)
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, tmp   # set: no probe file written
    try:
        yield
    finally:
        tempfile.tempdir = saved_tempdir
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cifar_patches(url: str) -> list:
    """(owner, name, value): point the CIFAR-10 download at the local server's archive."""
    from kd_jax.data import cifar, tfds_io

    spec = cifar.SPECS["cifar10"]
    md5 = os.environ.get("KD_JAX_FAULTS_MD5", "")
    patched = dataclasses.replace(spec, md5=md5)
    return [(cifar.SPECS, "cifar10", patched),
            (type(spec), "url", property(lambda self: url + "/cifar-10-python.tar.gz")),
            (tfds_io, "network_reachable", lambda *a, **k: True)]


@contextlib.contextmanager
def patched(patches: list) -> Iterator[None]:
    saved = []
    for owner, name, value in patches:
        if isinstance(owner, dict):
            saved.append((owner, name, owner[name]))
            owner[name] = value
        else:
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            if isinstance(owner, dict):
                owner[name] = value
            else:
                setattr(owner, name, value)


def scenario_patches(scenario: str, root: str) -> list:
    if scenario == "cifar":
        return cifar_patches(os.environ[URL_ENV])
    if scenario == "cub":
        return cub_patches(root)
    return []


def _run_case(mode: str, scenario: str, site_name: str, root: str, arg: str) -> int:
    """`python tests/faults.py run MODE SCENARIO SITE ROOT ARG`: the scenario's command with
    the site failing (MODE fail, ARG the errno name) or killed (MODE kill, ARG the file for
    the record of what was finished); returns the command's exit status."""
    import jax

    jax.config.update("jax_disable_most_optimizations", True)   # as tests/conftest.py
    site = {s.name: s for s in SITES}.get(site_name)
    s = SCENARIOS[scenario]
    spec = {"fail": (site, FAILURES.get(arg)), "kill": (site, arg), "fill": (site, arg),
            "record": None}[mode]
    with environment(root), patched(scenario_patches(scenario, root)), \
            Interceptor(root, **({} if mode == "record" else {mode: spec})) as interceptor:
        code = run_command(s.module, s.argv(root))
    if mode == "record":   # ARG: the file for the operations seen
        with builtins_open(arg, "w") as fh:
            json.dump([dataclasses.astuple(op) for op in interceptor.ops], fh)
    return code


def line_pattern(site: Site, code: int, root: str) -> str:
    """The regular expression of the error line `site.sees` (with its placeholders) for the
    errno `code` in `root`."""
    from kd_jax import errors

    text = re.escape(errors.PREFIX + site.sees)
    for token, value in (("ROOT", re.escape(root)), ("CAUSE", re.escape(str(errors.Cause(code)))),
                         ("STRERROR", re.escape(os.strerror(code))), ("ADVICE", ".+?"),
                         ("ANY", ".*?"), ("NUM", r"\d+"), ("HOST", r"[\w.-]+"), ("PID", r"\d+"),
                         ("PAIR", r"[\w.]+-[\w.]+"), ("KEY", r"\w+")):
        text = text.replace(token, value)
    return text


# --- the table of docs/troubleshooting.md --------------------------------------------------------

_SHOWN = (("ROOT/run/tiny", "DIR/TABLE"), ("ROOT/run", "DIR"), ("ROOT/out/model.pth", "OUT"),
          ("ROOT/out/table.md", "TABLE"),
          ("ROOT/converted", "OUT_DIR"), ("ROOT/cache", "$KD_JAX_CACHE"),
          ("ROOT/teachers", "$KD_JAX_TEACHERS"), ("ROOT/tmp", "$TMPDIR"),
          ("ROOT/mirror", "MIRROR"), ("STRERROR", "CAUSE"), ("ADVICE", "WHAT TO DO"),
          ("ANY", "..."), ("NUM", "N"))


def _shown(text: str) -> str:
    """A site's `sees` as the table shows it (its placeholders in words)."""
    for token, shown in _SHOWN:
        text = text.replace(token, shown)
    return text.replace("|", r"\|")


def table() -> str:
    """The failure table: one row per site, generated from SITES."""
    rows = ["| Where | Disk full, no permission, read-only (ENOSPC, EACCES, EROFS) | Killed "
            "(SIGKILL) right there | What to do |", "|---|---|---|---|"]
    for site in SITES:
        seen = (f"`kd_jax: error: {_shown(site.sees)}`" if site.sees is not None
                else site.goes_on)
        if site.xfail:
            seen += f" (not yet: {site.xfail})"
        rows.append(f"| {site.where} | {seen} | {site.killed}; the same command finishes | "
                    f"{site.todo} |")
    return "\n".join(rows)


def doc_block() -> str:
    return f"{MARKERS[0]}\n{table()}\n{MARKERS[1]}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        print(table())
    elif sys.argv[1:2] == ["run"]:
        sys.path.insert(0, TESTS)
        from kd_jax import errors
        errors.exit_now(_run_case(*sys.argv[2:7]))   # as the commands end
    else:
        sys.exit(__doc__)
