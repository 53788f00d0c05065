"""What every config key means: the one home of the key descriptions.

docs/training.md's key tables are generated from these dictionaries and from the shipped
configs (`python docs/generate.py`); tests/test_docs.py fails when a key of a shipped config
has no description here, when a description names a key no config has, or when the page is
stale. Defaults are not written here: they are read from the configs themselves.

- RUN_KEYS: the keys of `builder.base_config` (dotted), shared by every trainer config.
- METHOD_KEYS: `method.<key>`, the hyperparameters a method's recipe resolves (also
  `students.<name>.method.<key>` in lockstep configs); METHOD_KEY_NOTES adds what a key
  means for one method where that differs.
- STUDENT_KEYS: `students.<name>.<key>` of a lockstep config, besides its method block.
- PIPELINE_KEYS: the quickstart pipeline's own keys (`quickstart.py`).
"""

from __future__ import annotations

RUN_KEYS: dict[str, str] = {
    "dataset.name": "cifar10 | cifar100 | fashion_mnist | imagenet2012 | caltech_birds2011 | "
                    "synthetic (docs/data.md); your own: image_folder | npz | tfds:<name> "
                    "(docs/own_data.md)",
    "dataset.data_dir": "where the dataset's files are; None: the default location "
                        "(docs/data.md)",
    "dataset.num_train": "synthetic only: number of training images",
    "dataset.num_test": "synthetic only: number of test images",
    "dataset.image_size": "input height and width (synthetic only; the others are fixed by "
                          "the dataset)",
    "dataset.num_classes": "number of classes (synthetic only; the others are fixed by the "
                           "dataset)",
    "dataset.limit_train": "> 0: train on the first N training images only; 0: all",
    "dataset.limit_test": "> 0: evaluate on the first N test images only; 0: all",
    "dataset.on_device": "None: on a GPU or TPU, the uint8 train and test sets go on the "
                         "devices and are augmented and normalised inside the step when held "
                         "in memory and they fit (CIFAR, Fashion-MNIST, synthetic, small own "
                         "data); on a CPU, the host path (faster there); False: numpy "
                         "augmentation on the host; True: force the device path",
    "dataset.input_threads": "imagenet2012, caltech_birds2011: tf.data's threads per process; "
                             "0: this process's share of the host's cores",
    "dataset.val_fraction": "own data: the share of each class held out as the test split of a "
                            "single image folder",
    "dataset.split_seed": "own data: the seed of that split and of limit_train/limit_test's "
                          "subsets",
    "dataset.mean": "own data: per-channel RGB mean on [0, 1]; (): computed from the training "
                    "images and cached",
    "dataset.std": "own data: per-channel RGB std on [0, 1]; (): computed with the mean",
    "dataset.skip_unreadable": "own data: True leaves unreadable images out, with a note; "
                               "False: one error naming the file",
    "dataset.in_memory": "own data: None: held in memory when the decoded set fits "
                         "memory_budget_mb; True: in memory; False: streamed from the files",
    "dataset.memory_budget_mb": "own data: the decoded uint8 size up to which a set is held in "
                                "memory",
    "dataset.workers": "own data: decoding processes of a streamed set; 0: min(8, CPUs)",
    "teacher.arch": "the teacher's model name (docs/models.md); empty for a model trained "
                    "alone",
    "teacher.checkpoint": "published (the pair's teacher, installed by `python -m "
                          "kd_jax.teachers fetch all`), a .pth, a directory written by `python -m "
                          "kd_jax.convert`, or a run's final_model / best_model; random: "
                          "smoke tests and benchmarks only",
    "teacher.allow_pickle": "True: load a .pth that holds other Python objects as a full "
                            "pickle (only for files you trust)",
    "student.arch": "the student's model name (docs/models.md)",
    "student.init_from": "empty: random initialisation; else a final_model / best_model / "
                         "converted directory or .pth of the same model whose weights and "
                         "BatchNorm statistics start the student",
    "recipe": "the config argument the config was built from (the pair); informational",
    "optimizer.lr": "SGD learning rate (the pair's, docs/recipes.md)",
    "optimizer.momentum": "SGD momentum",
    "optimizer.weight_decay": "coupled L2 weight decay on all student parameters",
    "optimizer.schedule": "multistep (x decay_rate at each milestone epoch) | cosine",
    "optimizer.milestones": "epochs after which the multistep schedule multiplies the lr by "
                            "decay_rate",
    "optimizer.decay_rate": "the multistep schedule's factor, in (0, 1]",
    "optimizer.clip_grad_norm": "clip the global L2 norm of the raw gradient to this before "
                                "weight decay and momentum, as torch's clip_grad_norm_; 0: "
                                "off (docs/recipes.md, gradient clipping)",
    "batch_size": "global training batch, over all devices and hosts",
    "eval_batch_size": "evaluation batch; 0: by platform (CPU: batch_size; GPU, TPU: 1024 for "
                       "images up to 32x32) (docs/accelerators.md)",
    "num_epochs": "training epochs",
    "total_steps": "> 0: stop after this many steps in total (smoke runs); 0: num_epochs",
    "seed": "sets the student's initialisation, the data order and the augmentation",
    "seeds": "'0,1,2': one run per seed in <workdir>/seed_<s>, then mean ± std; empty: one "
             "run with `seed`",
    "compute_dtype": "float32 | bfloat16: the compute dtype of student and teacher "
                     "(parameters, statistics and losses stay float32; "
                     "docs/accelerators.md)",
    "cpu_conv": "auto | xla | im2col: how convolutions run on the CPU backend; GPUs and TPUs "
                "ignore it (docs/benchmarks.md, CPU speed)",
    "log_every_steps": "steps between progress lines and metrics.jsonl train records",
    "steps_per_dispatch": "train steps per call on the device path (k); 0: by platform (CPU "
                          "1, GPU and TPU 8) (docs/data.md)",
    "eval_every_epochs": "evaluate every N epochs (and at the end)",
    "keep_checkpoints": "how many of the latest checkpoints to keep",
    "checkpoint_every_epochs": "save a checkpoint every N epochs (also at the end and on "
                               "SIGTERM or Ctrl-C); None: by platform (CPU 1, GPU and TPU 0)",
    "checkpoint_every_minutes": "also save one at the first sync point N minutes after the "
                                "last; 0: never by time; None: by platform (CPU 0, GPU and "
                                "TPU 10) (docs/accelerators.md)",
    "tensorboard": "write TensorBoard events to <workdir>/tb",
    "progress_bar": "a tqdm bar on a terminal (plain lines in a log file)",
    "export_model": "write the final student to <workdir>/final_model (loadable as a "
                    "teacher)",
    "model_file": "a Python file registering models (kd_jax.models.register), imported first "
                  "so that student.arch / teacher.arch may name them (docs/own_data.md)",
    "recipe_from": "custom_teacher.py / custom_distill.py: the reference recipe the "
                   "hyperparameters come from; informational",
    "multihost": "True: jax.distributed.initialize() before anything else "
                 "(docs/accelerators.md)",
    "method.name": "the method: ce | kd | dkd | nkd | sdd | clkd | msdcrd, or one a config "
                   "file registers (docs/extending.md)",
    "students": "lockstep configs: one group per student, named by method key "
                "(ce, kd, dkd, nkd, sd_kd, sd_dkd, sd_nkd, clkd, msdcrd; kd@1: a second KD "
                "student initialised with seed + 1)",
}

