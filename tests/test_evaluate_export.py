"""python -m kd_jax.evaluate and python -m kd_jax.export.

Oracles: the PyTorch models of tests/torch_models.py (written from the reference code, not
from kd_jax): the exported state_dict must load into them with strict=True and give the
Flax model's logits (|diff| <= 1e-5 * max(1, max|logit|)); evaluate's top-1/top-5/loss are
recomputed with torch from the same normalised test images.
"""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="needs torch: the oracle is the reference model")

import torch_models  # noqa: E402  (tests/torch_models.py)
from kd_jax import convert, data, evaluate, export, models  # noqa: E402

# One model per family (and the variants whose keys differ), with the input sizes of
# test_model_parity.py: ImageNet/CUB models at a multiple of 32 smaller than 224.
FAMILIES = [
    ("resnet8", 32, 100), ("resnet8x4", 32, 100), ("ResNet18", 32, 100), ("ResNet50", 32, 100),
    ("wrn_16_2", 32, 100), ("vgg8", 32, 100), ("ShuffleV1", 32, 100), ("ShuffleV2", 32, 100),
    ("MobileNetV2", 32, 100), ("imagenet_ResNet18", 64, 1000), ("imagenet_ResNet50", 64, 1000),
    ("imagenet_MobileNetV1", 64, 1000), ("cub_resnet8x4", 64, 200), ("cub_MobileNetV2", 64, 200),
    ("cub_vgg8", 48, 200),
]


def random_flax_model(name: str, num_classes: int, seed: int = 0) -> nnx.Module:
    """models.create with its init, then random BatchNorm statistics (an init has 0 / 1)."""
    model = models.create(name, num_classes, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
        shape = var.get_value().shape
        var.set_value(rng.normal(0, 0.1, shape).astype(np.float32) if path[-1] == "mean"
                      else rng.uniform(0.5, 1.5, shape).astype(np.float32))
    model.eval()
    return model


@pytest.mark.parametrize("name,size,num_classes", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_export_loads_strictly_into_the_reference_model_with_equal_logits(
        tmp_path, name, size, num_classes):
    model = random_flax_model(name, num_classes)
    out = str(tmp_path / "student.pth")
    export.export(model, out, "torch")
    tmodel = torch_models.create(name, num_classes, image_size=size)
    tmodel.load_state_dict(torch.load(out, weights_only=True), strict=True)
    tmodel.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tmodel(x)[0].numpy()
    torch_models.assert_close(torch_models.forward(model, torch_models.nhwc(x))[0], expected,
                              f"{name} logits")
    # Round trip: the exported state_dict converts back to the same Flax leaves.
    back = convert.torch_to_flax(torch.load(out, weights_only=True), name, num_classes)
    for a, b in zip(jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat))),
                    jax.tree.leaves(nnx.state(back, (nnx.Param, nnx.BatchStat)))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_npz_holds_the_same_entries(tmp_path):
    model = random_flax_model("resnet8", 10)
    export.export(model, str(tmp_path / "a.pth"), "torch")
    export.export(model, str(tmp_path / "a.npz"), "npz")
    pth = torch.load(str(tmp_path / "a.pth"), weights_only=True)
    npz = np.load(str(tmp_path / "a.npz"))
    assert sorted(npz.files) == sorted(pth)
    for k, v in pth.items():
        np.testing.assert_array_equal(npz[k], v.numpy())
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_export_command_on_a_final_model(tmp_path, capsys):
    model = random_flax_model("resnet8", 10)
    final = str(tmp_path / "run" / "final_model")
    convert.save_converted(model, final, {"arch": "resnet8", "num_classes": 10})
    out = str(tmp_path / "resnet8.pth")
    assert export.main([final, "--to", "torch", out]) == 0
    assert "wrote" in capsys.readouterr().out
    tmodel = torch_models.create("resnet8", 10)
    tmodel.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert export.main([final, "--to", "torch", out]) == 2
    assert capsys.readouterr().err == f"kd_jax: error: {out} exists (pass --overwrite to replace it)\n"
    assert export.main([str(tmp_path / "run"), "--to", "npz", str(tmp_path / "x.npz")]) == 2
    assert (f"it is a run directory: pass {final}") in capsys.readouterr().err
    assert export.main([final, "--to", "onnx", str(tmp_path / "x.onnx")]) == 2


# --- evaluate ------------------------------------------------------------------------------------

def torch_metrics(tmodel, ds) -> dict:
    """top-1/top-5 (%) and mean CE of the torch model over ds's test split (the oracle)."""
    images = np.concatenate([b["image"][b["mask"] > 0] for b in ds.eval_batches(64)])
    labels = torch.from_numpy(np.concatenate([b["label"][b["mask"] > 0]
                                              for b in ds.eval_batches(64)])).long()
    with torch.no_grad():
        logits = tmodel(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0].double()
    top5 = logits.topk(5, dim=1).indices
    return {"top1": 100.0 * (top5[:, 0] == labels).double().mean().item(),
            "top5": 100.0 * (top5 == labels[:, None]).any(1).double().mean().item(),
            "loss": torch.nn.functional.cross_entropy(logits, labels).item()}


