"""The quickstart: one teacher, students in lockstep, several seeds, a computed verdict.

    python -m kd_jax.main --config quickstart.py --workdir DIR

1. Teacher: the resnet14 shipped in kd_jax/assets/quickstart_teacher (trained on the full
   Fashion-MNIST train set by kd_jax/configs/quickstart_teacher.py; RECORD.json holds the command,
   the sha256 of its files and its accuracy). If it is missing or its files do not match the
   recorded sha256, it is retrained into DIR/teacher with that config.
2. Students (`students`, by method key; default resnet8 alone (CE), SD-KD and SD-DKD),
   trained in LOCKSTEP (one jitted step, one teacher forward, the same batches) on the first
   `dataset.limit_train` training images, once per seed (DIR/students/seed_<s>; the seed
   changes initialisation, data order and augmentation), and evaluated on the full 10k test set.
3. Verdict: a method beats the student alone when its mean top-1 exceeds the student's by more
   than the combined spread (the sum of the two sample stds over seeds). It is computed and
   printed from the numbers, with the table, and written to DIR/quickstart_summary.json; the
   plot DIR/quickstart_accuracy.png shows each run's mean and spread. The summary records the
   machine (kd_jax.machine), since XLA's CPU code and so every number depend on it.
4. Check (CI, outside the library): `python .ci/check_verdict.py DIR` compares the run's
   verdict with the table README.md shows (between its quickstart-output markers); .ci/run
   does this on every CI machine and fails if any method's verdict differs.

Each student takes the CIFAR-100 recipe of resnet32x4 -> resnet8x4 (DKD beta 8, T 4, SDD
scales [1,2]; SDD's gradient clip 40 for the SD students), except that warmups of 20 epochs
become `warmup_epochs` (the quickstart runs a few epochs, not 240; its 1 means no warmup at
all, since min(epoch/1, 1) = 1 from epoch 1).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys

import ml_collections

from kd_jax import machine as machine_lib
from kd_jax import methods, recipes
from kd_jax.recipes import quickstart
from kd_jax.data import catalog
from kd_jax.train import config_validation as validation
from kd_jax.train import seeds as seeds_lib
from kd_jax.train import stops
from kd_jax.train import summary as summary_lib
from kd_jax.train import trainer

RECIPE_PAIR = ("resnet32x4", "resnet8x4")
RECORD_FILE = "RECORD.json"
BASELINE = "ce"


def tree_sha256(directory: str) -> str:
    """sha256 over the relative paths and contents of every file under `directory`."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, directory).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def shipped_teacher(asset_dir: str = quickstart.ASSET_DIR) -> tuple[str | None, str]:
    """(path of the shipped teacher, "") if present and intact, else (None, why not)."""
    record_path = os.path.join(asset_dir, RECORD_FILE)
    record = summary_lib.read_json(record_path)
    model_dir = os.path.join(asset_dir, "model")
    if record is None or not os.path.isdir(model_dir):
        return None, f"no shipped teacher in {asset_dir}"
    if tree_sha256(model_dir) != record["sha256"]:
        return None, f"{model_dir} does not match the sha256 in {record_path}"
    return model_dir, ""


def students_config(q, teacher_checkpoint: str) -> ml_collections.ConfigDict:
    """The lockstep trainer config of the quickstart's students (q: the quickstart config)."""
    c = recipes.base_config(q.dataset.name)
    c.dataset = ml_collections.ConfigDict(q.dataset.to_dict())
    c.recipe = "quickstart"
    c.teacher.arch, c.teacher.checkpoint = q.teacher_arch, teacher_checkpoint
    c.student.arch = q.student_arch
    entries = {}
    for name, key, offset in recipes.parse_students(q.students):
        entry = recipes.student_entry(key, catalog.CIFAR100, *RECIPE_PAIR, offset)
        if entry.method.get("warmup_epochs"):
            entry.method.warmup_epochs = q.warmup_epochs
        entries[name] = entry
    c.students = ml_collections.ConfigDict(entries)
    c.optimizer.lr, c.optimizer.schedule, c.optimizer.milestones = q.lr, q.schedule, ()
    c.num_epochs, c.batch_size, c.eval_batch_size = q.num_epochs, q.batch_size, q.eval_batch_size
    c.eval_every_epochs = q.eval_every_epochs
    c.progress_bar, c.tensorboard = q.progress_bar, q.tensorboard
    c.log_every_steps = q.log_every_steps
    c.export_model = False
    c.cpu_conv = q.get("cpu_conv", "auto")
    return c


