"""Whole-model numeric parity with PyTorch, for every family of the zoo (CUB variants included).

Oracle: the PyTorch models of tests/torch_models.py, written from the reference code's
semantics (not from kd_jax), with random weights and trained-looking BatchNorm statistics
(`randomize_`). The state_dict goes through kd_jax.convert.torch_to_flax, then both models
run the same batch of 2.
  * eval mode: logits, pooled feature, every stage and pre-activation feature;
  * train mode (one model per family): the same outputs, normalised with batch statistics,
    and every BatchNorm's running_mean / running_var after that one forward, against
    torch's updated buffers (momentum 0.1, unbiased variance; WRN's doubly-called BNs
    included).
Tolerance, eval mode: |flax - torch| <= 1e-5 * max(1, max|torch|) per tensor (fp32). Train
mode: against the same torch model in float64, |flax - torch64| <= 1e-5 * max(1,
max|torch64|) + 2 * |torch32 - torch64| (see assert_close_to_float64: batch-statistics
normalisation of a batch of 2 amplifies fp32 rounding in torch as much as in kd_jax).

Every test runs twice, with cpu_conv='xla' and 'im2col' (the CPU convolution formulations).

Input sizes are the smallest that exercise each topology: 32x32 for the CIFAR models (VGG
also at 64, where it adds a max-pool), 224 for one ImageNet ResNet and smaller multiples of
32 for the others (their AvgPool(7) head becomes AvgPool(size / 32): still the global pool),
and 64 (VGG: 48, as 64 would add the 64x64-only pool) for the CUB models, whose head pools
cover the final map at any size (torch_models.create_cub scales SDD's windows).
"""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="needs torch: the oracle is a PyTorch model")

import kd_jax.convert as kc  # noqa: E402
import torch_models  # noqa: E402  (tests/torch_models.py)
from kd_jax.models import layers  # noqa: E402

TOL = torch_models.PARITY_TOL



@pytest.fixture(autouse=True, params=["xla", "im2col"])
def cpu_conv(request):
    """Every parity test on both CPU convolution formulations (kd_jax.models.layers)."""
    with layers.cpu_conv(request.param):
        yield request.param


# (kd_jax name, input size, num_classes) checked in eval mode: every family, and within a
# family the variants whose code paths differ (projection at stride 1, Bottleneck, ...).
EVAL = [
    ("resnet8", 32, 100), ("resnet8x4", 32, 100),              # CIFAR ResNet (downsample.*)
    ("ResNet18", 32, 100), ("ResNet50", 32, 100),              # CIFAR ResNet18/50 (shortcut.*)
    ("wrn_16_2", 32, 100),
    ("vgg8", 32, 100), ("vgg8", 64, 100),
    ("ShuffleV1", 32, 100), ("ShuffleV2", 32, 100), ("MobileNetV2", 32, 100),
    ("imagenet_ResNet18", 224, 1000), ("imagenet_ResNet50", 64, 1000),
    ("imagenet_MobileNetV1", 64, 1000),
    ("cub_resnet8x4", 64, 200), ("cub_resnet32x4", 64, 200), ("cub_ResNet50", 64, 200),
    ("cub_ShuffleV1", 64, 200), ("cub_ShuffleV2", 64, 200), ("cub_MobileNetV2", 64, 200),
    ("cub_vgg8", 48, 200), ("cub_vgg13", 48, 200),
]
# One model per family in train mode.
TRAIN = [
    ("resnet8", 32, 100), ("ResNet18", 32, 100), ("wrn_16_2", 32, 100), ("vgg8", 32, 100),
    ("ShuffleV1", 32, 100), ("ShuffleV2", 32, 100), ("MobileNetV2", 32, 100),
    ("imagenet_ResNet18", 64, 1000), ("imagenet_MobileNetV1", 64, 1000),
    ("cub_resnet8x4", 64, 200), ("cub_MobileNetV2", 64, 200),
]


def _id(case) -> str:
    return f"{case[0]}-{case[1]}"


nhwc, assert_close, forward = torch_models.nhwc, torch_models.assert_close, torch_models.forward


def build_pair(name: str, size: int, num_classes: int, seed: int = 1):
    """(random torch model in eval mode, its conversion, input batch NCHW)."""
    tmodel = torch_models.randomize_(torch_models.create(name, num_classes, image_size=size),
                                     seed=seed)
    model = kc.torch_to_flax(tmodel.state_dict(), name, num_classes)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    return tmodel, model, x


