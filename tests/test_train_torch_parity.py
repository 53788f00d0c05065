"""Trainer runs of every method family equal an independent PyTorch run of the reference recipe.

For each of KD, DKD, NKD, SD-KD, SD-DKD, SD-NKD, CLKD and MSDCRD (its parameter-free
"logits" embedding, and trainable projection heads with a streamed sample-wise similarity
whose chunk divides no S): the config is built by
`recipes.build_config` from the method and a CIFAR-100 pair, and only what a small test
needs is overridden (synthetic 16x16 data, the tiny models of kd_jax.testing, batch 8,
2 steps per epoch, 3 epochs, milestones (1, 2), a 37-image test set with eval batch 16, and
for the methods with a warmup warmup_epochs=2 so that it is crossed); the method's other
hyperparameters stay the recipe's. `trainer.train` then runs for real (data pipeline,
checkpoints, logs).

The PyTorch side takes the same initial student (from `trainer.build`), the same teacher
and the same batches (kd_jax.data.get_dataset(config.dataset).train_batches: data, not
code under test) and applies the reference recipe
WRITTEN OUT below (the mdistiller / SDD recipes, not read from kd_jax): the objectives of
tests/torch_losses.py, torch.optim.SGD (momentum 0.9, coupled weight decay 5e-4), lr per
epoch = base * 0.1^(number of milestones m with epoch > m), epochs counted from 1, a
train-mode student and an eval-mode teacher. MSDCRD's projection heads (the student's AND
the teacher's) start from the trainer's initial ones (`trainer.build`'s state, as the
student does) and are trained in the same SGD as the student. The recipe's MSDCRD windows
((1, 2, 4) and (1, 2) for the two pairs) fit the tiny models' 8x8 pre-pool maps, so they
are not overridden; the two maps have the same size, so the common-grid pooling is a no-op
here (tests/test_losses_msdcrd.py covers unequal maps).

The teacher is a converted directory whose BatchNorm running statistics are far from the
batch statistics. `convert.load_teacher` already returns an eval-mode module, so the test
hands the trainer a TRAIN-mode one (the loader is wrapped): only the trainer's own
`teacher.eval()` makes its run equal the reference.

Compared, per method (float32 on both sides): the loss of every step (metrics.jsonl,
log_every_steps=1; atol 1e-5 + rtol 1e-5, relative because the NKD-based losses are
O(100); seen: <= 1e-5 absolute, <= 3e-6 relative; MSDCRD, O(15): <= 4e-6 absolute), the lr
of every step (rtol 1e-6), every parameter and BatchNorm statistic of the final student
and MSDCRD's two final projection heads (atol 1e-5; seen: <= 3e-7), and the
test top-1 / top-5 of every epoch (metrics.jsonl 'eval' records and the summary) against a
hand count of the torch twin's predictions on the 37 normalised test images (exact, as
multiples of 100/37, so that counting a padded example or dividing by the padded batch
fails; an image whose label logit is within 1e-4 of a competitor's may count either way).
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the oracle is the PyTorch trainer")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from flax import nnx  # noqa: E402

import kd_jax.testing  # noqa: F401,E402  registers tiny_cnn / tiny_cnn_wide
import torch_losses as ref  # noqa: E402
from kd_jax import convert, data, losses, models, recipes  # noqa: E402
from kd_jax.data import synthetic  # noqa: E402
from kd_jax.train import config_validation, trainer  # noqa: E402

NUM_CLASSES, SIZE, NUM_TRAIN, NUM_TEST = 10, 16, 16, 37
BATCH, EVAL_BATCH, EPOCHS, MILESTONES = 8, 16, 3, (1, 2)
STEPS_PER_EPOCH = NUM_TRAIN // BATCH
WARMUP = 2                      # overrides the recipe's 20 of DKD / NKD / SD-DKD / SD-NKD
STUDENT_WIDTH, TEACHER_WIDTH = 8, 16
# The reference solver (mdistiller configs/cifar100, CIFAR-100): SGD momentum 0.9, coupled wd 5e-4, x0.1.
MOMENTUM, WEIGHT_DECAY, DECAY = 0.9, 5e-4, 0.1
# CIFAR-100 normalisation (mdistiller dataset/cifar100.py); the synthetic dataset uses it too.
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
LOSS_RTOL, LOSS_ATOL, PARAM_ATOL = 1e-5, 1e-5, 1e-5

# (config file method, config argument, lr of the pair, method overrides, the reference
# objective written out: the reference values, not kd_jax's).
CASES = {
    # KD: T 4, CE 0.1, KD 0.9.
    "kd": ("kd", "resnet32x4-resnet8x4", 0.05, {},
           lambda s, t, y, e: ref.kd_objective(s, t, y, T=4.0, ce_w=0.1, kd_w=0.9)),
    # DKD: alpha 1, beta 8 (this pair), T 4, CE 1, warmup (20 -> WARMUP).
    "dkd": ("dkd", "resnet32x4-resnet8x4", 0.05, {"warmup_epochs": WARMUP},
            lambda s, t, y, e: ref.dkd_objective(s, t, y, e, alpha=1.0, beta=8.0, T=4.0,
                                                 ce_w=1.0, warmup_epochs=WARMUP)),
    # NKD (SDD's form): gamma = the pair's DKD beta 8, T 4, CE 1, warmup (20 -> WARMUP).
    "nkd": ("nkd", "resnet32x4-resnet8x4", 0.05, {"warmup_epochs": WARMUP},
            lambda s, t, y, e: ref.nkd_objective(s, t, y, e, gamma=8.0, T=4.0, ce_w=1.0,
                                                 warmup_epochs=WARMUP)),
    # SD-KD: M [1,2,4] for resnet32x4->ShuffleV1 (lr 0.01), T 4, CE 0.1, KD 0.9, NO warmup
    # (the recipe's 0 is not overridden: a warmup would show in the epoch-1 losses).
    "sd_kd": ("sdd", "resnet32x4-ShuffleV1,kd", 0.01, {},
              lambda s, t, y, e: ref.sd_objective(s, t, y, e, "kd", (1, 2, 4), T=4.0,
                                                  ce_w=0.1, kd_w=0.9, warmup_epochs=0)),
    # SD-DKD: wrn_40_2->vgg8 M [1,2,4], alpha 1, beta 8, T 4, CE 1, warmup (20 -> WARMUP).
    "sd_dkd": ("sdd", "wrn_40_2-vgg8,dkd", 0.05, {"warmup_epochs": WARMUP},
               lambda s, t, y, e: ref.sd_objective(s, t, y, e, "dkd", (1, 2, 4), T=4.0,
                                                   ce_w=1.0, kd_w=1.0, warmup_epochs=WARMUP,
                                                   alpha=1.0, beta=8.0)),
    # SD-NKD: wrn_40_2->vgg8 M [1,2] (SD-NKD's own set for this pair), gamma 8, T 4, CE 1.
    "sd_nkd": ("sdd", "wrn_40_2-vgg8,nkd", 0.05, {"warmup_epochs": WARMUP},
               lambda s, t, y, e: ref.sd_objective(s, t, y, e, "nkd", (1, 2), T=4.0,
                                                   ce_w=1.0, kd_w=1.0, warmup_epochs=WARMUP,
                                                   gamma=8.0)),
    # CLKD: 0.1 CE + 0.5 (L_ins + 2 L_cla) + 0.4 L_cc (batch correlation).
    "clkd": ("clkd", "resnet32x4-resnet8x4", 0.05, {},
             lambda s, t, y, e: ref.clkd_objective(s, t, y, ce_w=0.1, ins_w=0.5, cla_beta=2.0,
                                                   cc_w=0.4)),
    # MSDCRD (the reconstruction): 1.0 CE + 0.8 mean over windows (sample + feature InfoNCE),
    # tau 0.07, complementary weight 2, no KD, each network's classifier as the embedding.
    # resnet32x4->ShuffleV1 (lr 0.01): windows (1, 2, 4) (the common 4x4 CIFAR map).
    "msdcrd": ("msdcrd", "resnet32x4-ShuffleV1", 0.01, {},
               lambda s, t, y, e: ref.msdcrd_objective(s, t, y, (1, 2, 4), tau=0.07,
                                                       complementary_weight=2.0, ce_w=1.0,
                                                       contrastive_w=0.8)),
    # MSDCRD with trainable 128-d projection heads (student's and teacher's, trained with the
    # student), the sample-wise similarity streamed in chunks of 96 (S = 512, 392: no chunk
    # divides them). wrn_40_2->MobileNetV2 (lr 0.01): windows (1, 2) (MobileNetV2's 2x2 map).
    "msdcrd_projection": ("msdcrd", "wrn_40_2-MobileNetV2", 0.01,
                          {"embedding": "projection", "chunk_size": 96},
                          lambda s, t, y, e, heads: ref.msdcrd_objective(
                              s, t, y, (1, 2), heads=heads, tau=0.07, complementary_weight=2.0,
                              ce_w=1.0, contrastive_w=0.8)),
}
# Cases where the clip BINDS (torch's pre-clip norm > 40 on at least one step, asserted):
# SD-DKD and the CUB DKD baseline (SDD's SDD_DKD with --M [1]: DKD on the global logits;
# SDD configs/cub200/sdd_dkd/vgg13_vgg8.yaml: lr 0.05, beta 6). The tiny models' gradients
# stay under 40 with the recipe's beta (seen: <= 32 with the hot teacher), so these cases
# also override beta to 3x the pair's (on both sides) and use a hot teacher
# (`hot_teacher_dir`: fc x 40); the clip, T, alpha, CE weight and solver stay the recipe's.
CASES["sd_dkd_clip"] = ("sdd", "wrn_40_2-vgg8,dkd", 0.05, {"warmup_epochs": WARMUP, "beta": 24.0},
                        lambda s, t, y, e: ref.sd_objective(s, t, y, e, "dkd", (1, 2, 4), T=4.0,
                                                            ce_w=1.0, kd_w=1.0,
                                                            warmup_epochs=WARMUP, alpha=1.0,
                                                            beta=24.0))
CASES["cub_dkd_clip"] = ("dkd", "vgg13-vgg8", 0.05, {"warmup_epochs": WARMUP, "beta": 18.0},
                         lambda s, t, y, e: ref.dkd_objective(s, t, y, e, alpha=1.0, beta=18.0,
                                                              T=4.0, ce_w=1.0,
                                                              warmup_epochs=WARMUP))
# The other CUB baselines through the trainer (objective, the pair's lr, the clip at 40):
# SDD's KD.py and SDD_nkd.py with --M [1] run plain KD / NKD on the global logits; KD's
# weights are SD-KD's (CE 0.1, KD 0.9, T 4, no warmup), NKD's gamma is the pair's DKD beta
# (vgg13->vgg8: 6), T 4, CE 1, warmup (20 -> WARMUP).
CASES["cub_kd"] = ("kd", "vgg13-vgg8", 0.05, {},
                   lambda s, t, y, e: ref.kd_objective(s, t, y, T=4.0, ce_w=0.1, kd_w=0.9))
CASES["cub_nkd"] = ("nkd", "vgg13-vgg8", 0.05, {"warmup_epochs": WARMUP},
                    lambda s, t, y, e: ref.nkd_objective(s, t, y, e, gamma=6.0, T=4.0, ce_w=1.0,
                                                         warmup_epochs=WARMUP))
DATASET = {"cub_dkd_clip": data.CUB, "cub_kd": data.CUB, "cub_nkd": data.CUB}
BINDS = ("sd_dkd_clip", "cub_dkd_clip")
# The reference trainer's clip (torch clip_grad_norm_ max_norm, after backward, before
# SGD.step): SDD's BaseTrainer clips at 40 (SDD runs, NKD, every CUB run); mdistiller's
# trainer does not (KD, DKD); CLKD / MSDCRD: no reference code, kd_jax's choice of none.
CLIP = {"kd": 0.0, "dkd": 0.0, "nkd": 40.0, "sd_kd": 40.0, "sd_dkd": 40.0, "sd_nkd": 40.0,
        "clkd": 0.0, "msdcrd": 0.0, "msdcrd_projection": 0.0, "sd_dkd_clip": 40.0,
        "cub_dkd_clip": 40.0, "cub_kd": 40.0, "cub_nkd": 40.0}
SDD_SCALES = {"sd_kd": (1, 2, 4), "sd_dkd": (1, 2, 4), "sd_nkd": (1, 2), "sd_dkd_clip": (1, 2, 4)}
MSDCRD_WINDOWS = {"msdcrd": (1, 2, 4), "msdcrd_projection": (1, 2)}
PROJECTION_DIM = {"msdcrd_projection": 128}     # the recipe's projection_dim


def reference_lr(base_lr: float, epoch: int) -> float:
    """mdistiller's adjust_learning_rate: epochs from 1, x0.1 per milestone m with epoch > m."""
    return base_lr * DECAY ** sum(1 for m in MILESTONES if epoch > m)