def verdicts(result: dict, metric: str = "last_top1") -> dict:
    """{student: {"diff", "spread", "verdict"}} against the student alone (BASELINE)."""
    base = result["students"][BASELINE][metric]
    out = {}
    for name, r in result["students"].items():
        if name == BASELINE:
            continue
        m = r[metric]
        diff = m["mean"] - base["mean"]
        spread = (m["std"] or 0.0) + (base["std"] or 0.0)
        verdict = ("beats the student alone" if diff > spread else
                   "is worse than the student alone" if diff < -spread else
                   "no clear difference from the student alone")
        out[name] = {"diff": diff, "spread": spread, "verdict": verdict}
    return out


def label_of(result: dict, name: str) -> str:
    return "student alone (CE)" if name == BASELINE else result["students"][name]["method"]


def verdict_line(result: dict, verdict: dict) -> str:
    """'verdict: SD-DKD, SD-KD beat the student alone by more than the combined spread'."""
    beat = [result["students"][k]["method"] for k, v in verdict.items()
            if v["verdict"].startswith("beats")]
    if not beat:
        return "verdict: no method beats the student alone by more than the combined spread"
    return ("verdict: " + ", ".join(beat) + " beat" + ("s" if len(beat) == 1 else "")
            + " the student alone by more than the combined spread")


def format_table(teacher: dict, result: dict, verdict: dict, machine: dict | None = None) -> str:
    n = len(result["seeds"])
    lines = [f"teacher {teacher['student']}: test top-1 {teacher['top1']:.2f} "
             f"({teacher['source']})",
             f"students {next(iter(result['students'].values()))['student']}, {n} seeds, full "
             "test set; top-1 (%) mean ± sample std:",
             f"{'run':<20} {'best top-1':>15} {'last top-1':>15} {'vs alone (last)':>17}  verdict"]
    pm = seeds_lib.format_mean_std
    for name, r in result["students"].items():
        if name == BASELINE:
            vs, text = "", ""
        else:
            v = verdict[name]
            vs, text = f"{v['diff']:+.2f} ± {v['spread']:.2f}", v["verdict"]
        lines.append(f"{label_of(result, name):<20} {pm(r['best_top1']):>15} "
                     f"{pm(r['last_top1']):>15} {vs:>17}  {text}".rstrip())
    lines.append(verdict_line(result, verdict))
    if machine:
        lines.append("machine: " + machine_lib.one_line(machine))
    return "\n".join(lines)


def _plot(result: dict, verdict: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["students"])
    means = [result["students"][n]["last_top1"]["mean"] for n in names]
    stds = [result["students"][n]["last_top1"]["std"] or 0.0 for n in names]
    labels = ["alone (CE)" if n == BASELINE else result["students"][n]["method"] for n in names]
    colors = ["tab:gray" if n == BASELINE else
              "tab:green" if verdict[n]["verdict"].startswith("beats") else "tab:blue"
              for n in names]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.bar(labels, means, yerr=stds, capsize=6, color=colors)
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0.0, low - 5), min(100.0, max(m + s for m, s in zip(means, stds)) + 2))
    ax.set_ylabel("test top-1 (%), mean ± std")
    ax.set_title(f"Fashion-MNIST quickstart: {len(result['seeds'])} seeds, full test set")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies below it (as printed tables and
    the README show it), else as given."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _teacher(q, workdir: str) -> dict:
    """The teacher to distil from: the shipped one, or one retrained into workdir/teacher."""
    path, why = shipped_teacher(q.teacher_dir) if q.teacher_dir else (None, "teacher_dir unset")
    if path is not None:
        record = summary_lib.read_json(os.path.join(q.teacher_dir, RECORD_FILE))
        return {"checkpoint": path, "student": record["arch"], "top1": record["top1"],
                "source": f"shipped, {_shown(q.teacher_dir)}"}
    print(f"=== quickstart: teacher ({why}; training it with quickstart_teacher.py) ===",
          flush=True)
    c = quickstart.teacher_config()
    c.student.arch = q.teacher_arch
    c.dataset.data_dir = q.dataset.data_dir
    c.progress_bar, c.log_every_steps = q.progress_bar, q.log_every_steps
    c.num_epochs = q.teacher_epochs
    c.dataset.limit_train = q.teacher_limit_train
    c.dataset.limit_test = q.dataset.limit_test
    c.cpu_conv = q.get("cpu_conv", "auto")
    tdir = os.path.join(workdir, "teacher")
    s = trainer.train_and_evaluate(c, tdir)
    return {"checkpoint": os.path.join(tdir, trainer.FINAL_MODEL_DIR), "student": s["student"],
            "top1": s["last_top1"], "source": f"trained in {tdir}"}


