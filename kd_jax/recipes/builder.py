"""The config builder: (method, dataset, pair) -> a complete ml_collections config.

Every config file in kd_jax/configs/ is a thin `get_config(arg)` over `build_config`. The method
block holds every hyperparameter its objective uses, resolved here from the method's
reference recipe (kd_jax.methods.<name>.hparams over kd_jax.reference.table), so the config a
run prints and saves is the objective it trains; the trainer never falls back on a library
default. Pairs are named "<teacher>-<student>" with the reference's model names,
case-insensitively ("resnet32x4-ShuffleV1"; ImageNet "ResNet34-ResNet18", CUB
"vgg13-MobileNetV2").
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from kd_jax import methods, models, teachers
from kd_jax.data import catalog, own
from kd_jax.reference import table
from kd_jax.teachers import catalog as teachers_catalog


def _optional_str(value: Optional[str] = None):
    return ml_collections.FieldReference(value, field_type=str)


def base_config(dataset: str) -> ml_collections.ConfigDict:
    """Everything but the method: dataset, models, solver, run settings."""
    facts = catalog.facts(dataset)
    solver = table.solver(dataset)
    c = ml_collections.ConfigDict()
    c.dataset = ml_collections.ConfigDict(dict(
        name=dataset,
        data_dir=_optional_str(),   # None: the library's default location.
        num_train=2048,             # synthetic only: number of training images.
        num_test=512,               # synthetic only: number of test images.
        image_size=facts.image_size,
        num_classes=facts.num_classes,
        limit_train=0,              # >0: use only the first N training images.
        limit_test=0,               # >0: use only the first N test images.
        # None (auto): the uint8 train set goes on the devices and is augmented inside the
        # step when it is held in memory (cifar100, fashion_mnist, synthetic) and fits
        # kd_jax.data.on_device.DEVICE_BUDGET_BYTES; False: numpy augmentation on the host.
        on_device=ml_collections.FieldReference(None, field_type=bool),
        # imagenet2012, caltech_birds2011: tf.data's threads per process (decoding, resizing);
        # 0: this process's share of the host's cores (kd_jax.data.imagenet.auto_threads).
        input_threads=0,
    ))
    if catalog.is_own(dataset):
        _own_data_keys(c.dataset)
    # teacher.checkpoint: a .pth file, a converted directory (python -m kd_jax.convert, or
    # <workdir>/final_model of a kd_jax run), 'published' (the teacher fetched by
    # `python -m kd_jax.teachers fetch <arch>`), or 'random' (smoke tests and benchmarks only).
    c.teacher = ml_collections.ConfigDict(dict(arch="", checkpoint=_optional_str(),
                                               allow_pickle=False))
    # student.init_from: "" (random init) or a final_model / best_model / converted directory
    # (or .pth) of the same arch whose weights and BatchNorm statistics start the student;
    # 'published': the fetched published teacher of student.arch (own data: any classes, the
    # head is made anew, e.g. torchvision's imagenet_ResNet34 to fine-tune).
    c.student = ml_collections.ConfigDict(dict(arch="", init_from=""))
    c.recipe = ""                   # the config argument the config was built from.
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=solver.lr,
        momentum=solver.momentum,
        weight_decay=solver.weight_decay,   # coupled L2 on ALL student parameters.
        schedule="multistep",     # multistep | cosine
        milestones=solver.milestones,
        decay_rate=solver.decay_rate,
        # torch clip_grad_norm_ of the raw loss gradient (all trainable parameters), before
        # weight decay and momentum; 0 = off. Resolved per method (reference.table).
        clip_grad_norm=0.0,
    ))
    c.batch_size = solver.batch_size   # global, over all devices and hosts.
    # 0: by platform (CPU: batch_size; GPU/TPU: 1024 for images up to 32x32):
    # kd_jax.train.platform_defaults.
    c.eval_batch_size = 0
    c.num_epochs = solver.num_epochs
    c.total_steps = 0       # >0: stop after this many steps in total (smoke runs).
    c.seed = 0              # student init, data order and augmentation.
    c.seeds = ""            # "0,1,2": one run per seed in <workdir>/seed_<s>, then mean ± std.
    c.compute_dtype = "float32"   # float32 | bfloat16 (student and teacher compute).
    # CPU backend only: auto | xla | im2col, how convolutions run (docs/benchmarks.md, "CPU speed").
    c.cpu_conv = "auto"
    c.log_every_steps = 50
    # Train steps per call on the on-device path (a lax.scan); logging, evaluation,
    # checkpoints and stop signals happen between calls. 0: by platform (CPU 1, GPU/TPU 8;
    # kd_jax.data.on_device.AUTO_STEPS_PER_DISPATCH). docs/data.md, "Several steps per call".
    c.steps_per_dispatch = 0
    c.eval_every_epochs = 1
    c.keep_checkpoints = 3
    # Checkpoints every N epochs (0: none by epochs) and at the first logging point after M
    # minutes since the last save (0: none by time); also at the end and at every stop.
    # None: by platform (CPU: every epoch; GPU/TPU: every 10 minutes):
    # kd_jax.train.platform_defaults.
    c.checkpoint_every_epochs = ml_collections.FieldReference(None, field_type=int)
    c.checkpoint_every_minutes = ml_collections.FieldReference(None, field_type=float)
    c.tensorboard = True
    c.progress_bar = True
    c.export_model = True   # write the final student to <workdir>/final_model (teacher-loadable).
    c.multihost = False     # True: jax.distributed.initialize() before anything else.
    # A Python file registering models (kd_jax.models.register) to import first, so that
    # student.arch / teacher.arch may name them; recorded in each export's teacher.json.
    c.model_file = ""
    return c


def _own_data_keys(d: ml_collections.ConfigDict) -> None:
    """The keys of the user's own data at their defaults (kd_jax.data.own documents each:
    val_fraction, split_seed, mean, std, skip_unreadable, in_memory, memory_budget_mb,
    workers); num_classes 0 and image_size 32 come from catalog.OWN_FACTS."""
    for key, value in own.DEFAULTS.items():
        d[key] = ml_collections.FieldReference(None, field_type=bool) if value is None else value


def _published_teacher(c: ml_collections.ConfigDict, dataset: str) -> None:
    """teacher.checkpoint='published' where kd_jax.teachers fetches the pair's teacher."""
    found = teachers_catalog.TEACHERS.get(c.teacher.arch)
    if found is not None and found.dataset == dataset:
        c.teacher.checkpoint = teachers.PUBLISHED


