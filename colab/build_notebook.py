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

This notebook installs [kd_jax](https://github.com/{REPO}), fetches the published resnet32x4
CIFAR-100 teacher (or converts a `.pth` you upload), distils it into a resnet8x4 student with
**SD-DKD** (scale-decoupled DKD) on CIFAR-100, data-parallel over every accelerator core in
bfloat16, and plots the test accuracy of every epoch.

Choose *Runtime -> Change runtime type -> v5e-1 TPU* (or v6e-1 TPU, or a GPU), then
*Runtime -> Run all*. On a CPU runtime the notebook stops with a message, unless you set
`CPU_DEMO = True` (a small Fashion-MNIST or synthetic setting that finishes in minutes: what
CI runs).

Google Drive keeps what must survive a disconnect, and only that: the CIFAR-100 archive
(downloaded once), the latest checkpoint of each run and the final models. Checkpoints are
written to the VM's disk."""),
    ("md", f"""\
## Install

Set `REPO_URL` once, to the kd_jax repository (your fork or `https://github.com/{REPO}`).
The runtime's preinstalled JAX says which accelerator this is (`jax.default_backend()`), so
kd_jax comes with the matching extra: `[tpu]` (libtpu for v5e/v6e), `[cuda12]` on a GPU. The
core install has no TensorFlow (CIFAR-100 is read from its archive with numpy). In a checkout
with kd_jax installed (CI), nothing is installed."""),
    ("code", f"""\
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

# The one place to set: the repository kd_jax is installed from.
REPO_URL = "https://github.com/{REPO}"
IN_COLAB = "google.colab" in sys.modules


def pip_install(*args):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def ask_jax():
    \"\"\"(backend, device kinds) of the installed JAX, asked in a fresh interpreter so that
    this kernel imports JAX only once its accelerator build is installed.\"\"\"
    probe = ("import json, jax; print(json.dumps([jax.default_backend(), "
             "sorted({{d.device_kind for d in jax.devices()}})]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1]) if out.returncode == 0 else (None, [])


def device_files():
    \"\"\"The accelerator the machine's device files suggest (when no JAX is preinstalled):
    TPU chips appear as /dev/accel* or, on v5e/v6e, as /dev/vfio/<n>.\"\"\"
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or os.environ.get(
            "TPU_ACCELERATOR_TYPE"):
        return "tpu"
    return "gpu" if os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") else "cpu"


if importlib.util.find_spec("kd_jax") is None:
    if "OWNER/" in REPO_URL:
        raise RuntimeError("REPO_URL is still the placeholder " + repr(REPO_URL) + ": set it "
                           "in this cell to the kd_jax repository (https://github.com/<owner>/"
                           "kd_jax) and run the cell again")
    backend = ask_jax()[0] if importlib.util.find_spec("jax") else None
    if backend in (None, "cpu"):
        backend = device_files()
    extra = {{"tpu": "tpu", "gpu": "cuda12"}}.get(backend)
    print(f"installing kd_jax[{{extra or 'core'}}] from {{REPO_URL}} ({{backend}} runtime)")
    pip_install(f"kd_jax[{{','.join(filter(None, [extra, 'plots']))}}] @ git+{{REPO_URL}}")

import jax

BACKEND = jax.default_backend()
DEVICE_KINDS = sorted({{d.device_kind for d in jax.devices()}})
print("JAX", jax.__version__, "backend:", BACKEND, "devices:", jax.device_count(), DEVICE_KINDS)
print(jax.devices())
if BACKEND == "cpu" and device_files() != "cpu":
    print(f"warning: this machine shows {{device_files()}} devices but JAX found none: "
          "Runtime -> Restart session and run this cell again (a JAX imported before the "
          "install keeps its old build)")"""),
    ("md", """\
## Parameters

On a TPU or GPU: the CIFAR-100 recipe of resnet32x4 -> resnet8x4 (240 epochs, the recipe's
global batch 64 sharded over all devices; raise `BATCH` with the learning rate to use big
TPU slices well). bfloat16 is the compute dtype where the chip runs it at full rate: TPUs
and GPUs of compute capability 8.0 or later (A100, L4, H100; parameters, BatchNorm
statistics, optimizer state and losses stay float32). A T4 or V100 has no bf16 tensor cores,
so there the notebook computes in float32; `COMPUTE_DTYPE = "float32"` also gives exact
parity with the PyTorch reference. `TEACHER_PTH`: a `.pth` you uploaded (Files pane) to use
instead of the published teacher. On a CPU runtime nothing runs unless `CPU_DEMO` is set."""),
    ("code", """\
from kd_jax import machine
from kd_jax.data import fashion_mnist

CPU_DEMO = False        # True: let a CPU runtime run a small demo (minutes, not the recipe)
CPU_DEMO = CPU_DEMO or os.environ.get("KD_JAX_CPU_DEMO") == "1"   # CI sets KD_JAX_CPU_DEMO=1
ACCELERATOR = BACKEND in ("tpu", "gpu")
if not ACCELERATOR and not CPU_DEMO:
    raise RuntimeError(
        f"JAX found no accelerator (backend {BACKEND!r}): this is a CPU runtime, where the "
        "240-epoch run would take weeks. Choose Runtime -> Change runtime type -> v5e-1 TPU "
        "(or v6e-1 TPU, or a GPU) and run all cells again, or set CPU_DEMO = True in this "
        "cell for the small demo.")

TEACHER_PTH = ""        # an uploaded PyTorch teacher; "" fetches the published one
USE_DRIVE = True        # Colab: keep the archive, the latest checkpoint and the models on Drive
SYNC_MINUTES = 10       # how often the latest checkpoint is copied to Drive
RUN_NAME = "sd_dkd_cifar100" if ACCELERATOR else "sd_dkd_small"
# bf16 where the chip runs it at full rate (and in the CPU demo, which shows the bf16 path).
FAST_BF16 = machine.bf16_is_fast(jax.devices()[0])
COMPUTE_DTYPE = "bfloat16" if FAST_BF16 or not ACCELERATOR else "float32"
if ACCELERATOR and not FAST_BF16:
    print(f"{DEVICE_KINDS[0]} has no bfloat16 tensor cores: computing in float32")

if ACCELERATOR:
    DATASET, LIMIT_TRAIN, LIMIT_TEST = "cifar100", 0, 0   # 0: all images
    TEACHER, STUDENT = "resnet32x4", "resnet8x4"
    TEACHER_EPOCHS, STUDENT_EPOCHS, WARMUP_EPOCHS = 0, 240, 20   # the teacher is fetched
    BATCH, LOG_EVERY = 64, 100
else:   # the CPU demo: a few minutes on 2 cores
    DATASET = "fashion_mnist" if os.path.isdir(fashion_mnist.DEBIAN_DIR) else "synthetic"
    LIMIT_TRAIN, LIMIT_TEST = 768, 256
    TEACHER, STUDENT = "resnet14", "resnet8"
    TEACHER_EPOCHS, STUDENT_EPOCHS, WARMUP_EPOCHS = 2, 2, 1
    BATCH, LOG_EVERY = 64, 4

print(f"{'accelerator' if ACCELERATOR else 'CPU demo'} setting: {DATASET}, {TEACHER} -> "
      f"{STUDENT}, batch {BATCH} over {jax.device_count()} device(s), {COMPUTE_DTYPE}")"""),
    ("md", """\
## Where things go

`WORKDIR` (the VM's disk) gets every checkpoint, log and summary. `PERSIST` (Google Drive in
Colab) gets the CIFAR-100 archive once, and for each run `run.tar`, holding its latest
checkpoint, logs and final model, written every `SYNC_MINUTES` under a scratch name and then
renamed, the previous copy kept as `run.prev.tar`: a disconnect in the middle of a copy
leaves the last complete one, which restore takes. Nothing is deleted or replaced on Drive
(deleted files stay in its trash and count against the quota): the three copies rotate, the
oldest becoming the next scratch file. After a disconnect, this cell unpacks the runs'
newest complete `run.tar` into the new VM's disk, and training resumes from there. Drive
also keeps the fetched teacher (`teachers/`) and JAX's compilation cache (`jax_cache/`), so
a new VM neither fetches nor converts the teacher again and reuses the compiled steps.
Outside Colab, `persist/` stands in for Drive."""),
    ("code", """\
from kd_jax.train import mirror

if IN_COLAB and USE_DRIVE:
    from google.colab import drive
    drive.mount("/content/drive")
    PERSIST, LOCAL = "/content/drive/MyDrive/kd_jax", "/content/kd_jax_runs"
else:
    PERSIST, LOCAL = os.path.abspath("persist"), os.path.abspath("runs")
DATA_DIR = os.path.join(PERSIST, "data")            # cifar-100-python.tar.gz, once
TEACHERS_DIR = os.path.join(PERSIST, "teachers")    # the fetched teacher, once
WORKDIR = os.path.join(LOCAL, RUN_NAME)             # the VM's disk
MIRROR = os.path.join(PERSIST, "runs", RUN_NAME)    # one run.tar per run
os.makedirs(DATA_DIR, exist_ok=True)
# Compiled steps survive the VM (set before anything is compiled).
jax.config.update("jax_compilation_cache_dir", os.path.join(PERSIST, "jax_cache"))
for part in ("teacher", "student"):
    step = mirror.restore(os.path.join(MIRROR, part), os.path.join(WORKDIR, part))
    if step is not None:
        print(f"{part}: restored the checkpoint of step {step} from {MIRROR}/{part}")
print("work directory:", WORKDIR, "| kept on Drive:", PERSIST)"""),
    ("md", """\
## Configs

The same configs as `python -m kd_jax.main --config cifar_sdd.py:resnet32x4-resnet8x4`
(`kd_jax.recipes.build_config` resolves every hyperparameter of the recipe), with the
parameters above. The Drive space the run will use is printed before it starts."""),
    ("code", """\
from flax import nnx

from kd_jax import models, recipes
from kd_jax.train import trainer


def with_parameters(c, epochs):
    c.dataset.name = DATASET
    if DATASET == "cifar100":
        c.dataset.data_dir = DATA_DIR   # the archive is downloaded there once, then reused
    c.dataset.limit_train, c.dataset.limit_test = LIMIT_TRAIN, LIMIT_TEST
    if DATASET == "synthetic":
        c.dataset.update(num_train=LIMIT_TRAIN, num_test=LIMIT_TEST, num_classes=10)
    c.num_epochs, c.batch_size, c.compute_dtype = epochs, BATCH, COMPUTE_DTYPE
    c.log_every_steps, c.tensorboard = LOG_EVERY, ACCELERATOR
    c.keep_checkpoints = 1   # the VM's disk holds the latest; Drive gets it through run.tar
    return c


teacher_config = with_parameters(
    recipes.build_config("ce", "cifar100", TEACHER, default_pair=TEACHER), TEACHER_EPOCHS)
student_config = with_parameters(
    recipes.build_config("sdd", "cifar100", "resnet32x4-resnet8x4,dkd",
                         default_pair="resnet32x4-resnet8x4"), STUDENT_EPOCHS)
student_config.teacher.arch, student_config.student.arch = TEACHER, STUDENT
student_config.method.warmup_epochs = WARMUP_EPOCHS
print(student_config.method)


def state_bytes(arch):
    num_classes = 100 if DATASET == "cifar100" else 10
    return sum(x.nbytes for x in jax.tree.leaves(nnx.state(models.create(arch, num_classes))))


# A tar: student state + momentum + teacher, the final model. Three per run (run.tar,
# run.prev.tar and the scratch copy); the archive and the fetched teacher once.
student_b, teacher_b = state_bytes(STUDENT), state_bytes(TEACHER)
tar_b = 3 * student_b + teacher_b
archive = (0 if DATASET != "cifar100" or glob.glob(os.path.join(DATA_DIR, "cifar-100-*"))
           else 169_001_437)
runs = 1 + (not ACCELERATOR)   # the teacher's run too when it is trained here
total = archive + runs * 3 * tar_b + ACCELERATOR * teacher_b
print(f"Drive: about {total / 2**20:.0f} MiB in {PERSIST} (archive {archive / 2**20:.0f} "
      f"MiB, {runs} run(s) x 3 tars of about {tar_b / 2**20:.0f} MiB), plus JAX's "
      "compilation cache")"""),
    ("md", """\
## Teacher

On an accelerator: the published CIFAR-100 teacher (mdistiller's `resnet32x4`), downloaded
and converted once into Drive's `teachers/` by `python -m kd_jax.teachers fetch` (no PyTorch
needed: kd_jax reads `.pth` files itself); or the `.pth` in `TEACHER_PTH`, converted
by `python -m kd_jax.convert`. Both convert exactly (same logits as PyTorch). Either runs in
a child process on the CPU (`JAX_PLATFORMS=cpu`): this kernel holds the accelerator, and a
child asking for it would fall back to the CPU silently, or fail. In the CPU demo a small
teacher is trained here."""),
    ("code", """\
def on_cpu(command):
    \"\"\"Runs a kd_jax command in a child process on the CPU: the accelerator is this
    kernel's.\"\"\"
    subprocess.run([sys.executable, "-m", *command], check=True,
                   env=dict(os.environ, JAX_PLATFORMS="cpu"))


teacher_run = None
TEACHER_DIR = os.path.join(TEACHERS_DIR, TEACHER)   # on Drive: fetched or converted once
if ACCELERATOR and not os.path.isfile(os.path.join(TEACHER_DIR, "teacher.json")):
    if TEACHER_PTH:
        on_cpu(["kd_jax.convert", "--arch", TEACHER, "--num-classes", "100", TEACHER_PTH,
                TEACHER_DIR])
    else:
        on_cpu(["kd_jax.teachers", "--dir", TEACHERS_DIR, "fetch", TEACHER])
if ACCELERATOR:
    student_config.teacher.checkpoint = TEACHER_DIR
else:
    teacher_dir = os.path.join(WORKDIR, "teacher")
    with mirror.Mirror(teacher_dir, os.path.join(MIRROR, "teacher"), SYNC_MINUTES * 60):
        teacher_run = trainer.train_and_evaluate(teacher_config, teacher_dir)
    student_config.teacher.checkpoint = os.path.join(teacher_dir, trainer.FINAL_MODEL_DIR)"""),
    ("md", """\
## SD-DKD student, sharded over every device

`trainer.train_and_evaluate` jits one step over a mesh of all devices (batch sharded,
parameters replicated): a v5e-1 or v6e-1 chip gets the whole global batch of 64. The progress
bar shows the loss and images/s; each epoch ends with the test accuracy. After the first
epoch, the expected wall time of the whole run is printed from the measured images/s."""),
    ("code", """\
import statistics
import threading


def forecast(workdir, epochs, num_train, stop):
    \"\"\"Prints the expected wall time once epoch 1 is evaluated: the median images/s of
    its logged intervals (the first, which includes compilation, left out). Looked for every
    5 s, and once more when the run ends (a run shorter than that prints it too).\"\"\"
    path = os.path.join(workdir, "metrics.jsonl")
    while True:
        ending = stop.wait(5)
        if os.path.exists(path):
            with open(path) as fh:
                records = [json.loads(line) for line in fh if line.strip()]
            train = [r["images_per_s"] for r in records if r["kind"] == "train"][1:]
            if train and any(r["kind"] == "eval" for r in records):
                img_s = statistics.median(train)
                hours = epochs * num_train / img_s / 3600
                print(f"measured {img_s:.0f} images/s: {epochs} epochs of {num_train} images "
                      f"take about {hours:.1f} h (plus evaluation)", flush=True)
                return
        if ending:
            return


student_dir = os.path.join(WORKDIR, "student")
num_train = LIMIT_TRAIN or 50_000
stop = threading.Event()
forecaster = threading.Thread(target=forecast, daemon=True,
                              args=(student_dir, STUDENT_EPOCHS, num_train, stop))
forecaster.start()
try:
    with mirror.Mirror(student_dir, os.path.join(MIRROR, "student"), SYNC_MINUTES * 60):
        student_run = trainer.train_and_evaluate(student_config, student_dir)
finally:
    stop.set()
    forecaster.join()   # its last look, printed in this cell"""),
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

Colab runtimes disconnect (idle time, usage limits). Reconnect (a TPU runtime again), then
*Runtime -> Run all*: the install cell reinstalls kd_jax, the Drive cell mounts the same Drive
and unpacks each run's `run.tar` (its latest checkpoint) onto the new VM's disk, the CIFAR-100
archive is read from Drive (no new download), and each `train_and_evaluate` continues from
that checkpoint with the same data order. A finished run is not trained again: its summary is
printed and the next cell goes on.

What a disconnect can lose: the steps since the last copy to Drive (at most `SYNC_MINUTES`,
plus the epoch in progress). The trained student is in `WORKDIR/student/final_model` (the
last step's weights) and `WORKDIR/student/best_model` (the best evaluation's weights), both
also in Drive's `run.tar`, each loadable as a teacher by kd_jax (`teacher.checkpoint`) with
its own top-1 and epoch in its `teacher.json`.

For more than one TPU host (a pod slice), run `python -m kd_jax.main ...
--config.multihost=True` on every host instead: see docs/accelerators.md."""),
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