# --- the torch twin of kd_jax.testing.TinyCNN ------------------------------------------

class TorchTinyCNN(nn.Module):
    def __init__(self, width, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        """-> (logits, pre-pool map (B, C, H, W), fc weight, fc bias)."""
        x = F.relu(self.bn1(self.conv1(x)))
        pre_pool = F.relu(self.bn2(self.conv2(x)))
        return self.fc(pre_pool.mean(dim=(2, 3))), pre_pool, self.fc.weight, self.fc.bias


def torch_state_dict(params, model_state) -> dict:
    """kd_jax TinyCNN variables (nnx States or pure dicts) -> the twin's state_dict (numpy)."""
    pure = {}
    for part in (params, model_state):
        part = part if isinstance(part, dict) else nnx.to_pure_dict(part)
        for layer, values in part.items():
            pure.setdefault(layer, {}).update({k: np.asarray(v) for k, v in values.items()})
    sd = {}
    for name in ("conv1", "conv2"):
        sd[f"{name}.weight"] = np.transpose(pure[name]["kernel"], (3, 2, 0, 1))   # HWIO -> OIHW
    for name in ("bn1", "bn2"):
        b = pure[name]
        sd.update({f"{name}.weight": b["scale"], f"{name}.bias": b["bias"],
                   f"{name}.running_mean": b["mean"], f"{name}.running_var": b["var"]})
    sd["fc.weight"] = pure["fc"]["kernel"].T
    sd["fc.bias"] = pure["fc"]["bias"]
    return sd


def to_torch(params, model_state, width) -> TorchTinyCNN:
    model = TorchTinyCNN(width, NUM_CLASSES)
    missing, unexpected = model.load_state_dict(
        {k: torch.tensor(np.array(v)) for k, v in torch_state_dict(params, model_state).items()},
        strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return model


def nchw(images: np.ndarray) -> "torch.Tensor":
    return torch.tensor(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))))


