"""Every config builds the reference recipe, and the trainer trains exactly that objective.

The expected values below are written out from the reference code (mdistiller's and SDD's
configs, cfg.py defaults, distillers and launch scripts; the sources are named per table),
NOT read back from kd_jax.recipes. Two checks per (config file, pair, method):

1. the resolved config equals the reference: every method key (none missing, none extra),
   the solver, the models;
2. the loss the trainer builds from that config (config_validation.validate -> the plan the
   trainer uses) equals the library objective called with the reference values written
   here, on random logits and feature maps at epochs 1, 10 and 30, so that an override
   anywhere on the way (a warmup, a weight, a scale set) fails.
"""

import glob
import os

import jax
import numpy as np
import pytest

from kd_jax import losses, methods
from kd_jax.losses import objectives
from kd_jax.train import config_validation
from kd_jax.train.config_validation import ConfigError

import repo_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- the reference, written out --------------------------------------------------------------

# (lr, DKD beta) per CIFAR-100 pair: mdistiller configs/cifar100/dkd/*.yaml and SDD's
# configs/cifar100/sdd_dkd/*.yaml (SOLVER.LR, DKD.BETA).
CIFAR = {
    "resnet56-resnet20": (0.05, 2.0), "resnet110-resnet32": (0.05, 2.0),
    "resnet32x4-resnet8x4": (0.05, 8.0), "wrn_40_2-wrn_16_2": (0.05, 6.0),
    "wrn_40_2-wrn_40_1": (0.05, 6.0), "vgg13-vgg8": (0.05, 6.0),
    "resnet32x4-ShuffleV1": (0.01, 8.0), "resnet32x4-ShuffleV2": (0.01, 8.0),
    "wrn_40_2-ShuffleV1": (0.01, 8.0), "vgg13-MobileNetV2": (0.01, 6.0),
    "ResNet50-MobileNetV2": (0.01, 8.0), "ResNet50-vgg8": (0.05, 8.0),
    "wrn_40_2-vgg8": (0.05, 8.0), "wrn_40_2-MobileNetV2": (0.01, 6.0),
    "resnet32x4-MobileNetV2": (0.01, 8.0), "ResNet50-ShuffleV1": (0.01, 8.0),
}
# SDD's --M per CIFAR-100 pair and base (kd, dkd, nkd): teacher_resnet32x4.sh,
# teacher_unpair.sh, teacher_vgg.sh, teacher_wrn.sh.
A, B = "[1,2]", "[1,2,4]"
CIFAR_SDD_M = {
    "resnet32x4-resnet8x4": (A, A, A), "resnet32x4-ShuffleV1": (B, B, B),
    "resnet32x4-ShuffleV2": (B, B, B), "resnet32x4-MobileNetV2": (B, B, B),
    "wrn_40_2-ShuffleV1": (B, B, B), "wrn_40_2-vgg8": (B, B, A),
    "wrn_40_2-MobileNetV2": (B, B, B), "ResNet50-MobileNetV2": (B, B, B),
    "ResNet50-ShuffleV1": (B, B, B), "ResNet50-vgg8": (B, B, A), "vgg13-vgg8": (A, A, A),
    "vgg13-MobileNetV2": (B, B, B),
}
# CUB-200: SDD configs/cub200/*/*.yaml (lr, beta); train_cub_*.sh: M=[1,2,4] everywhere.
CUB = {"resnet32x4-MobileNetV2": (0.01, 8.0), "resnet32x4-ShuffleV1": (0.01, 8.0),
       "vgg13-MobileNetV2": (0.01, 6.0), "vgg13-vgg8": (0.05, 6.0),
       "ResNet50-ShuffleV1": (0.01, 8.0)}
# ImageNet: mdistiller configs/imagenet/*/dkd.yaml (beta); SDD run.sh (--M of SD-DKD
# R34-R18 [1,2], R50-MV1 SD-DKD/SD-NKD [1,2,4]); train.py's default [1,2,4] otherwise.
IMAGENET = {"ResNet34-ResNet18": (0.2, 0.5), "ResNet50-MobileNetV1": (0.2, 2.0)}
IMAGENET_SDD_M = {"ResNet34-ResNet18": (B, A, B), "ResNet50-MobileNetV1": (B, B, B)}

