"""Multi-run pipelines: the quickstart (teacher, then several students on one dataset).

Each run is an ordinary trainer run in <workdir>/<run name>; students load the teacher from
<workdir>/teacher/final_model (the trainer's export). Outputs: a printed table, a JSON
summary and a PNG plot of test top-1 per epoch for every run.
"""

from __future__ import annotations

import json
import os

import ml_collections

from kd_jax import methods, recipes
from kd_jax.data import catalog
from kd_jax.train import trainer

# The quickstart's students take the CIFAR-100 recipe of this pair (DKD beta 8, T 4, ...).
RECIPE_PAIR = ("resnet32x4", "resnet8x4")


def _label(run: str) -> str:
    return {"teacher": "teacher (CE)", "ce": "student alone (CE)"}.get(run, methods.label_of(run))


def run_config(q, run: str, teacher_dir: str) -> ml_collections.ConfigDict:
    """The trainer config of one quickstart run (q: the quickstart config)."""
    if run == "teacher":
        method, base, arch = "ce", None, q.teacher_arch
    else:
        keys = methods.method_keys()
        if run not in keys:
            raise ValueError(f"students entry {run!r}; allowed: {', '.join(keys)}")
        (method, base), arch = keys[run], q.student_arch
    c = recipes.base_config(q.dataset.name)
    c.dataset = ml_collections.ConfigDict(q.dataset.to_dict())
    c.recipe = f"quickstart/{run}"
    c.student.arch = arch
    c.method = recipes.method_block(method, recipes.reference_hparams(
        method, catalog.CIFAR100, *RECIPE_PAIR, base or ""))
    if c.method.get("warmup_epochs"):
        c.method.warmup_epochs = q.warmup_epochs
    if method != "ce":
        c.teacher.arch = q.teacher_arch
        c.teacher.checkpoint = os.path.join(teacher_dir, trainer.FINAL_MODEL_DIR)
    c.optimizer.lr = q.lr
    c.optimizer.schedule = q.schedule
    c.optimizer.milestones = ()
    c.num_epochs, c.batch_size, c.seed = q.num_epochs, q.batch_size, q.seed
    c.eval_batch_size = q.eval_batch_size
    c.progress_bar, c.tensorboard, c.log_every_steps = q.progress_bar, q.tensorboard, q.log_every_steps
    return c


def _plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, summary in results.items():
        epochs = [h["epoch"] for h in summary["history"]]
        top1 = [h["top1"] for h in summary["history"]]
        ax.plot(epochs, top1, marker="o", label=_label(run),
                linestyle="--" if run == "teacher" else "-")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fashion-MNIST quickstart")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(results: dict) -> str:
    lines = [f"{'run':<20} {'arch':<10} {'best top-1':>10} {'last top-1':>10} {'img/s':>8}"]
    for run, s in results.items():
        ips = "-" if s["images_per_s"] is None else f"{s['images_per_s']:.0f}"
        lines.append(f"{_label(run):<20} {s['student']:<10} {s['best_top1']:>10.2f} "
                     f"{s['last_top1']:>10.2f} {ips:>8}")
    return "\n".join(lines)


def run_pipeline(q, workdir: str) -> dict:
    """Runs the quickstart; returns {run: trainer summary}."""
    if q.pipeline != "quickstart":
        raise ValueError(f"pipeline={q.pipeline!r}; allowed: quickstart")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    teacher_dir = os.path.join(workdir, "teacher")
    runs = ["teacher"] + [r.strip() for r in q.students.split(",") if r.strip()]
    configs = {run: run_config(q, run, teacher_dir) for run in runs}   # validate names first
    results = {}
    for run in runs:
        print(f"\n=== quickstart: {_label(run)} ===", flush=True)
        results[run] = trainer.train_and_evaluate(configs[run], os.path.join(workdir, run))
    plot_path = os.path.join(workdir, "quickstart_accuracy.png")
    _plot(results, plot_path)
    with open(os.path.join(workdir, "quickstart_summary.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    print("\n" + format_table(results) + f"\n\nplot: {plot_path}", flush=True)
    return results
