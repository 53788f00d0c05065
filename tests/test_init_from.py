"""student.init_from (start from another run) and teacher.checkpoint=published in the trainer.

Oracles: the saved model's own arrays (the student's initial state must equal them leaf for
leaf), and the torch teacher's logits for the published teacher the trainer loads.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from flax import nnx

import kd_jax.testing  # noqa: F401  registers tiny_cnn / tiny_cnn_wide
from kd_jax import convert, data, models, recipes, teachers
from kd_jax.train import config_validation, trainer
from kd_jax.train.config_validation import ConfigError


def tiny_config(method="ce"):
    c = recipes.build_config(method, data.CIFAR100, "resnet8" if method == "ce" else None,
                             default_pair="resnet56-resnet20")
    c.dataset.name, c.dataset.num_classes, c.dataset.image_size = "synthetic", 10, 16
    c.dataset.num_train, c.dataset.num_test = 16, 8
    c.student.arch = "tiny_cnn"
    c.batch_size, c.total_steps, c.tensorboard, c.progress_bar = 8, 1, False, False
    return c


def saved_model(path: str, arch="tiny_cnn", num_classes=10, seed=5) -> nnx.Module:
    model = models.create(arch, num_classes, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
        var.set_value(rng.uniform(0.5, 1.5, var.get_value().shape).astype(np.float32))
    convert.save_converted(model, path, {"arch": arch, "num_classes": num_classes})
    return model


def test_init_from_sets_weights_and_batchnorm_statistics(tmp_path):
    saved = saved_model(str(tmp_path / "run" / "final_model"))
    c = tiny_config()
    c.student.init_from = str(tmp_path / "run" / "final_model")
    plan = config_validation.validate(c, num_devices=1)
    built = trainer.build(c, plan, 10)
    s = built.state.students["student"]
    want = nnx.state(saved, (nnx.Param, nnx.BatchStat))
    flat_want = dict(nnx.to_flat_state(want))
    flat_got = {**dict(nnx.to_flat_state(s.params["model"])),
                **dict(nnx.to_flat_state(s.model_state))}
    assert sorted(flat_got) == sorted(flat_want)
    for path, var in flat_want.items():
        np.testing.assert_array_equal(np.asarray(flat_got[path].get_value()),
                                      np.asarray(var.get_value()), err_msg=str(path))
    # Without init_from the student is the seed's random init, not the saved model.
    c.student.init_from = ""
    fresh = trainer.build(c, config_validation.validate(c, num_devices=1), 10)
    k = fresh.state.students["student"].params["model"]["fc"]["kernel"].get_value()
    assert not np.array_equal(np.asarray(k), np.asarray(saved.fc.kernel.get_value()))


def test_init_from_trains(tmp_path):
    saved_model(str(tmp_path / "start"))
    c = tiny_config()
    c.student.init_from = str(tmp_path / "start")
    summary, _ = trainer.train(c, str(tmp_path / "run"))
    assert summary["finished"]


@pytest.mark.parametrize("case", ["arch", "classes", "run dir", "missing", "broken json"])
def test_init_from_errors_before_any_work(tmp_path, case):
    c = tiny_config()
    if case == "arch":
        saved_model(str(tmp_path / "m"), arch="tiny_cnn_wide")
        c.student.init_from, match = str(tmp_path / "m"), (
            r"student.init_from='.*m' holds a tiny_cnn_wide with 10 classes, but "
            r"student.arch='tiny_cnn' with 10 classes: architecture and classes must match")
    elif case == "classes":
        saved_model(str(tmp_path / "m"), num_classes=7)
        c.student.init_from, match = str(tmp_path / "m"), "holds a tiny_cnn with 7 classes"
    elif case == "run dir":
        saved_model(str(tmp_path / "run" / "final_model"))
        c.student.init_from = str(tmp_path / "run")
        match = r"no teacher.json in it; it is a run directory: use .*run/final_model"
    elif case == "broken json":   # a teacher.json cut short: named, no JSONDecodeError
        saved_model(str(tmp_path / "m"))
        (tmp_path / "m" / "teacher.json").write_text('{"arch": "tiny_cnn", "num_cl')
        c.student.init_from, match = str(tmp_path / "m"), (
            rf"student.init_from='.*m': {tmp_path}/m/teacher.json: not valid JSON \(.*\); the "
            r"file is truncated or damaged")
    else:
        c.student.init_from, match = str(tmp_path / "nothing"), "no such file or directory"
    with pytest.raises(ConfigError, match=match):
        config_validation.validate(c, num_devices=1)
    assert not os.path.exists(tmp_path / "work")


def test_published_teacher_resolves_and_loads(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch", reason="needs torch: the teachers are .pth files")
    import torch_models
    monkeypatch.setenv("KD_JAX_TEACHERS", str(tmp_path / "teachers"))
    c = tiny_config("kd")
    c.dataset.num_classes, c.dataset.image_size = 100, 32
    assert (c.teacher.arch, c.teacher.checkpoint) == ("resnet56", teachers.PUBLISHED)
    with pytest.raises(ConfigError, match=(
            "teacher.checkpoint='published': the published teacher resnet56 is not in .*; "
            "fetch it with `python -m kd_jax.teachers fetch resnet56`")):
        config_validation.validate(c, num_devices=1)
    tmodel = torch_models.randomize_(torch_models.create("resnet56", 100), 0)
    path = os.path.join(str(tmp_path / "teachers"), "resnet56")
    convert.save_converted(convert.torch_to_flax(tmodel.state_dict(), "resnet56", 100), path,
                           {"arch": "resnet56", "num_classes": 100})
    config_validation.validate(c, num_devices=1)
    assert config_validation.teacher_checkpoint(c) == path
    teacher = trainer.load_teacher(c, 100)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch_models.assert_close(torch_models.forward(teacher, torch_models.nhwc(x))[0],
                              tmodel(x)[0].detach().numpy(), "published teacher logits")


def test_configs_default_to_published_teachers():
    for dataset, pair in ((data.CIFAR100, "vgg13-vgg8"), (data.IMAGENET, "ResNet34-ResNet18")):
        c = recipes.build_config("dkd", dataset, pair, default_pair=pair)
        assert c.teacher.checkpoint == teachers.PUBLISHED
    c = recipes.build_config("kd", data.CUB, "vgg13-vgg8", default_pair="vgg13-vgg8")
    assert c.teacher.checkpoint is None   # no published CUB teachers
    assert recipes.build_config("ce", data.CIFAR100, "resnet8",
                                default_pair="").teacher.checkpoint is None