SOLVER = {  # lr set per pair above; (weight decay, milestones, epochs, batch)
    "cifar100": (5e-4, (150, 180, 210), 240, 64),
    "caltech_birds2011": (5e-4, (150, 180, 210), 240, 64),
    "imagenet2012": (1e-4, (30, 60, 90), 100, 512),
}
PREFIX = {"cifar100": "", "caltech_birds2011": "cub_", "imagenet2012": "imagenet_"}

# The gradient clip (torch clip_grad_norm_ max_norm; 0 = none) of the trainer that produced
# each published number: SDD's mdistiller/engine/trainer.py BaseTrainer.train_iter clips at
# 40 (SDD's train_origin.py: CIFAR-100 SDD and NKD runs, every CUB run; SDD's train.py:
# ImageNet SDD and NKD runs); mdistiller's trainer does not (CIFAR-100 / ImageNet KD, DKD).
# CLKD: no reference code, 0 chosen (starred in the recipe table).
SDD_CLIP = 40.0


def expected_clip(key, dataset):
    if dataset == "caltech_birds2011" or key.startswith("sd_") or key == "nkd":
        return SDD_CLIP
    return 0.0


def expected_method(key, dataset, beta, scales):
    """The reference hyperparameters of method key `key` (kd, dkd, ..., sd_nkd)."""
    imagenet = dataset == "imagenet2012"
    T = 1.0 if imagenet else 4.0
    warm = 1 if imagenet else 20
    m = {
        # mdistiller cfg.py CFG.KD; configs/imagenet/r34_r18/kd.yaml.
        "kd": dict(name="kd", temperature=T, ce_weight=0.5 if imagenet else 0.1,
                   kd_weight=0.5 if imagenet else 0.9),
        # mdistiller cfg.py CFG.DKD (CE 1, alpha 1, warmup 20) and per-config beta / T.
        "dkd": dict(name="dkd", alpha=1.0, beta=beta, temperature=T, ce_weight=1.0,
                    warmup_epochs=warm, stable=False),
        # SDD_nkd.py with M=[1] (gamma = DKD.BETA); ImageNet: nkd.py NKDLoss (T 1, gamma 1.5).
        "nkd": dict(name="nkd", gamma=1.5 if imagenet else beta, temperature=T, ce_weight=1.0,
                    warmup_epochs=warm),
        # CLKD: no official code; the paper's weights.
        "clkd": dict(name="clkd", ce_weight=0.1, instance_weight=0.5, class_weight_beta=2.0,
                     correlation_weight=0.4, correlation="batch", reduction="mean"),
        # SDD_KD (KD.py): CFG.KD defaults on every dataset, warmup commented out.
        "sd_kd": dict(name="sdd", base="kd", temperature=4.0, ce_weight=0.1, kd_weight=0.9,
                      warmup_epochs=0),
        # SDD_DKD.py: DKD's CE / alpha / beta / T, warmup = --warmup (20; train.py: 1).
        "sd_dkd": dict(name="sdd", base="dkd", alpha=1.0, beta=beta, temperature=T,
                       ce_weight=1.0, kd_weight=1.0, warmup_epochs=warm, stable=False),
        # SDD_nkd.py: gamma = DKD.BETA, T = DKD.T, CE 1, warmup DKD.WARMUP.
        "sd_nkd": dict(name="sdd", base="nkd", gamma=beta, temperature=T, ce_weight=1.0,
                       kd_weight=1.0, warmup_epochs=warm),
    }[key]
    if key.startswith("sd_"):
        m.update(scales=scales[("sd_kd", "sd_dkd", "sd_nkd").index(key)],
                 complementary_weight=2.0, zero_nonfinite=True)
    return m