def compare_outputs(name: str, out, features, logits, feats):
    assert_close(out, logits.numpy(), f"{name} logits")
    assert_close(features["pooled"], feats["pooled_feat"].numpy(), f"{name} pooled")
    assert len(features["stages"]) == len(feats["feats"])
    for i, (a, b) in enumerate(zip(features["stages"], feats["feats"])):
        assert_close(a, nhwc(b), f"{name} stage {i}")
    if "preact_feats" not in feats:
        assert features["preact_stages"] is None
        return
    assert len(features["preact_stages"]) == len(feats["preact_feats"])
    for i, (a, b) in enumerate(zip(features["preact_stages"], feats["preact_feats"])):
        assert_close(a, nhwc(b), f"{name} preact stage {i}")


@pytest.mark.parametrize("name,size,num_classes", EVAL, ids=[_id(c) for c in EVAL])
def test_eval_parity(name, size, num_classes):
    tmodel, model, x = build_pair(name, size, num_classes)
    with torch.no_grad():
        logits, feats = tmodel(x)
    out, features = forward(model, jnp.asarray(nhwc(x)))
    compare_outputs(name, out, features, logits, feats)


def assert_close_to_float64(actual, torch32: np.ndarray, torch64: np.ndarray, what: str):
    """Train mode: kd_jax (fp32) is as close to the float64 torch result as torch fp32 is.

    Normalising with batch statistics of a batch of 2 is ill-conditioned (the same fp32
    rounding grows through every BatchNorm), so fp32 PyTorch itself drifts from its float64
    self by more than 1e-5 on the deeper models. Bound: |flax - torch64| <= 1e-5 * max(1,
    max|torch64|) + 2 * max|torch32 - torch64|. A real difference (biased variance, wrong
    momentum, a missing second BN call) is orders of magnitude larger.
    """
    actual = np.asarray(actual, np.float64)
    assert actual.shape == torch64.shape, f"{what}: shape {actual.shape} != {torch64.shape}"
    torch_err = float(np.abs(torch32 - torch64).max())
    bound = TOL * max(1.0, float(np.abs(torch64).max())) + 2 * torch_err
    err = float(np.abs(actual - torch64).max())
    assert err <= bound, f"{what}: max |flax - torch64| {err:.3g} > {bound:.3g} " \
                         f"(torch fp32 vs fp64: {torch_err:.3g})"


def _pairs(feats) -> dict[str, np.ndarray]:
    """name -> value of a torch feats dict (maps in NHWC)."""
    out = {"pooled": feats["pooled_feat"].numpy()}
    for i, f in enumerate(feats["feats"]):
        out[f"stage {i}"] = nhwc(f)
    for i, f in enumerate(feats.get("preact_feats", [])):
        out[f"preact stage {i}"] = nhwc(f)
    return out


@pytest.mark.parametrize("name,size,num_classes", TRAIN, ids=[_id(c) for c in TRAIN])
def test_train_parity_and_running_stats(name, size, num_classes):
    tmodel, model, x = build_pair(name, size, num_classes, seed=3)
    t64 = copy.deepcopy(tmodel).double()
    before = {k: v.numpy().copy() for k, v in tmodel.state_dict().items()}
    tmodel.train()
    t64.train()
    with torch.no_grad():
        logits32, feats32 = tmodel(x)
        logits64, feats64 = t64(x.double())
    model.train()
    out, features = forward(model, jnp.asarray(nhwc(x)))  # updates the BatchStats in place

    assert (features["preact_stages"] is None) == ("preact_feats" not in feats32)
    ours = {"pooled": features["pooled"]}
    ours.update({f"stage {i}": f for i, f in enumerate(features["stages"])})
    ours.update({f"preact stage {i}": f for i, f in enumerate(features["preact_stages"] or [])})
    ref32, ref64 = _pairs(feats32), _pairs(feats64)
    assert set(ours) == set(ref64)
    assert_close_to_float64(out, logits32.numpy(), logits64.numpy(), f"{name} logits")
    for what in ref64:
        assert_close_to_float64(ours[what], ref32[what], ref64[what], f"{name} {what}")

    updated32, updated64 = tmodel.state_dict(), t64.state_dict()
    keys = kc.torch_keys(model)
    checked = set()
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
        key = keys[tuple(path)]
        expected = updated64[key].numpy()
        # A statistic the forward did not move would make the comparison void.
        assert not np.array_equal(updated32[key].numpy(), before[key]), f"{key} did not change"
        assert_close_to_float64(var[...], updated32[key].numpy(), expected,
                                f"{name} {key} after one train forward")
        checked.add(key)
    assert checked == {k for k in updated32 if k.endswith(("running_mean", "running_var"))}
