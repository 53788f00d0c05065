"""Writes colab/kd_jax_tpu.ipynb (outputs stripped) from the cells below.

    python colab/build_notebook.py

Edit the cells here, not the .ipynb: tests/test_notebook.py checks that the notebook is
this script's output and executes it on CPU.
"""

from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kd_jax_tpu.ipynb")
REPO = "OWNER/kd_jax"   # placeholder: the repository's GitHub owner/name

CELLS = [
    ("md", f"""\
# kd_jax on a Colab TPU: SD-DKD on CIFAR-100 in bfloat16

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{REPO}/blob/main/colab/kd_jax_tpu.ipynb)

This notebook installs [kd_jax](https://github.com/{REPO}), gets a teacher (converts a PyTorch
checkpoint, or trains one), distils it into a student with **SD-DKD** (scale-decoupled DKD)
on CIFAR-100, data-parallel over every TPU core in bfloat16, and plots the test accuracy of
every epoch. Choose *Runtime -> Change runtime type -> TPU* (a GPU works too).

Without an accelerator (e.g. a CPU runtime, or CI) the parameters cell picks a small setting
by itself (a few hundred Fashion-MNIST or synthetic images, small models, 2 epochs), so the
unchanged notebook finishes in a few minutes on a 2-core CPU.

Runs keep their checkpoints in a work directory; with it on Google Drive, a run that a
disconnect interrupted resumes where it stopped (see *Resuming* below)."""),
    ("md", """\
## Install

In Colab: kd_jax from the repository, and the TPU (or CUDA) build of the JAX version it
resolves to. Colab TPU runtimes ship JAX but not TensorFlow, which kd_jax reads datasets
with; kd_jax's requirements bring `tensorflow-cpu`, `tensorflow-datasets` and
`importlib_resources`. Elsewhere (a checkout with `pip install -e .`, CI) nothing is installed."""),
    ("code", f"""\
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
REPO = "https://github.com/{REPO}"   # placeholder: the repository's address


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


if importlib.util.find_spec("kd_jax") is None:
    if not IN_COLAB:
        raise RuntimeError("kd_jax is not installed: run `pip install -e .` in a checkout")
    pip(f"kd_jax @ git+{{REPO}}")
    tpu = os.path.exists("/dev/accel0") or bool(os.environ.get("TPU_ACCELERATOR_TYPE"))
    gpu = os.path.exists("/dev/nvidia0")
    if tpu or gpu:
        jax_version = importlib.metadata.version("jax")
        pip(f"jax[{{'tpu' if tpu else 'cuda12'}}]=={{jax_version}}")

import jax
print("JAX", jax.__version__, "backend:", jax.default_backend())
print(jax.devices())"""),
    ("md", """\
## Parameters

`ACCELERATOR` is True on a TPU or GPU runtime: the CIFAR-100 recipe of resnet32x4 ->
resnet8x4 (240 epochs, the recipe's global batch 64 sharded over all devices; raise
`BATCH` with the learning rate to use big TPU slices well). On a CPU: a small setting that
runs in minutes. bfloat16 is the compute dtype of both models (parameters, BatchNorm
statistics, optimizer state and losses stay float32); `COMPUTE_DTYPE = "float32"` gives
exact parity with the PyTorch reference."""),
    ("code", """\
from kd_jax.data import fashion_mnist

ACCELERATOR = jax.default_backend() != "cpu"
TEACHER_PTH = ""        # a PyTorch teacher to convert (see below); "" trains one here
USE_DRIVE = True        # Colab: keep the work directory on Google Drive
RUN_NAME = "sd_dkd_cifar100" if ACCELERATOR else "sd_dkd_small"
COMPUTE_DTYPE = "bfloat16"

if ACCELERATOR:
    DATASET, LIMIT_TRAIN, LIMIT_TEST = "cifar100", 0, 0   # 0: all images
    TEACHER, STUDENT = "resnet32x4", "resnet8x4"
    TEACHER_EPOCHS, STUDENT_EPOCHS, WARMUP_EPOCHS = 240, 240, 20
    BATCH, LOG_EVERY = 64, 100
else:   # a 2-core CPU: a few minutes in all
    DATASET = "fashion_mnist" if os.path.isdir(fashion_mnist.DEBIAN_DIR) else "synthetic"
    LIMIT_TRAIN, LIMIT_TEST = 768, 256
    TEACHER, STUDENT = "resnet14", "resnet8"
    TEACHER_EPOCHS, STUDENT_EPOCHS, WARMUP_EPOCHS = 2, 2, 1
    BATCH, LOG_EVERY = 64, 4

print(f"{'accelerator' if ACCELERATOR else 'CPU'} setting: {DATASET}, {TEACHER} -> {STUDENT}, "
      f"batch {BATCH} over {jax.device_count()} device(s), {COMPUTE_DTYPE}")"""),
    ("md", """\
## Work directory (Google Drive)

Every run writes its checkpoints (each epoch, and when the runtime is shut down), logs and
summary to `WORKDIR/<run>`. In Colab, with `USE_DRIVE`, that directory is on your Google
Drive, so it survives a disconnect."""),
    ("code", """\
if IN_COLAB and USE_DRIVE:
    from google.colab import drive
    drive.mount("/content/drive")
    WORKDIR = os.path.join("/content/drive/MyDrive/kd_jax", RUN_NAME)
else:
    WORKDIR = os.path.abspath(os.path.join("runs", RUN_NAME))
os.makedirs(WORKDIR, exist_ok=True)
print("work directory:", WORKDIR)"""),
    ("md", """\
## Configs

The same configs as `python -m kd_jax.main --config configs/cifar_sdd.py:resnet32x4-resnet8x4`
(`kd_jax.recipes.build_config` resolves every hyperparameter of the recipe), with the
parameters above."""),
    ("code", """\
from kd_jax import recipes
from kd_jax.train import trainer


def with_parameters(c, epochs):
    c.dataset.name = DATASET
    c.dataset.limit_train, c.dataset.limit_test = LIMIT_TRAIN, LIMIT_TEST
    if DATASET == "synthetic":
        c.dataset.update(num_train=LIMIT_TRAIN, num_test=LIMIT_TEST, num_classes=10)
    c.num_epochs, c.batch_size, c.compute_dtype = epochs, BATCH, COMPUTE_DTYPE
    c.log_every_steps, c.tensorboard = LOG_EVERY, ACCELERATOR
    return c


teacher_config = with_parameters(
    recipes.build_config("ce", "cifar100", TEACHER, default_pair=TEACHER), TEACHER_EPOCHS)
student_config = with_parameters(
    recipes.build_config("sdd", "cifar100", "resnet32x4-resnet8x4,dkd",
                         default_pair="resnet32x4-resnet8x4"), STUDENT_EPOCHS)
student_config.teacher.arch, student_config.student.arch = TEACHER, STUDENT
student_config.method.warmup_epochs = WARMUP_EPOCHS
print(student_config.method)"""),
    ("md", """\
## Teacher: convert a PyTorch checkpoint, or train one

The published CIFAR-100 teachers (mdistiller's `cifar_teachers.tar`, e.g.
`resnet32x4_vanilla/ckpt_epoch_240.pth`) convert exactly; set `TEACHER_PTH` to one (after
uploading it, or downloading it into the runtime). Without one, the teacher is trained here
with cross-entropy alone (the `configs/cifar_teacher.py` recipe)."""),
    ("code", """\
teacher_run = None
if TEACHER_PTH:
    TEACHER_DIR = os.path.join(WORKDIR, "teacher_converted")
    if not os.path.isdir(TEACHER_DIR):
        subprocess.run([sys.executable, "-m", "kd_jax.convert", "--arch", TEACHER,
                        "--num-classes", "100", TEACHER_PTH, TEACHER_DIR], check=True)
else:
    teacher_run = trainer.train_and_evaluate(teacher_config, os.path.join(WORKDIR, "teacher"))
    TEACHER_DIR = os.path.join(WORKDIR, "teacher", trainer.FINAL_MODEL_DIR)
student_config.teacher.checkpoint = TEACHER_DIR"""),
    ("md", """\
## SD-DKD student, sharded over every device

`trainer.train_and_evaluate` jits one step over a mesh of all devices (batch sharded,
parameters replicated): on a TPU v2-8 each of its 8 cores gets 8 images of the global
batch of 64 (a v5e-1 chip gets all 64). The progress bar shows the loss and images/s;
each epoch ends with the test accuracy."""),
    ("code", """\
student_run = trainer.train_and_evaluate(student_config, os.path.join(WORKDIR, "student"))"""),
    ("md", "## Accuracy curves"),
    ("code", """\
%matplotlib inline
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 4))
for label, run in ((f"teacher {TEACHER} (CE)", teacher_run),
                   (f"student {STUDENT} (SD-DKD)", student_run)):
    if run is not None and run.get("history"):
        ax.plot([h["epoch"] for h in run["history"]], [h["top1"] for h in run["history"]],
                marker="o", label=label)
ax.set_xlabel("epoch")
ax.set_ylabel("test top-1 (%)")
ax.set_title(f"SD-DKD on {DATASET} ({COMPUTE_DTYPE})")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
print(f"student: best top-1 {student_run['best_top1']:.2f}, last {student_run['last_top1']:.2f}"
      f" after {student_run['steps']} steps")"""),
    ("md", """\
## Resuming after a disconnect

Colab runtimes disconnect (idle time, usage limits). Nothing is lost with the work directory
on Drive:

1. Reconnect (a TPU runtime again), then *Runtime -> Run all*.
2. The install cell reinstalls kd_jax; the Drive cell mounts the same `WORKDIR`.
3. Each `train_and_evaluate` finds the latest checkpoint of its run directory and continues
   from that step, with the same data order: the run ends with the parameters an
   uninterrupted run would have. A finished run (the teacher, typically) is not trained
   again: its summary is printed and the student starts, or resumes, right away.

Checkpoints are written at every epoch end, at the end, and when the runtime stops the
process (SIGTERM) or you press *Interrupt* (the run saves its step and raises `RunStopped`;
run the cell again to go on); a disconnect loses at most the current epoch. The trained student is in
`WORKDIR/student/final_model`, loadable as a teacher by kd_jax (`teacher.checkpoint`).

For more than one TPU host (a pod slice), run `python -m kd_jax.main ...
--config.multihost=True` on every host instead: see the README."""),
]


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src)
             for kind, src in CELLS]
    nb = new_notebook(cells=cells, metadata={
        "accelerator": "TPU",
        "colab": {"provenance": [], "toc_visible": True},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    # Stable cell ids: rebuilding gives the same file.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def main() -> None:
    nbformat.write(build(), PATH)
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