def cases():
    """(config file, argument, method key, dataset, pair, lr, beta, scales) of every run."""
    out = []
    for pair, (lr, beta) in CIFAR.items():
        for key in ("kd", "dkd", "nkd", "clkd"):
            out.append((f"cifar_{key}", pair, key, "cifar100", pair, lr, beta, None))
    for pair, scales in CIFAR_SDD_M.items():
        lr, beta = CIFAR[pair]
        for base in ("kd", "dkd", "nkd"):
            out.append(("cifar_sdd", f"{pair},{base}", f"sd_{base}", "cifar100", pair, lr, beta,
                        scales))
        out.append(("cifar_sdd", pair, "sd_dkd", "cifar100", pair, lr, beta, scales))
    for pair, (lr, beta) in CUB.items():
        for key in ("kd", "dkd", "nkd"):
            out.append((f"cub_{key}", pair, key, "caltech_birds2011", pair, lr, beta, None))
        for base in ("kd", "dkd", "nkd"):
            out.append(("cub_sdd", f"{pair},{base}", f"sd_{base}", "caltech_birds2011", pair,
                        lr, beta, (B, B, B)))
    for pair, (lr, beta) in IMAGENET.items():
        for key in ("kd", "dkd", "nkd"):
            out.append((f"imagenet_{key}", pair, key, "imagenet2012", pair, lr, beta, None))
        for base in ("kd", "dkd", "nkd"):
            out.append(("imagenet_sdd", f"{pair},{base}", f"sd_{base}", "imagenet2012", pair,
                        lr, beta, IMAGENET_SDD_M[pair]))
    return out


CASES = cases()


def load_config(name, arg=None):
    return repo_files.config_module(name).get_config(arg)


# --- 1. resolved values ----------------------------------------------------------------------