@pytest.mark.parametrize("source", ["converted", "pth"])
def test_evaluate_matches_torch(tmp_path, capsys, source):
    tmodel = torch_models.randomize_(torch_models.create("resnet8", 10), 3)
    pth = str(tmp_path / "t.pth")
    torch.save({"model": tmodel.state_dict()}, pth)
    if source == "converted":
        model = convert.torch_to_flax(tmodel.state_dict(), "resnet8", 10)
        path = str(tmp_path / "teacher")
        convert.save_converted(model, path, {"arch": "resnet8", "num_classes": 10})
        argv = [path]
    else:
        argv = [pth, "--arch", "resnet8"]
    # The 512 synthetic test images in batches of 100: the last batch is padded, masked out.
    assert evaluate.main([*argv, "--dataset", "synthetic", "--batch-size", "100",
                              "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = torch_metrics(tmodel, data.get_dataset(evaluate.dataset_config("synthetic", 10)))
    assert (got["arch"], got["dataset"], got["num_test"]) == ("resnet8", "synthetic", 512)
    for k in ("top1", "top5"):
        assert got[k] == pytest.approx(want[k], abs=1e-9), k
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_evaluate_on_fashion_mnist_and_errors(tmp_path, capsys):
    """Real data (Debian's Fashion-MNIST), the printed line, and one-line errors."""
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("needs /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)")
    path = str(tmp_path / "teacher")
    convert.save_converted(random_flax_model("resnet8", 10), path,
                           {"arch": "resnet8", "num_classes": 10})
    assert evaluate.main([path, "--dataset", "fashion_mnist", "--limit", "200"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"resnet8 (converted directory {path}) on the fashion_mnist test split "
                          "(200 images): top-1 ")
    assert evaluate.main([path, "--dataset", "cifar100x"]) == 2
    assert "--dataset 'cifar100x'; allowed:" in capsys.readouterr().err
    assert evaluate.main([path + ".pth", "--dataset", "synthetic"]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    # No --dataset and none recorded in teacher.json.
    assert evaluate.main([path]) == 2
    assert "pass --dataset" in capsys.readouterr().err


# --- bad input: one `kd_jax: error:` line, exit 2 -------------------------------------------------

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A converted resnet8 (10 classes), its .pth, a directory whose teacher.json is cut
    short, and a regular file."""
    d = tmp_path_factory.mktemp("inputs")
    model = random_flax_model("resnet8", 10)
    convert.save_converted(model, str(d / "model"), {"arch": "resnet8", "num_classes": 10})
    export.export(model, str(d / "model.pth"), "torch")
    convert.save_converted(model, str(d / "broken"), {"arch": "resnet8", "num_classes": 10})
    (d / "broken" / "teacher.json").write_text('{"arch": "resnet8", "num_cl')
    (d / "file").write_text("a regular file")
    return d


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kd_jax: error: "), err
    return lines[0].removeprefix("kd_jax: error: ")


@pytest.mark.parametrize("case", ["unknown arch", "broken teacher.json", "wrong classes .pth",
                                  "wrong classes dir", "OUT under a file", "OUT a directory"])
def test_export_bad_input_is_one_line(inputs, tmp_path, capsys, case):
    d, out = inputs, str(tmp_path / "out.pth")
    argv, expected = {
        "unknown arch": ([str(d / "model.pth"), "--arch", "nosuch", "--num-classes", "10"],
                         r"--arch 'nosuch': unknown model; known models: .*resnet8.*"),
        "broken teacher.json": ([str(d / "broken")],
                                rf"{d}/broken/teacher.json: not valid JSON \(.*\); the file is "
                                r"truncated or damaged"),
        "wrong classes .pth": ([str(d / "model.pth"), "--arch", "resnet8", "--num-classes", "7"],
                               r"checkpoint fc.weight has 10 classes but num_classes=7"),
        "wrong classes dir": ([str(d / "model"), "--num-classes", "7"],
                              rf"{d}/model holds a converted resnet8 with num_classes=10, but "
                              r"num_classes=7 was requested"),
        "OUT under a file": ([str(d / "model")], None),
        "OUT a directory": ([str(d / "model")], None),
    }[case]
    if case == "OUT under a file":
        out = str(d / "file" / "sub" / "out.pth")
        expected = rf"cannot write {out}: {d}/file is a file, not a directory"
    elif case == "OUT a directory":
        out, expected = str(tmp_path), rf"{tmp_path} is a directory; give the file to write, .*"
    assert export.main([*argv, "--to", "torch", out]) == 2
    assert re.fullmatch(expected, one_error_line(capsys))
    assert not os.path.exists(os.path.join(tmp_path, "out.pth"))


@pytest.mark.parametrize("case", ["unknown arch", "broken teacher.json", "wrong classes .pth",
                                  "wrong classes dir"])
def test_evaluate_bad_input_is_one_line(inputs, capsys, case):
    d = inputs
    if case == "wrong classes dir":
        if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
            pytest.skip("needs /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)")
        convert.save_converted(random_flax_model("resnet8", 7), str(d / "seven"),
                               {"arch": "resnet8", "num_classes": 7}, overwrite=True)
    argv, expected = {
        "unknown arch": ([str(d / "model.pth"), "--arch", "nosuch", "--dataset", "synthetic"],
                         r"--arch 'nosuch': unknown model; known models: .*"),
        "broken teacher.json": ([str(d / "broken"), "--dataset", "synthetic"],
                                rf"{d}/broken/teacher.json: not valid JSON \(.*\); the file is "
                                r"truncated or damaged"),
        "wrong classes .pth": ([str(d / "model.pth"), "--arch", "resnet8", "--dataset",
                                "cifar100"],
                               r"checkpoint fc.weight has 10 classes but num_classes=100"),
        "wrong classes dir": ([str(d / "seven"), "--dataset", "fashion_mnist", "--limit", "8"],
                              rf"{d}/seven has 7 outputs but fashion_mnist has 10 classes"),
    }[case]
    assert evaluate.main(argv) == 2
    assert re.fullmatch(expected, one_error_line(capsys))