def projection_heads(extra, dim) -> tuple:
    """The trainer's MSDCRD projection heads {"student": (kernel (C, D), bias (D,)),
    "teacher": ...} -> (student nn.Linear, teacher nn.Linear), both C -> dim."""
    heads = []
    for side, width in (("student", STUDENT_WIDTH), ("teacher", TEACHER_WIDTH)):
        kernel, bias = (np.asarray(v) for v in extra[side])
        head = nn.Linear(2 * width, dim)
        head.load_state_dict({"weight": torch.tensor(kernel.T.copy()),
                              "bias": torch.tensor(bias.copy())})
        heads.append(head)
    return tuple(heads)


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A converted tiny_cnn_wide whose BatchNorm running statistics are far from a batch's.

    Seed and zero fc bias chosen so that its 2x2 and 4x4 regions sometimes disagree with its
    global prediction (complementary SDD regions occur; the SDD runs check it).
    """
    model = models.create("tiny_cnn_wide", NUM_CLASSES, rngs=nnx.Rngs(8))
    w = TEACHER_WIDTH
    model.bn1.mean.set_value(np.linspace(-0.5, 0.5, w, dtype=np.float32))
    model.bn1.var.set_value(np.linspace(0.3, 3.0, w, dtype=np.float32))
    model.bn2.mean.set_value(np.linspace(0.4, -0.4, 2 * w, dtype=np.float32))
    model.bn2.var.set_value(np.linspace(2.0, 0.2, 2 * w, dtype=np.float32))
    model.fc.kernel.set_value(3.0 * np.asarray(model.fc.kernel[...]))   # a confident teacher
    model.fc.bias.set_value(np.zeros(NUM_CLASSES, np.float32))
    path = str(tmp_path_factory.mktemp("teacher") / "tiny_cnn_wide")
    convert.save_converted(model, path, {"arch": "tiny_cnn_wide", "num_classes": NUM_CLASSES})
    return path


@pytest.fixture(scope="module")
def hot_teacher_dir(tmp_path_factory, teacher_dir):
    """teacher_dir's model with its fc x 40: near one-hot and often wrong teacher
    probabilities, so the distillation gradients exceed SDD's clip of 40."""
    model = convert.load_converted(teacher_dir)
    model.fc.kernel.set_value(40.0 * np.asarray(model.fc.kernel[...]))
    path = str(tmp_path_factory.mktemp("hot_teacher") / "tiny_cnn_wide")
    convert.save_converted(model, path, {"arch": "tiny_cnn_wide", "num_classes": NUM_CLASSES})
    return path