def run_pipeline(q, workdir: str) -> dict:
    """Runs the quickstart; returns its summary (also DIR/quickstart_summary.json)."""
    if q.pipeline != "quickstart":
        raise validation.ConfigError(f"pipeline={q.pipeline!r}; allowed: quickstart")
    workdir = os.path.abspath(workdir)
    try:
        names = [n for n, _, _ in recipes.parse_students(q.students)]
    except ValueError as e:
        raise validation.ConfigError(f"students={q.students!r}: {e}") from None
    if BASELINE not in names:
        raise validation.ConfigError(f"students={q.students!r} must include {BASELINE!r} (the "
                                     "student alone), which the verdict compares with")
    seeds = validation.parse_seeds(q.seeds)
    # The students' config is checked before the teacher, which may have to be retrained.
    validation.validate(students_config(q, validation.RANDOM_TEACHER), check_files=False)
    with stops.stop_signals() as stop:   # a stop after the teacher's last step ends it here
        teacher = _teacher(q, workdir)
        stops.check_between_runs(stop, "the teacher finished", "the students")
        config = students_config(q, teacher["checkpoint"])
        validation.validate(config)
        print(f"\n=== quickstart: {', '.join(methods.label_of(n) for n in names)} in "
              f"lockstep, seeds {q.seeds} ===", flush=True)
        result = seeds_lib.run_seeds(config, os.path.join(workdir, "students"), seeds=seeds)
    verdict = verdicts(result)
    machine = machine_lib.describe()
    summary = {"teacher": teacher, "students": result["students"], "seeds": result["seeds"],
               "verdict": verdict, "machine": machine}
    summary_lib.write_json(os.path.join(workdir, "quickstart_summary.json"), summary)
    plot_path = os.path.join(workdir, "quickstart_accuracy.png")
    if importlib.util.find_spec("matplotlib") is not None:
        _plot(result, verdict, plot_path)
        plot_note = f"plot: {plot_path}"
    else:   # an optional extra: the table above says it all
        plot_note = "plot: skipped (matplotlib is not installed: pip install 'kd_jax[plots]')"
    print("\n" + format_table(teacher, result, verdict, machine) + f"\n\n{plot_note}",
          flush=True)
    return summary


def ship_teacher(run_dir: str, asset_dir: str = quickstart.ASSET_DIR) -> dict:
    """Copies a finished quickstart_teacher.py run's final model into the package and
    records the command, its sha256 and its accuracy beside it (RECORD.json)."""
    summary = summary_lib.read_json(os.path.join(run_dir, summary_lib.SUMMARY_FILE))
    if summary is None or not summary.get("finished"):
        raise SystemExit(f"{run_dir} holds no finished run")
    model_dir = os.path.join(asset_dir, "model")
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    os.makedirs(asset_dir, exist_ok=True)
    shutil.copytree(os.path.join(run_dir, trainer.FINAL_MODEL_DIR), model_dir)
    record = {
        "command": "python -m kd_jax.main --config quickstart_teacher.py "
                   "--workdir runs/quickstart_teacher && python -m kd_jax.train.pipeline "
                   "--ship runs/quickstart_teacher",
        "arch": summary["student"], "dataset": summary["dataset"],
        "top1": summary["last_top1"], "top5": summary["last_top5"],
        "epochs_evaluated": summary["epochs_evaluated"], "steps": summary["steps"],
        "train_images_per_s": summary["images_per_s"], "wall_time_s": summary["wall_time_s"],
        "sha256": tree_sha256(model_dir),
        "sha256_of": "the files of model/ (relative path and sha256 of each, sorted)",
    }
    summary_lib.write_json(os.path.join(asset_dir, RECORD_FILE), record)
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd_jax.train.pipeline",
        description="Ship a trained quickstart teacher into the package. (A quickstart run's "
                    "verdict is checked against README.md by .ci/check_verdict.py.)")
    parser.add_argument("--ship", metavar="RUN_DIR", required=True,
                        help="copy a finished quickstart_teacher.py run into "
                             f"{quickstart.ASSET_DIR} with its RECORD.json")
    args = parser.parse_args(argv)
    print(json.dumps(ship_teacher(args.ship), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