def _pair_config(dataset: str, arg: str, teacher: str, student: str
                 ) -> ml_collections.ConfigDict:
    """base_config with the pair's models and lr, and its published teacher where fetchable."""
    family = catalog.facts(dataset).model_family
    c = base_config(dataset)
    c.recipe = arg
    c.teacher.arch = models.arch_name(teacher, family)
    c.student.arch = models.arch_name(student, family)
    c.optimizer.lr = table.pair(dataset, teacher, student).lr
    _published_teacher(c, dataset)
    return c


def reference_hparams(method: str, dataset: str, teacher: str, student: str,
                      variant: str = "") -> dict:
    """The reference hyperparameters of `method` for (teacher, student) on `dataset`."""
    spec = methods.get(method)
    if spec.variants and variant not in spec.variant_choices:
        raise ValueError(f"{method} needs one of the variants "
                         f"{', '.join(spec.variant_choices)}, got {variant!r}")
    if not spec.variants and variant:
        raise ValueError(f"{method} has no variants, got {variant!r}")
    return spec.hparams(methods.Recipe(dataset, teacher, student, variant))


def method_block(method: str, hparams: dict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": method, **hparams})


def pairs(dataset: str, method: str = "kd", variant: str = "") -> list[tuple[str, str]]:
    """The (teacher, student) pairs of `dataset` with a reference recipe for `method`."""
    found = []
    for teacher, student in table.pairs(dataset):
        try:
            reference_hparams(method, dataset, teacher, student, variant)
        except ValueError:
            continue
        found.append((teacher, student))
    return found


def parse_pair(dataset: str, arg: str, method: str = "kd", variant: str = "") -> tuple[str, str]:
    """'resnet32x4-ShuffleV1' -> ('resnet32x4', 'ShuffleV1'), matched case-insensitively."""
    found = pairs(dataset, method, variant)
    known = {f"{t}-{s}".lower(): (t, s) for t, s in found}
    if arg.lower() not in known:
        what = methods.label_of(methods.get(method).variant_key(variant))
        raise ValueError(f"unknown {dataset} pair {arg!r} for {what}; known pairs: "
                         + ", ".join(f"{t}-{s}" for t, s in found))
    return known[arg.lower()]


def split_variant(method: str, arg: str) -> tuple[str, str]:
    """'pair,kd' -> ('pair', 'kd') for methods with variants; the default variant otherwise."""
    spec = methods.get(method)
    if "," in arg:
        arg, variant = (part.strip() for part in arg.split(",", 1))
        if variant not in spec.variant_choices:
            raise ValueError(f"{arg!r},{variant!r}: {method} variants are "
                             + (", ".join(spec.variant_choices) or "none"))
        return arg, variant
    return arg, spec.variants.default if spec.variants else ""


def build_config(method: str, dataset: str, arg: Optional[str], *, default_pair: str
                 ) -> ml_collections.ConfigDict:
    """The full config of `method` on `dataset`; `arg` names the pair ("pair,base" for SDD)
    or, for method 'ce', the model trained alone."""
    arg = arg or default_pair
    if method == "ce":
        c = base_config(dataset)
        c.recipe = arg
        c.student.arch = models.arch_name(arg, catalog.facts(dataset).model_family)
        c.optimizer.lr = table.model_lr(dataset, arg)
        c.optimizer.clip_grad_norm = table.clip_grad_norm(dataset, "ce")
        c.method = method_block("ce", reference_hparams("ce", dataset, "", arg))
        return c
    pair_arg, variant = split_variant(method, arg)
    teacher, student = parse_pair(dataset, pair_arg, method, variant)
    c = _pair_config(dataset, arg, teacher, student)
    c.optimizer.clip_grad_norm = table.clip_grad_norm(dataset, method)
    c.method = method_block(method, reference_hparams(method, dataset, teacher, student, variant))
    return c


def parse_students(entries: str) -> list[tuple[str, str, int]]:
    """'kd,sd_dkd,kd@1' -> [(name, method key, init seed offset)]: 'key@k' is a second
    student of the same method whose initialisation seed is config.seed + k."""
    keys = methods.method_keys()
    out, seen = [], set()
    for entry in (e.strip() for e in entries.split(",")):
        if not entry:
            continue
        key, _, offset = entry.partition("@")
        if key not in keys:
            raise ValueError(f"unknown student {entry!r}; students are method keys "
                             f"({', '.join(keys)}), optionally with @<init seed offset>")
        if offset and not offset.isdigit():
            raise ValueError(f"student {entry!r}: the part after '@' must be an integer >= 0")
        if entry in seen:
            raise ValueError(f"student {entry!r} is listed twice")
        seen.add(entry)
        out.append((entry, key, int(offset or 0)))
    if not out:
        raise ValueError("no students given")
    return out


def student_entry(method_key: str, dataset: str, teacher: str, student: str,
                  init_seed_offset: int = 0) -> ml_collections.ConfigDict:
    """A lockstep student: {method: <the reference block of method_key>, init_seed_offset,
    clip_grad_norm: the gradient clip of the method's reference trainer}."""
    method, variant = methods.method_keys()[method_key]
    hp = reference_hparams(method, dataset, teacher if methods.get(method).needs_teacher else "",
                           student, variant)
    return ml_collections.ConfigDict({"method": method_block(method, hp),
                                      "init_seed_offset": init_seed_offset,
                                      "clip_grad_norm": table.clip_grad_norm(dataset, method)})


def build_lockstep_config(dataset: str, arg: Optional[str], *, default: str
                          ) -> ml_collections.ConfigDict:
    """Several students of one pair trained in lockstep: arg = "<pair>,<student>,<student>..."
    with students named by method key (e.g. "resnet32x4-resnet8x4,kd,dkd,sd_dkd,kd@1").

    All students see the same batches and share one teacher forward per step; each has the
    reference hyperparameters and gradient clip (students.<name>.clip_grad_norm, which
    overrides optimizer.clip_grad_norm) of its method for the pair, its own initialisation seed
    (config.seed + init_seed_offset) and its own outputs in <workdir>/<name>.
    """
    arg = arg or default
    pair_arg, _, entries = arg.partition(",")
    teacher, student = parse_pair(dataset, pair_arg, "kd")
    c = _pair_config(dataset, arg, teacher, student)
    c.students = ml_collections.ConfigDict({
        name: student_entry(key, dataset, teacher, student, offset)
        for name, key, offset in parse_students(entries)})
    return c