@pytest.fixture
def train_mode_teacher(monkeypatch):
    """convert.load_teacher returns eval mode; hand the trainer a train-mode module instead.
    Yields the list of the modules handed out (the test checks the trainer took one)."""
    real = convert.load_teacher
    handed = []

    def load_teacher(*args, **kwargs):
        teacher = real(*args, **kwargs)
        assert teacher.bn1.use_running_average and teacher.bn2.use_running_average
        teacher.train()
        handed.append(teacher)
        return teacher

    monkeypatch.setattr(convert, "load_teacher", load_teacher)
    return handed


def make_config(key: str, teacher_path: str):
    method, arg, _, overrides, _ = CASES[key]
    c = recipes.build_config(method, DATASET.get(key, data.CIFAR100), arg, default_pair=arg)
    c.dataset.update(name="synthetic", num_train=NUM_TRAIN, num_test=NUM_TEST,
                     num_classes=NUM_CLASSES, image_size=SIZE)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", teacher_path
    c.batch_size, c.eval_batch_size, c.num_epochs = BATCH, EVAL_BATCH, EPOCHS
    c.optimizer.milestones = MILESTONES
    c.method.update(overrides)
    # One seed per case (student init, data order): the eval checks see a student per case.
    c.seed = list(CASES).index(key)
    c.log_every_steps, c.checkpoint_every_epochs = 1, EPOCHS
    c.tensorboard, c.progress_bar, c.export_model = False, False, False
    return c


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        records = [json.loads(line) for line in fh]
    return ([r for r in records if r["kind"] == "train"],
            [r for r in records if r["kind"] == "eval"])