METHOD_KEYS: dict[str, str] = {
    "temperature": "softmax temperature T of the distillation term",
    "ce_weight": "weight of the cross-entropy on the labels",
    "kd_weight": "weight of the distillation term",
    "warmup_epochs": "the distillation term is scaled by min(epoch / warmup_epochs, 1), "
                     "epochs counted from 1; 0: no warmup",
    "alpha": "DKD: weight of TCKD (target-class KD)",
    "beta": "DKD: weight of NCKD (non-target-class KD); the pair's value",
    "stable": "DKD: True computes TCKD's logs with logsumexp (finite where the reference's "
              "TCKD overflows); False: the reference computation",
    "gamma": "NKD: weight of the normalized non-target term",
    "base": "SDD's base loss: kd | dkd | nkd (choose it in the config argument, "
            "`cifar_sdd.py:PAIR,kd`; overriding it is refused)",
    "scales": "SDD's scale set M, e.g. '[1,2,4]': the grids the pre-pool map is pooled to",
    "complementary_weight": "weight of a region (SDD) or local sample (MSDCRD) whose "
                            "teacher prediction disagrees in correctness with the global "
                            "one; 1: no categorisation",
    "zero_nonfinite": "a NaN or inf SD loss counts as 0 (SDD's code does this)",
    "instance_weight": "CLKD: w in w (L_ins + beta L_cla), the instance and class terms",
    "class_weight_beta": "CLKD: beta in w (L_ins + beta L_cla)",
    "correlation_weight": "CLKD: weight of the class-correlation term L_cc",
    "correlation": "CLKD: batch ((B, B) matrices) | class ((K, K) covariance), what L_cc "
                   "compares",
    "reduction": "CLKD: mean | sum_per_row, how the instance and class errors are reduced",
    "windows": "MSDCRD: sliding-window sizes (stride 1) on the common pre-pool grid",
    "tau": "MSDCRD: InfoNCE temperature",
    "contrastive_weight": "MSDCRD: weight of the sample- and feature-wise contrastive terms",
    "embedding": "MSDCRD: logits (each local sample through its network's own classifier; "
                 "parameter-free) | projection (trainable linear heads to projection_dim)",
    "projection_dim": "MSDCRD: the embedding size d with embedding=projection",
    "chunk_size": "MSDCRD: > 0 streams the S x S similarity in chunk x chunk blocks (same "
                  "loss, less memory); 0: whole",
}

