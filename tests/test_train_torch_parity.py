"""Two SGD steps of KD and of DKD change the student exactly as the PyTorch recipe does.

A tiny conv net with BatchNorm (kd_jax.train.testing.TinyCNN and its torch twin below), the
same weights and batches; torch: mdistiller's losses written out here, torch.optim.SGD
(momentum 0.9, coupled weight_decay; lr and wd large enough that both matter), model.train() student, model.eval()
teacher; the lr changes between the steps (as at a milestone). Compared: every parameter,
the BatchNorm running statistics, and the loss (tolerance 1e-5).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch parity test needs torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from flax import nnx  # noqa: E402

from kd_jax import data, recipes  # noqa: E402
from kd_jax.train import config_validation  # noqa: E402
from kd_jax.train.state import init_state, init_student, make_optimizer, split_student  # noqa: E402
from kd_jax.train.step import StepStudent, make_mesh, make_train_step  # noqa: E402
from kd_jax.train.testing import TinyCNN  # noqa: E402

NUM_CLASSES, BATCH, SIZE, EPOCH = 10, 8, 8, 5
# Large enough that weight decay and momentum move parameters well beyond the tolerance.
LRS = (0.5, 0.1)
WD = 5e-3


class TorchTinyCNN(nn.Module):
    def __init__(self, width, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def to_torch(model: TinyCNN, width: int) -> TorchTinyCNN:
    t = TorchTinyCNN(width, NUM_CLASSES)
    sd = {}
    for name in ("conv1", "conv2"):
        sd[f"{name}.weight"] = np.transpose(np.asarray(getattr(model, name).kernel[...]), (3, 2, 0, 1))
    for name in ("bn1", "bn2"):
        bn = getattr(model, name)
        sd.update({f"{name}.weight": bn.scale[...], f"{name}.bias": bn.bias[...],
                   f"{name}.running_mean": bn.mean[...], f"{name}.running_var": bn.var[...]})
    sd["fc.weight"] = np.asarray(model.fc.kernel[...]).T
    sd["fc.bias"] = model.fc.bias[...]
    t.load_state_dict({k: torch.tensor(np.array(v)) for k, v in sd.items()}, strict=False)
    return t


# mdistiller's losses, written out in torch.
def torch_kd(s, t, y, T=4.0):
    kd = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="none").sum(1).mean() * T * T
    return 0.1 * F.cross_entropy(s, y) + 0.9 * kd


def torch_dkd(s, t, y, alpha=1.0, beta=8.0, T=4.0, warmup=20):
    gt = torch.zeros_like(s).scatter_(1, y.unsqueeze(1), 1).bool()
    other = ~gt

    def cat(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], 1)

    ps, pt = cat(F.softmax(s / T, 1)), cat(F.softmax(t / T, 1))
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * T ** 2 / y.shape[0]
    pt2 = F.softmax(t / T - 1000.0 * gt, 1)
    ls2 = F.log_softmax(s / T - 1000.0 * gt, 1)
    nckd = F.kl_div(ls2, pt2, reduction="sum") * T ** 2 / y.shape[0]
    return F.cross_entropy(s, y) + min(EPOCH / warmup, 1.0) * (alpha * tckd + beta * nckd)


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    return [{"image": rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
             "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)} for _ in LRS]


@pytest.mark.parametrize("method,torch_loss", [("kd", torch_kd), ("dkd", torch_dkd)])
def test_two_steps_match_pytorch(batches, method, torch_loss):
    config = recipes.build_config(method, data.CIFAR100, None, default_pair="resnet32x4-resnet8x4")
    config.optimizer.weight_decay = WD
    student = TinyCNN(4, NUM_CLASSES, rngs=nnx.Rngs(1))
    teacher = TinyCNN(8, NUM_CLASSES, rngs=nnx.Rngs(2))
    # Non-trivial teacher BN statistics, so that eval mode matters.
    teacher.bn1.mean.set_value(0.1 * np.arange(8, dtype=np.float32))
    teacher.bn2.var.set_value(np.linspace(0.5, 2.0, 16, dtype=np.float32))
    t_student, t_teacher = to_torch(student, 4), to_torch(teacher, 8)
    initial_fc = t_student.fc.weight.detach().numpy().copy()
    t_teacher.eval()
    t_student.train()

    # --- JAX
    teacher.eval()
    teacher_graphdef, teacher_state = nnx.split(teacher)
    graphdef, _, params, model_state = split_student(student)
    tx = make_optimizer(config.optimizer)
    mesh = make_mesh()
    config.student.arch, config.teacher.arch, config.teacher.checkpoint = "resnet8", "resnet8", "random"
    (plan,) = config_validation.validate(config, num_devices=1).students
    step = make_train_step({"s": StepStudent(graphdef, plan.compute_loss)}, teacher_graphdef, tx, mesh)
    state = init_state({"s": init_student(params, model_state, tx)}, seed=0)
    jax_losses = []
    for batch, lr in zip(batches, LRS):
        state, metrics = step(state, teacher_state, batch, np.float32(lr), np.int32(EPOCH))
        jax_losses.append(float(metrics["s"]["loss"]))

    # --- torch
    opt = torch.optim.SGD(t_student.parameters(), lr=LRS[0], momentum=0.9, weight_decay=WD)
    torch_losses = []
    for batch, lr in zip(batches, LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        x = torch.tensor(np.transpose(batch["image"], (0, 3, 1, 2)))
        y = torch.tensor(batch["label"]).long()
        with torch.no_grad():
            t_logits = t_teacher(x)
        loss = torch_loss(t_student(x), t_logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())

    np.testing.assert_allclose(jax_losses, torch_losses, rtol=0, atol=1e-5)
    trained = nnx.merge(graphdef, state.students["s"].params["model"], state.students["s"].model_state)
    expected = to_torch(trained, 4).state_dict()
    got = t_student.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            continue
        np.testing.assert_allclose(value.numpy(), got[key].numpy(), rtol=0, atol=1e-5,
                                   err_msg=key)
    # The step really moved the parameters (the comparison is not between two copies).
    assert np.abs(expected["fc.weight"].numpy() - initial_fc).max() > 1e-4