# --- the reference run -----------------------------------------------------------------------

TIE = 1e-4   # logits closer than this may rank either way in float32 (torch vs XLA)


def hand_count(model: TorchTinyCNN, images: "torch.Tensor", labels: np.ndarray):
    """The eval-mode twin's correct counts on the test images, counted here: ((sure, near
    tie) for top-1, (sure, near tie) for top-5). An image whose label logit is within TIE of
    a competitor's is a near tie: either outcome is right."""
    model.eval()
    with torch.no_grad():
        logits = model(images)[0].numpy().astype(np.float64)
    model.train()
    label_logit = logits[np.arange(len(labels)), labels][:, None]
    others = np.where(np.arange(logits.shape[1]) == labels[:, None], -np.inf, logits)
    above_surely = np.sum(others > label_logit + TIE, axis=1)   # surely ranked above the label
    above_maybe = np.sum(others > label_logit - TIE, axis=1)
    counts = []
    for k in (1, 5):
        sure = int(np.sum(above_maybe < k))                     # in the top k whatever the ties
        maybe = int(np.sum((above_maybe >= k) & (above_surely < k)))
        counts.append((sure, maybe))
    return tuple(counts)


def assert_matches_count(percent: float, count, what: str) -> None:
    """percent == 100 * c / NUM_TEST for a c the hand count allows (exactly, up to rounding)."""
    sure, maybe = count
    assert maybe <= 2, f"{what}: {maybe} near ties; the check would be weak: change a seed"
    allowed = [100.0 * c / NUM_TEST for c in range(sure, sure + maybe + 1)]
    assert any(abs(percent - a) < 1e-9 for a in allowed), (what, percent, allowed)


def normalised_test_images():
    """(NCHW float32 images, labels) of the synthetic test set, normalised here."""
    (_, _), (images, labels) = synthetic.load(NUM_TRAIN, NUM_TEST, SIZE, NUM_CLASSES)
    return nchw((images.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)), labels


