"""kd_jax.convert: key coverage, checkpoint formats, errors, CLI.

Oracles are independent of the converter: the PyTorch models of tests/torch_models.py (own
implementations whose keys are checked here against the reference dumps), torch tensors
compared directly with converted leaves, and hashlib for the recorded sha256. Whole-model
numeric parity of converted models (every family, eval and train mode) is in
test_model_parity.py. Tolerance: |flax - torch| <= 1e-5 * max(1, max|torch|) per tensor.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="needs torch: the oracles are PyTorch models")

import kd_jax.convert as kc  # noqa: E402
import torch_models  # noqa: E402  (tests/torch_models.py)
from kd_jax.convert.__main__ import main as cli_main  # noqa: E402
from kd_jax.convert.mapping import abstract_model, torch_shape  # noqa: E402
from kd_jax.convert.torch_files import load_torch_file  # noqa: E402

DUMPS = os.path.join(os.path.dirname(__file__), "data", "torch_state_dicts")
DUMP_NAMES = sorted(f[:-4] for f in os.listdir(DUMPS) if f.endswith(".txt"))


def read_dump(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every state_dict entry of a reference dump, in order."""
    text = open(os.path.join(DUMPS, f"{name}.txt")).read()
    body = text.split("# state_dict (key  shape  dtype)\n", 1)[1]
    entries = []
    for line in body.splitlines():
        if line.strip():
            key, shape, _ = line.split("\t")
            entries.append((key, tuple(int(s) for s in re.findall(r"\d+", shape))))
    return entries


def dump_num_classes(name: str) -> int:
    text = open(os.path.join(DUMPS, f"{name}.txt")).read()
    return int(re.search(r"^logits: \(\d+,(\d+)\)", text, re.M)[1])


nhwc, assert_close, forward = torch_models.nhwc, torch_models.assert_close, torch_models.forward


def small_torch_model(num_classes: int = 10, seed: int = 0):
    return torch_models.randomize_(torch_models.create("resnet8", num_classes), seed)


# --- Key coverage ---

@pytest.mark.parametrize("name", DUMP_NAMES)
def test_torch_test_models_have_reference_keys(name):
    """The parity oracles have the reference's state_dict: same keys, shapes and order."""
    model = torch_models.create(name, dump_num_classes(name))
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == read_dump(name)


@pytest.mark.parametrize("name", DUMP_NAMES)
def test_converter_mapping_covers_reference_keys(name):
    """The converter's path -> key mapping hits every dumped key once, with the dumped shape."""
    abstract = abstract_model(name, dump_num_classes(name))
    mapping = kc.torch_keys(abstract)
    shapes = {tuple(p): tuple(v.shape)
              for p, v in nnx.to_flat_state(nnx.state(abstract, (nnx.Param, nnx.BatchStat)))}
    dump = dict(read_dump(name))
    mapped = {key: torch_shape(path, shapes[path]) for path, key in mapping.items()}
    assert len(mapped) == len(mapping), "two Flax leaves map to the same torch key"
    bn_counters = {k[: -len("running_mean")] + "num_batches_tracked"
                   for k in mapped if k.endswith(".running_mean")}
    assert sorted(set(mapped) | bn_counters) == sorted(dump)
    assert mapped == {k: dump[k] for k in mapped}


@pytest.mark.parametrize("name", ["cub_resnet32x4", "cub_MobileNetV2", "cub_ShuffleV1", "cub_vgg8"])
def test_cub_models_map_to_their_cifar_keys(name):
    """SDD's CUB models replace modules in place: same keys as the CIFAR model (no dump)."""
    keys = set(kc.torch_keys(abstract_model(name, 200)).values())
    cifar = {k for k, _ in read_dump(name[len("cub_"):]) if not k.endswith("num_batches_tracked")}
    assert keys == cifar


# --- Checkpoint formats ---

def assert_holds(model, sd: dict):
    """Converted leaves equal the torch tensors, in Flax layout (checked on the stem and head)."""
    equal = np.testing.assert_array_equal
    equal(np.asarray(model.conv1.kernel[...]), sd["conv1.weight"].permute(2, 3, 1, 0).numpy())
    equal(np.asarray(model.head.kernel[...]), sd["fc.weight"].T.numpy())
    equal(np.asarray(model.bn1.var[...]), sd["bn1.running_var"].numpy())
    assert model.bn1.use_running_average, "converted models come back in eval mode"


def test_reference_checkpoint_dict(tmp_path):
    sd = small_torch_model().state_dict()
    path = str(tmp_path / "ckpt_epoch_240.pth")
    opt = torch.optim.SGD(small_torch_model().parameters(), lr=0.05, momentum=0.9)
    torch.save({"epoch": 240, "model": sd, "accuracy": torch.tensor(73.5),
                "optimizer": opt.state_dict()}, path)
    ckpt = kc.read_checkpoint(path)
    assert (ckpt.accuracy, ckpt.epoch) == (73.5, 240)
    assert_holds(kc.load_torch_checkpoint(path, "resnet8", 10), sd)


def test_best_acc_numpy_scalar_loads_without_pickle(tmp_path):
    sd = small_torch_model().state_dict()
    path = str(tmp_path / "best.pth")
    torch.save({"model": sd, "best_acc": np.float64(71.25), "epoch": np.int64(200)}, path)
    ckpt = kc.read_checkpoint(path)  # weights_only + numpy allow-list, no allow_pickle needed
    assert (ckpt.accuracy, ckpt.epoch) == (71.25, 200)
    assert_holds(kc.torch_to_flax(ckpt.state_dict, "resnet8", 10), sd)


