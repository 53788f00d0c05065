"""A run's exported students: final_model/ and best_model/, each loadable as a teacher.

final_model/ holds the last step's weights with the last evaluation's accuracy (the run
evaluates after its last step); best_model/ the weights of the best evaluation
(mdistiller's student_best), written at the evaluation that improves on the best, before
the checkpoint recording it (a run killed in between redoes the same steps on resume and
rewrites the same weights). Each is written to <dir>.tmp and renamed into place.

Exports are part of finishing: a run is finished only when every export is complete. An
export directory (kd_jax.convert.save_converted) is complete when its orbax `state/` has
been finalized and its `teacher.json` written: save_converted removes teacher.json before it
overwrites anything and writes it last, so teacher.json marks a complete export. A run killed
after its last checkpoint, or whose export hit a full disk, leaves an export that is missing
or partial (an empty directory, or only `*.orbax-checkpoint-tmp*`); the next run of the same
command redoes it from the last checkpoint (kd_jax.train.trainer).
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Iterable

import jax
from flax import nnx

from kd_jax import convert
from kd_jax.convert import converted
from kd_jax.data import catalog, own
from kd_jax.train import summary as summary_lib
from kd_jax.train.checkpoint import raise_if_storage

if TYPE_CHECKING:
    from kd_jax.train.resume import LoopState
    from kd_jax.train.setup import Setup, Student

TMP_MARK = ".orbax-checkpoint-tmp"
FINAL_MODEL_DIR = "final_model"   # the last step's student, loadable as a teacher.
BEST_MODEL_DIR = "best_model"     # the student of the best evaluation (mdistiller's student_best).
# What finishing a run exports for each student (and redoes when a rerun finds it missing).
# best_model/ is not here: it cannot be rebuilt from the last checkpoint.
EXPORT_DIRS = (FINAL_MODEL_DIR,)


def is_complete(path: str) -> bool:
    """Whether `path` holds a finished export (finalized state/ and teacher.json)."""
    if not (os.path.isfile(os.path.join(path, converted.META_FILE))
            and os.path.isdir(os.path.join(path, converted.STATE_DIR))):
        return False
    return not any(TMP_MARK in name for name in os.listdir(path))


def missing(paths: Iterable[str]) -> list[str]:
    """The paths among `paths` whose export is missing or partial."""
    return [p for p in paths if not is_complete(p)]


def clear_partial(path: str) -> None:
    """Removes what an export cut short left in `path` (orbax's *.orbax-checkpoint-tmp*
    directories), before the export is redone; finished files are left alone."""
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        if TMP_MARK in name:
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)


def data_record(s: Setup) -> dict:
    """What teacher.json records of the data, so that `python -m kd_jax.evaluate MODEL`
    needs nothing else: the dataset's name; its class names where it has them; on own data
    the dataset config with data_dir absolute and the mean/std it normalised with; the
    model_file registering the arch, if any."""
    c = s.config
    record = {"dataset": c.dataset.name}
    if s.ds.info.classes:
        record["classes"] = list(s.ds.info.classes)
    if catalog.is_own(c.dataset.name):
        mean, std = own.normalization(s.ds)
        record["dataset_config"] = {
            **c.dataset.to_dict(), "mean": list(mean), "std": list(std),
            "data_dir": os.path.abspath(c.dataset.data_dir) if c.dataset.data_dir else None}
    if c.get("model_file"):
        record["model_file"] = os.path.abspath(c.model_file)
    return record


def save_model(s: Setup, state, student: Student, dirname: str, evaluation: dict) -> None:
    """The student's weights in `state` (a TrainState) as a teacher-loadable
    <out_dir>/<dirname>, with the accuracy of `evaluation` ({"epoch", "step", "top1",
    "top5"}: an evaluation of THESE weights) in its teacher.json. Written to <dirname>.tmp,
    then renamed into place (process 0), so a kill never leaves a half-written model under
    the final name. A failed write (disk full, permission) is one StorageError line."""
    st = state.students[student.plan.name]
    model = nnx.merge(student.graphdef, jax.device_get(st.params["model"]),
                      jax.device_get(st.model_state))
    model.eval()
    path = os.path.normpath(os.path.join(student.out_dir, dirname))
    try:
        if jax.process_index() == 0:   # what an earlier export cut short left there
            clear_partial(path + ".tmp")
        # Every process: the orbax save synchronises them all (process 0 writes).
        convert.save_converted(model, path + ".tmp", {
            "arch": s.config.student.arch, "num_classes": s.ds.info.num_classes,
            "weights": dirname, **{k: evaluation[k] for k in ("epoch", "step", "top1", "top5")},
            "source": "kd_jax.train", **data_record(s)}, overwrite=True)
        if jax.process_index() == 0:
            shutil.rmtree(path + ".old", ignore_errors=True)
            if os.path.exists(path):
                os.rename(path, path + ".old")
            os.rename(path + ".tmp", path)
            shutil.rmtree(path + ".old", ignore_errors=True)
    except Exception as e:  # noqa: BLE001  a storage cause becomes one line, others re-raise
        raise_if_storage(e, f"could not export the model to {path}", s.ckpt.latest_step(),
                         s.ckpt.directory)
        raise


def export_final(s: Setup, loop: LoopState, student: Student) -> None:
    """final_model/: the last step's weights with the last evaluation's accuracy."""
    save_model(s, loop.state, student, FINAL_MODEL_DIR, loop.history[student.plan.name][-1])


def model_records(out_dir: str) -> dict:
    """{"final_model": ..., "best_model": ...}: each exported model's teacher.json record
    (epoch, step, top1, top5 of its own weights) and path, or None where it is absent."""
    records = {}
    for dirname in (FINAL_MODEL_DIR, BEST_MODEL_DIR):
        path = os.path.join(out_dir, dirname)
        meta = summary_lib.read_json(os.path.join(path, "teacher.json"))
        records[dirname] = None if meta is None else {
            "path": path, **{k: meta.get(k) for k in ("epoch", "step", "top1", "top5")}}
    return records


def export_dirs(s: Setup) -> list[str]:
    """Every export directory a finished run must hold (all students)."""
    if not s.config.export_model:
        return []
    return [os.path.join(st.out_dir, d) for st in s.students.values() for d in EXPORT_DIRS]


def export_all(s: Setup, loop: LoopState, summaries: dict) -> None:
    """Exports every student (the state checked finite first) and records the exported
    models in its summary."""
    s.check_finite(loop)
    if not s.config.export_model:
        return
    if jax.process_index() == 0:
        for path in export_dirs(s):
            clear_partial(path)
    for name, st in s.students.items():
        export_final(s, loop, st)
        summaries[name].update(model_records(st.out_dir))