def torch_run(key, config, student, teacher, heads=None):
    """The reference recipe on the trainer's batches; returns (losses, lrs, evals, weights,
    norms): norms = torch's pre-clip global gradient norm of every step.

    heads: MSDCRD's (student, teacher) projection heads, optimised with the student (the
    same SGD, weight decay included) and passed to the objective; None for the others."""
    _, _, base_lr, _, objective = CASES[key]
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    student.train()
    trained = list(student.parameters())
    extra_args = ()
    if heads is not None:
        trained += [p for head in heads for p in head.parameters()]
        extra_args = (heads,)
    opt = torch.optim.SGD(trained, lr=base_lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    ds = data.get_dataset(config.dataset)
    test_x, test_labels = normalised_test_images()
    losses, lrs, evals, weights, norms = [], [], [], [], []
    for epoch in range(1, EPOCHS + 1):
        lr = reference_lr(base_lr, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        for batch in ds.train_batches(epoch, BATCH, config.seed):
            x, y = nchw(batch["image"]), torch.tensor(batch["label"]).long()
            with torch.no_grad():
                t_out = teacher(x)
            s_out = student(x)
            loss = objective(s_out, t_out, y, epoch, *extra_args)
            opt.zero_grad()
            loss.backward()
            # SDD's BaseTrainer.train_iter: clip_grad_norm_ between backward and step; its
            # return value is the pre-clip total norm. inf max_norm: the norm, no clip.
            norms.append(float(torch.nn.utils.clip_grad_norm_(
                trained, max_norm=CLIP[key] or float("inf"), norm_type=2)))
            opt.step()
            losses.append(loss.item())
            lrs.append(lr)
            if key in SDD_SCALES:
                t_local = ref.multiscale_local_logits(t_out[1], t_out[2], t_out[3], SDD_SCALES[key])
                weights.append(ref.region_weights(t_local, y).numpy())
            if key in MSDCRD_WINDOWS:   # the teacher's weights per window (heads irrelevant)
                with torch.no_grad():
                    weights += [w.numpy().ravel() for *_, w in
                                ref.msdcrd_windows(s_out, t_out, y, MSDCRD_WINDOWS[key])]
        evals.append(hand_count(student, test_x, test_labels))
    return losses, lrs, evals, weights, norms


@pytest.mark.parametrize("key", list(CASES))
def test_trainer_run_equals_pytorch_reference(key, teacher_dir, hot_teacher_dir,
                                              train_mode_teacher, tmp_path):
    teacher_dir = hot_teacher_dir if key in BINDS else teacher_dir
    config = make_config(key, teacher_dir)
    assert config.optimizer.clip_grad_norm == CLIP[key]   # the recipe's clip
    # The student the trainer starts from and the teacher it loads (its own setup code).
    built = trainer.build(config, config_validation.validate(config), NUM_CLASSES)
    initial = built.state.students[config_validation.SOLO]
    t_student = to_torch(initial.params["model"], initial.model_state, STUDENT_WIDTH)
    t_teacher = to_torch(*nnx.split(convert.load_converted(teacher_dir), nnx.Param, ...)[1:],
                         TEACHER_WIDTH)
    initial_sd = {k: v.detach().clone() for k, v in t_student.state_dict().items()}
    # MSDCRD's projection heads: the trainer's initial ones (its init_extra), or none.
    heads = None
    if key in PROJECTION_DIM:
        heads = projection_heads(initial.params["extra"], PROJECTION_DIM[key])
        initial_heads = [p.detach().clone() for h in heads for p in h.parameters()]
    else:
        assert initial.params["extra"] is None

    workdir = str(tmp_path / key)
    loaded = len(train_mode_teacher)
    summary, state = trainer.train(config, workdir)
    assert len(train_mode_teacher) == loaded + 1    # the run's teacher came in train mode
    want_losses, want_lrs, want_evals, weights, want_norms = torch_run(
        key, config, t_student, t_teacher, heads)

    # The run: every step logged, in its epoch, with the reference lr and loss.
    train_records, eval_records = read_metrics(workdir)
    steps = EPOCHS * STEPS_PER_EPOCH
    assert summary["finished"] and summary["steps"] == steps
    assert [r["step"] for r in train_records] == list(range(1, steps + 1))
    assert [r["epoch"] for r in train_records] == [(s - 1) // STEPS_PER_EPOCH + 1
                                                   for s in range(1, steps + 1)]
    np.testing.assert_allclose([r["lr"] for r in train_records], want_lrs, rtol=1e-6, atol=0,
                               err_msg="lr per step (epoch -> lr mapping)")
    np.testing.assert_allclose([r["loss"] for r in train_records], want_losses,
                               rtol=LOSS_RTOL, atol=LOSS_ATOL, err_msg="loss per step")
    # The pre-clip gradient norm of every step (metrics.jsonl 'grad_norm').
    np.testing.assert_allclose([r["grad_norm"] for r in train_records], want_norms,
                               rtol=1e-4, atol=1e-5, err_msg="pre-clip gradient norm per step")
    if key in BINDS:   # the clip bound (so the parameters below show torch's clipped steps)
        assert max(want_norms) > CLIP[key], want_norms

    # The final student: every parameter and BatchNorm statistic.
    final = state.students[config_validation.SOLO]
    got = torch_state_dict(final.params["model"], final.model_state)
    want = t_student.state_dict()
    for name, value in got.items():
        np.testing.assert_allclose(value, want[name].numpy(), rtol=0, atol=PARAM_ATOL,
                                   err_msg=name)
    # The comparison is between trained students, not two copies of the initial one.
    assert np.abs(want["fc.weight"].numpy() - initial_sd["fc.weight"].numpy()).max() > 1e-3
    assert np.abs(want["bn2.running_mean"].numpy()
                  - initial_sd["bn2.running_mean"].numpy()).max() > 1e-3
    if heads is not None:   # both projection heads, trained (the teacher's too)
        for side, head in zip(("student", "teacher"), heads):
            kernel, bias = (np.asarray(v) for v in final.params["extra"][side])
            np.testing.assert_allclose(kernel, head.weight.detach().numpy().T, rtol=0,
                                       atol=PARAM_ATOL, err_msg=f"{side} projection kernel")
            np.testing.assert_allclose(bias, head.bias.detach().numpy(), rtol=0,
                                       atol=PARAM_ATOL, err_msg=f"{side} projection bias")
        final_heads = [p.detach() for h in heads for p in h.parameters()]
        for name, before, after in zip(("student kernel", "student bias", "teacher kernel",
                                        "teacher bias"), initial_heads, final_heads):
            assert (after - before).abs().max() > 1e-3, f"{name} projection did not train"

    # Test top-1 / top-5 of every epoch: the trainer's eval (37 images, batch 16, the last
    # batch padded) against the hand count.
    assert [(r["epoch"], r["step"]) for r in eval_records] == [
        (e, e * STEPS_PER_EPOCH) for e in range(1, EPOCHS + 1)]
    for record, (top1, top5) in zip(eval_records, want_evals):
        assert_matches_count(record["top1"], top1, f"top-1 of epoch {record['epoch']}")
        assert_matches_count(record["top5"], top5, f"top-5 of epoch {record['epoch']}")
    history = summary["history"]
    assert [(h["top1"], h["top5"]) for h in history] == [(r["top1"], r["top5"])
                                                         for r in eval_records]
    assert (summary["last_top1"], summary["last_top5"]) == (history[-1]["top1"],
                                                            history[-1]["top5"])
    assert summary["best_top1"] == max(h["top1"] for h in history)
    assert summary["best_top5"] == max(h["top5"] for h in history)
    if key in SDD_SCALES or key in MSDCRD_WINDOWS:
        # both kinds of region / local sample occurred, so the weighting was exercised
        w = np.concatenate(weights)
        assert (w == 2.0).any() and (w == 1.0).any()


def test_teacher_statistics_matter(teacher_dir):
    """The teacher's running statistics are far from a batch's, so a teacher left in train
    mode (batch statistics) gives other logits: the parity runs above would see it."""
    config = make_config("kd", teacher_dir)
    teacher = to_torch(*nnx.split(convert.load_converted(teacher_dir), nnx.Param, ...)[1:],
                       TEACHER_WIDTH)
    batch = next(iter(data.get_dataset(config.dataset).train_batches(1, BATCH, 0)))
    x = nchw(batch["image"])
    with torch.no_grad():
        teacher.eval()
        eval_logits = teacher(x)[0]
        teacher.train()
        train_logits = teacher(x)[0]
    assert (eval_logits - train_logits).abs().max() > 0.1


def test_eval_counts_only_the_real_test_images(tmp_path):
    """37 test images, eval batch 16: the last batch holds 5 real images and 11 padding ones.

    With 5 classes every image is in the top 5, so the top-5 is exactly 100 % only if the
    padding is neither counted as correct nor in the denominator (a padded example would
    give 48/37 or 37/48); the top-1 equals the hand count of the torch twin of the
    trained student. A CE run (no teacher), 2 epochs of 2 steps.
    """
    num_classes = 5
    c = recipes.build_config("ce", data.CIFAR100, "resnet8x4", default_pair="resnet8x4")
    c.dataset.update(name="synthetic", num_train=NUM_TRAIN, num_test=NUM_TEST,
                     num_classes=num_classes, image_size=SIZE)
    c.student.arch = "tiny_cnn"
    c.batch_size, c.eval_batch_size, c.num_epochs = BATCH, EVAL_BATCH, 2
    c.tensorboard, c.progress_bar, c.export_model = False, False, False
    summary, state = trainer.train(c, str(tmp_path))
    _, eval_records = read_metrics(str(tmp_path))
    assert [r["top5"] for r in eval_records] == [100.0, 100.0]
    final = state.students[config_validation.SOLO]
    model = TorchTinyCNN(STUDENT_WIDTH, num_classes)
    model.load_state_dict({k: torch.tensor(np.array(v)) for k, v in
                           torch_state_dict(final.params["model"], final.model_state).items()},
                          strict=False)
    (_, _), (images, labels) = synthetic.load(NUM_TRAIN, NUM_TEST, SIZE, num_classes)
    x = nchw((images.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD))
    top1, _ = hand_count(model, x, labels)
    assert_matches_count(eval_records[-1]["top1"], top1, "top-1")
    assert (summary["last_top1"], summary["last_top5"]) == (eval_records[-1]["top1"], 100.0)


@pytest.mark.parametrize("student_hw, teacher_hw, embedding",
                         [(7, 5, "logits"), (4, 6, "projection")])
def test_msdcrd_reference_on_unequal_maps(student_hw, teacher_hw, embedding):
    """The trainer runs above have equal 8x8 maps; here the torch reference's common-grid
    branch (adaptive pooling of the larger map: the student's 7 -> 5, the teacher's 6 -> 4,
    overlapping windows both) against kd_jax's objective on random maps (float32, rtol 1e-5).
    """
    rng = np.random.default_rng(student_hw)
    B, K, Cs, Ct, D = 4, 6, 5, 7, 9
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
    s_map, t_map = f32(B, Cs, student_hw, student_hw), f32(B, Ct, teacher_hw, teacher_hw)
    s_fc, t_fc = (f32(K, Cs), f32(K)), (f32(K, Ct), f32(K))          # torch layout (out, in)
    heads = ((f32(D, Cs), f32(D)), (f32(D, Ct), f32(D))) if embedding == "projection" else None
    y = rng.integers(0, K, size=B)
    s_logits = s_map.mean((2, 3)) @ s_fc[0].T + s_fc[1]
    t_logits = t_map.mean((2, 3)) @ t_fc[0].T + t_fc[1]
    s = (torch.tensor(s_logits), torch.tensor(s_map), *map(torch.tensor, s_fc))
    t = (torch.tensor(t_logits), torch.tensor(t_map), *map(torch.tensor, t_fc))
    y_t = torch.tensor(y).long()
    want = ref.msdcrd_objective(s, t, y_t, (1, 2, 4), heads=None if heads is None else
                                tuple(tuple(map(torch.tensor, h)) for h in heads))

    def jax_head(h):   # (weight (out, in), bias) -> (kernel (in, out), bias)
        return jnp.asarray(h[0].T), jnp.asarray(h[1])

    s_head, t_head = heads if heads is not None else (s_fc, t_fc)
    got, _ = jax.jit(functools.partial(   # the values of ref.msdcrd_objective's defaults
        losses.msdcrd_objective, windows=(1, 2, 4), tau=0.07, complementary_weight=2.0,
        chunk_size=None, ce_weight=1.0, contrastive_weight=0.8, kd_weight=0.0,
        temperature=4.0, teacher_head_trainable=False))(
        jnp.asarray(s_logits), jnp.asarray(t_logits), jnp.asarray(y),
        jnp.asarray(np.transpose(s_map, (0, 2, 3, 1))),
        jnp.asarray(np.transpose(t_map, (0, 2, 3, 1))),
        jax_head(s_head), jax_head(t_head), teacher_local_classifier=jax_head(t_fc))
    np.testing.assert_allclose(float(got), want.item(), rtol=1e-5)
    # Both kinds of local sample occur, so the weights were compared too.
    w = np.concatenate([w.numpy().ravel() for *_, w in ref.msdcrd_windows(s, t, y_t, (1, 2, 4))])
    assert (w == 2.0).any() and (w == 1.0).any()