def test_distiller_checkpoint_takes_student(tmp_path):
    student = small_torch_model(seed=0).state_dict()
    teacher = small_torch_model(seed=5).state_dict()
    sd = {f"module.student.{k}": v for k, v in student.items()}
    sd.update({f"module.teacher.{k}": v for k, v in teacher.items()})
    sd["module.conv_reg.weight"] = torch.zeros(3, 3, 1, 1)
    path = str(tmp_path / "distiller.pth")
    torch.save({"model": sd, "epoch": 240, "best_acc": 70.0}, path)
    ckpt = kc.read_checkpoint(path)
    assert any("student" in n and "teacher" in n and "conv_reg" in n for n in ckpt.notes), \
        ckpt.notes
    assert_holds(kc.load_torch_checkpoint(path, "resnet8", 10), student)


def test_plain_state_dict_with_dataparallel_prefix(tmp_path):
    sd = small_torch_model().state_dict()
    path = str(tmp_path / "plain.pth")
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    ckpt = kc.read_checkpoint(path)
    assert ckpt.source_format == "plain state_dict" and ckpt.accuracy is None
    assert_holds(kc.load_teacher(path, "resnet8", 10), sd)


def test_training_options_load_without_pickle(tmp_path):
    """argparse.Namespace beside the weights (training options) is data: no opt-in needed."""
    sd = small_torch_model().state_dict()
    path = str(tmp_path / "with_opt.pth")
    torch.save({"model": sd, "opt": argparse.Namespace(lr=0.05), "accuracy": 71.5}, path)
    assert kc.read_checkpoint(path).accuracy == 71.5
    assert load_torch_file(path)["opt"].lr == 0.05


def test_arbitrary_pickle_needs_opt_in(tmp_path):
    sd = small_torch_model().state_dict()
    path = str(tmp_path / "with_opt.pth")
    torch.save({"model": sd, "opt": datetime.timedelta(days=1)}, path)
    with pytest.raises(kc.ConversionError, match="global datetime.timedelta.*allow-pickle"):
        kc.read_checkpoint(path)
    with pytest.warns(UserWarning, match="executed as a pickle"):
        assert_holds(kc.load_torch_checkpoint(path, "resnet8", 10, allow_pickle=True), sd)


# --- Errors ---

def test_missing_and_unexpected_keys_are_listed():
    sd = dict(small_torch_model().state_dict())
    del sd["layer1.0.bn1.running_var"]
    sd["extra.weight"] = torch.zeros(2)
    with pytest.raises(kc.ConversionError) as e:
        kc.torch_to_flax(sd, "resnet8", 10)
    msg = str(e.value)
    assert re.search(r"missing keys \(1\): layer1\.0\.bn1\.running_var", msg), msg
    assert re.search(r"unexpected keys \(1\): extra\.weight", msg), msg


def test_shape_mismatch_names_key_and_shapes():
    sd = dict(small_torch_model().state_dict())
    sd["layer2.0.conv1.weight"] = torch.zeros(32, 16, 1, 1)
    expected = re.escape("layer2.0.conv1.weight: checkpoint has (32, 16, 1, 1)")
    with pytest.raises(kc.ConversionError, match=expected + r".*expects \(32, 16, 3, 3\)"):
        kc.torch_to_flax(sd, "resnet8", 10)


def test_num_classes_mismatch():
    sd = small_torch_model(num_classes=100).state_dict()
    expected = "checkpoint fc.weight has 100 classes but num_classes=10"
    with pytest.raises(kc.ConversionError, match=re.escape(expected)):
        kc.torch_to_flax(sd, "resnet8", 10)


def test_unknown_arch_lists_known():
    with pytest.raises(ValueError, match="known models: .*resnet8"):
        kc.torch_to_flax({}, "resnet9", 10)


# --- Command line ---

def test_cli_writes_orbax_and_json_and_load_teacher_matches_pth(tmp_path, capsys):
    tmodel = small_torch_model()
    pth, out = str(tmp_path / "ckpt_epoch_240.pth"), str(tmp_path / "converted")
    torch.save({"epoch": 240, "model": tmodel.state_dict(), "accuracy": torch.tensor(66.5)}, pth)

    assert cli_main(["--arch", "resnet8", "--num-classes", "10", pth, out]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = json.load(open(os.path.join(out, "teacher.json")))
    assert meta["arch"] == "resnet8" and meta["num_classes"] == 10
    assert meta["source_sha256"] == hashlib.sha256(open(pth, "rb").read()).hexdigest()
    assert (meta["accuracy"], meta["epoch"]) == (66.5, 240)
    assert os.path.isdir(os.path.join(out, "state"))

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    from_dir, from_pth = kc.load_teacher(out, "resnet8", 10), kc.load_teacher(pth, "resnet8", 10)
    assert from_dir.bn1.use_running_average
    np.testing.assert_array_equal(np.asarray(forward(from_dir, x)[0]),
                                  np.asarray(forward(from_pth, x)[0]))
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)))[0].numpy()
    assert_close(forward(from_dir, x)[0], expected, "logits")

    with pytest.raises(kc.ConversionError, match="num_classes=10, but num_classes=100"):
        kc.load_teacher(out, "resnet8", 100)
    with pytest.raises(kc.ConversionError, match="converted resnet8 .* but arch='resnet20'"):
        kc.load_teacher(out, "resnet20", 10)
    # No silent overwrite of an existing conversion.
    assert cli_main(["--arch", "resnet8", "--num-classes", "10", pth, out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kd_jax: error: ") and "not empty" in err