METHOD_KEY_NOTES: dict[tuple[str, str], str] = {
    ("sdd", "kd_weight"): "weight of the scale-decoupled loss",
    ("msdcrd", "kd_weight"): "optional KD on the logits (0: off)",
    ("msdcrd", "temperature"): "T of the optional KD term (used only when kd_weight > 0)",
}

STUDENT_KEYS: dict[str, str] = {
    "clip_grad_norm": "this student's gradient clip (its method's reference trainer); "
                      "overrides optimizer.clip_grad_norm",
    "init_seed_offset": "the student is initialised with seed + this",
}

PIPELINE_KEYS: dict[str, str] = {
    "pipeline": "the pipeline this config runs (quickstart)",
    "teacher_dir": "the shipped teacher (kd_jax/assets/quickstart_teacher); empty or a "
                   "sha256 mismatch: retrain it into <workdir>/teacher",
    "teacher_arch": "the teacher's model",
    "teacher_epochs": "epochs of the teacher, if it is retrained",
    "teacher_limit_train": "training images of a retrained teacher; 0: all",
    "student_arch": "the students' model",
    "students": "the students, by method key; ce (the student alone) is the verdict's "
                "baseline",
    "seeds": "the seeds; the verdict compares mean ± sample std over them",
    "num_epochs": "the students' epochs",
    "batch_size": "training batch",
    "eval_batch_size": "evaluation batch",
    "eval_every_epochs": "evaluate every N epochs",
    "lr": "the students' learning rate",
    "schedule": "the students' lr schedule",
    "warmup_epochs": "replaces the recipes' warmups; 1 means no warmup (epochs count from 1)",
    "cpu_conv": "as the trainer's cpu_conv",
    "progress_bar": "as the trainer's progress_bar",
    "tensorboard": "as the trainer's tensorboard",
    "log_every_steps": "as the trainer's log_every_steps",
}


def describe_method_key(method: str, key: str) -> str:
    """The meaning of method.<key> for `method` (KeyError if undocumented)."""
    return METHOD_KEY_NOTES.get((method, key)) or METHOD_KEYS[key]