@pytest.mark.parametrize("name,arg,key,dataset,pair,lr,beta,scales", CASES,
                         ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_config_resolves_the_reference_recipe(name, arg, key, dataset, pair, lr, beta, scales):
    c = load_config(name, arg)
    assert c.method.to_dict() == expected_method(key, dataset, beta, scales)
    teacher, student = pair.split("-")
    assert (c.teacher.arch, c.student.arch) == (PREFIX[dataset] + teacher, PREFIX[dataset] + student)
    wd, milestones, epochs, batch = SOLVER[dataset]
    o = c.optimizer
    assert (o.lr, o.weight_decay, tuple(o.milestones), o.momentum, o.decay_rate) == (
        lr, wd, milestones, 0.9, 0.1)
    assert (c.num_epochs, c.batch_size, o.schedule) == (epochs, batch, "multistep")
    assert o.clip_grad_norm == expected_clip(key, dataset)
    assert c.dataset.name == dataset


def test_every_config_file_and_pair_is_covered():
    """The configs offer exactly the reference pairs: none untested, none invented."""
    from kd_jax import recipes
    offered = set()
    for name in ("kd", "dkd", "nkd", "clkd"):
        offered |= {(f"cifar_{name}", f"{t}-{s}") for t, s in recipes.pairs("cifar100", name)}
    for name in ("kd", "dkd", "nkd"):
        offered |= {(f"cub_{name}", f"{t}-{s}") for t, s in recipes.pairs("caltech_birds2011", name)}
    for name in ("kd", "dkd", "nkd"):
        offered |= {(f"imagenet_{name}", f"{t}-{s}") for t, s in recipes.pairs("imagenet2012", name)}
    for dataset, file in (("cifar100", "cifar_sdd"), ("caltech_birds2011", "cub_sdd"),
                          ("imagenet2012", "imagenet_sdd")):
        for base in ("kd", "dkd", "nkd"):
            offered |= {(file, f"{t}-{s},{base}") for t, s in recipes.pairs(dataset, "sdd", base)}
    tested = {(c[0], c[1]) for c in CASES if not (c[0].endswith("_sdd") and "," not in c[1])}
    assert offered == tested
    files = {os.path.basename(p)[:-3]
             for p in glob.glob(os.path.join(ROOT, "kd_jax", "configs", "[!_]*.py"))}
    assert {c[0] for c in CASES} | {"cifar_teacher", "quickstart"} <= files


@pytest.mark.parametrize("model,lr", [("resnet32x4", 0.05), ("wrn_40_2", 0.05), ("vgg13", 0.05),
                                      ("ResNet50", 0.05), ("resnet8x4", 0.05),
                                      ("ShuffleV1", 0.01), ("ShuffleV2", 0.01),
                                      ("MobileNetV2", 0.01)])
def test_teacher_config(model, lr):
    """cifar_teacher.py: CE alone with the student recipe's solver."""
    c = load_config("cifar_teacher", model)
    assert c.method.to_dict() == {"name": "ce"}
    assert (c.student.arch, c.teacher.arch, c.optimizer.lr, c.num_epochs) == (model, "", lr, 240)


def test_overriding_the_sdd_base_is_refused():
    """The base's other values are resolved at build time: a later base override would train
    SD-KD with SD-DKD's warmup (or the reverse), so validation refuses it."""
    c = load_config("cifar_sdd", "resnet32x4-ShuffleV1")
    c.teacher.checkpoint = "random"
    c.method.base = "kd"
    with pytest.raises(ConfigError, match=r"unexpected method.alpha, method.beta, method.stable.*"
                                          r"cifar_sdd.py:<pair>,<base>"):
        config_validation.validate(c, num_devices=1)
    c = load_config("cifar_sdd", "resnet32x4-ShuffleV1,kd")
    c.teacher.checkpoint = "random"
    c.method.base = "dkd"
    with pytest.raises(ConfigError, match="missing method.alpha, method.beta, method.stable"):
        config_validation.validate(c, num_devices=1)


def test_no_none_placeholders_in_any_method_block():
    for name, arg, *_ in CASES:
        block = load_config(name, arg).method.to_dict()
        assert all(v is not None for v in block.values()), (name, arg, block)


# --- 2. the objective the trainer builds -----------------------------------------------------

BATCH, K, HW, C = 6, 10, 8, 5


def _outputs(seed):
    r = np.random.default_rng(seed)
    def out(scale):
        pre = np.abs(r.normal(size=(BATCH, HW, HW, C))).astype(np.float32)
        kernel = (scale * r.normal(size=(C, K))).astype(np.float32)
        bias = r.normal(size=(K,)).astype(np.float32)
        logits = pre.mean(axis=(1, 2)) @ kernel + bias
        return methods.ModelOutput(logits, {"pre_pool": pre}, (kernel, bias))
    labels = r.integers(0, K, BATCH).astype(np.int32)
    return out(2.0), out(3.0), labels


def library_objective(key, ref, student, teacher, labels, epoch):
    """The library objective called with the reference values (no trainer code)."""
    s, t = student.logits, teacher.logits
    if key == "kd":
        return objectives.kd_objective(s, t, labels, temperature=ref["temperature"],
                                       ce_weight=ref["ce_weight"], kd_weight=ref["kd_weight"])
    if key == "dkd":
        return objectives.dkd_objective(s, t, labels, epoch, alpha=ref["alpha"], beta=ref["beta"],
                                        temperature=ref["temperature"], ce_weight=ref["ce_weight"],
                                        warmup_epochs=ref["warmup_epochs"], stable=False)
    if key == "nkd":
        return objectives.nkd_objective(s, t, labels, epoch, gamma=ref["gamma"],
                                        temperature=ref["temperature"], ce_weight=ref["ce_weight"],
                                        warmup_epochs=ref["warmup_epochs"])
    if key == "clkd":
        return objectives.clkd_objective(s, t, labels, ce_weight=0.1, instance_weight=0.5,
                                         class_weight_beta=2.0, correlation_weight=0.4,
                                         correlation="batch", reduction="mean")
    base = key[3:]
    s_local = losses.local_logits(student.features["pre_pool"], *student.head, ref["scales"])
    t_local = losses.local_logits(teacher.features["pre_pool"], *teacher.head, ref["scales"])
    extra = {"kd": {}, "dkd": dict(alpha=ref.get("alpha"), beta=ref.get("beta"), stable=False),
             "nkd": dict(gamma=ref.get("gamma"))}[base]
    return objectives.sd_objective(s, s_local, t_local, labels, epoch, base=base,
                                   temperature=ref["temperature"], ce_weight=ref["ce_weight"],
                                   kd_weight=ref["kd_weight"], warmup_epochs=ref["warmup_epochs"],
                                   complementary_weight=2.0, zero_nonfinite=True, **extra)


@pytest.mark.parametrize("name,arg,key,dataset,pair,lr,beta,scales", CASES,
                         ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_trainer_objective_equals_the_reference_objective(name, arg, key, dataset, pair, lr,
                                                          beta, scales):
    c = load_config(name, arg)
    c.teacher.checkpoint = "random"
    (plan,) = config_validation.validate(c, num_devices=1, check_files=False).students
    ref = expected_method(key, dataset, beta, scales)
    student, teacher, labels = _outputs(len(arg))
    compute_loss = plan.spec.build(plan.hparams)
    for epoch in (1, 10, 30):
        got, got_terms = compute_loss(student, teacher, labels, np.int32(epoch), None)
        want, want_terms = library_objective(key, ref, student, teacher, labels, np.int32(epoch))
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6, err_msg=f"epoch {epoch}")
        assert jax.tree.map(float, got_terms).keys() == want_terms.keys()


# --- 3. the CUB baselines: SDD's distillers with --M [1] -------------------------------------

def _np_adaptive_pool(x, out):
    """torch AdaptiveAvgPool2d(out) on (B, H, W, C), numpy: window i = [floor(iH/P),
    ceil((i+1)H/P))."""
    b, h, w, c = x.shape
    res = np.zeros((b, out, out, c))
    for i in range(out):
        r0, r1 = (i * h) // out, -(-(i + 1) * h // out)
        for j in range(out):
            c0, c1 = (j * w) // out, -(-(j + 1) * w // out)
            res[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return res


def _np_spp_m1(x):
    """SDD's mdistiller/models/cifar/utils.py SPP(M='[1]'): the 1x1 pool OF THE 4x4 pool."""
    return _np_adaptive_pool(_np_adaptive_pool(x, 4), 1)[:, 0, 0]


def _np_kd_objective(s, t, y, T=4.0, ce_w=0.1, kd_w=0.9):
    """SDD KD.py kd_loss with CFG.KD (CE 0.1, KD 0.9, T 4), float64."""
    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ce = -log_softmax(s)[np.arange(len(y)), y].mean()
    lt, ls = log_softmax(t / T), log_softmax(s / T)
    kl = (np.exp(lt) * (lt - ls)).sum(axis=1).mean() * T * T
    return ce_w * ce + kd_w * kl


def test_spp_m1_region_on_a_7x7_map_is_not_the_global_average():
    """The numpy SPP above gives the weighted mean the issue describes on 7x7 maps (row
    weights 1/8, 5/24, 1/12, 1/6, 1/12, 5/24, 1/8): so a loss on SPP's region 0 and one on
    the global logits differ on CUB's MobileNetV2 (7x7 pre-pool map)."""
    one_row = np.zeros((1, 7, 7, 1))
    weights = []
    for r in range(7):
        one_row[:] = 0.0
        one_row[0, r, :, 0] = 1.0
        weights.append(_np_spp_m1(one_row)[0, 0])
    np.testing.assert_allclose(weights, [1 / 8, 5 / 24, 1 / 12, 1 / 6, 1 / 12, 5 / 24, 1 / 8])


@pytest.mark.parametrize("name", ["cub_kd", "cub_dkd", "cub_nkd"])
def test_cub_baselines_are_global_logit_losses(name):
    """SDD's CUB KD / DKD / NKD rows come from train_cub_*.sh with `--M [1]`, where SDD's
    distillers branch (`if self.M == '[1]'`, KD.py / SDD_DKD.py / SDD_nkd.py) to the plain
    base loss on the models' own global logits (classifier(avgpool(map))). On a 7x7 map
    the trainer's loss equals that (numpy for KD, tests/torch_losses.py for DKD / NKD), not
    the loss on SPP(M='[1]')'s region 0, and the run clips at 40 (SDD's trainer)."""
    import torch
    import torch_losses as ref

    c = load_config(name, "resnet32x4-MobileNetV2")
    assert c.optimizer.clip_grad_norm == 40.0
    assert c.method.name == name[4:]
    c.teacher.checkpoint = "random"
    (plan,) = config_validation.validate(c, num_devices=1, check_files=False).students
    r = np.random.default_rng(7)
    labels = r.integers(0, K, BATCH).astype(np.int32)

    def out(scale):
        pre = np.abs(r.normal(size=(BATCH, 7, 7, C))) * np.linspace(0.2, 3.0, 7)[:, None, None]
        pre = pre.astype(np.float32)
        kernel = (scale * r.normal(size=(C, K))).astype(np.float32)
        bias = r.normal(size=(K,)).astype(np.float32)
        global_logits = pre.astype(np.float64).mean(axis=(1, 2)) @ kernel + bias
        spp_logits = _np_spp_m1(pre.astype(np.float64)) @ kernel + bias
        model_out = methods.ModelOutput(global_logits.astype(np.float32), {"pre_pool": pre},
                                        (kernel, bias))
        return model_out, global_logits, spp_logits

    (student, s_global, s_spp), (teacher, t_global, t_spp) = out(2.0), out(3.0)
    epoch = 30   # past the warmup of DKD / NKD (20)
    got = float(plan.spec.build(plan.hparams)(student, teacher, labels, np.int32(epoch), None)[0])

    def reference(s, t):
        if name == "cub_kd":
            return _np_kd_objective(s, t, labels)
        # tests/torch_losses.py objectives take model outputs (logits, ...) as tuples.
        st, tt, yt = (torch.tensor(s),), (torch.tensor(t),), torch.tensor(labels).long()
        if name == "cub_dkd":   # SDD_DKD dkd_loss_origin: alpha 1, beta 8 (pair), T 4, CE 1
            return float(ref.dkd_objective(st, tt, yt, epoch, alpha=1.0, beta=8.0, T=4.0,
                                           ce_w=1.0, warmup_epochs=20))
        return float(ref.nkd_objective(st, tt, yt, epoch, gamma=8.0, T=4.0, ce_w=1.0,
                                       warmup_epochs=20))   # SDD_nkd nkd_loss_origin

    want = reference(s_global, t_global)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # The same loss on SPP's region 0 (what `method=sdd, scales=[1]` would train) is another
    # objective on 7x7 maps: the check above can tell them apart.
    assert abs(reference(s_spp, t_spp) - want) > 1e-3, "the two objectives must differ here"


def test_recipe_tables_star_what_no_launch_line_settles():
    """resnet32x4-resnet8x4 SD-DKD's [1,2] (no SDD_DKD launch line: teacher_resnet32x4.sh has
    SD-KD and SD-NKD lines only, train_origin.py's --M default None fails SDD's SPP) and the
    ImageNet SD-DKD batch (r34_r18/sdd_dkd.yaml says BATCH_SIZE 4) are starred with the
    reason; CLKD's and MSDCRD's clip (no reference code) too."""
    from kd_jax.recipes import __main__ as recipes_main
    pairs = recipes_main.pair_table().splitlines()
    (row,) = [r for r in pairs if "| CIFAR-100 | resnet32x4 -> resnet8x4 |" in r]
    assert "[1,2] / [1,2]* / [1,2]" in row and "teacher_resnet32x4.sh" in row
    assert sum("*" in r for r in pairs[2:]) == 1
    methods_rows = recipes_main.method_table().splitlines()
    (row,) = [r for r in methods_rows if r.startswith("| ImageNet | SD-DKD* |")]
    assert "BATCH_SIZE 4" in row and "512 is assumed" in row
    for label in ("CLKD*", "MSDCRD*"):
        (row,) = [r for r in methods_rows if f"| {label} |" in r]
        assert "| 0* |" in row and "no reference code" in row
    (row,) = [r for r in methods_rows if r.startswith("| CUB-200 | NKD |")]
    assert "| 40 |" in row
