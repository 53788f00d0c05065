"""MSDCRD (contrastive representation distillation via multi-scale feature decoupling,
Wang et al., arXiv 2502.05835), a reimplementation of the idea the abstract describes:

    loss = ce_weight * CE + contrastive_weight * (L_sample + L_feature) [+ kd_weight * KD(T)]

No paper text or code was available: every choice of the reconstruction is a
hyperparameter here, so that the config a run prints is the objective it trains
(kd_jax.losses.msdcrd documents the terms). The pre-pool maps of student and teacher
(features["pre_pool"], the tensors SDD pools) are pooled to their common grid, decoupled by
stride-1 sliding windows of each size in `windows`, embedded, and contrasted sample-wise
(InfoNCE over the batch's local samples, complementary samples weighted
`complementary_weight`) and feature-wise (the transposed view), at temperature `tau`.

Embedding: "logits" (the default, parameter-free as the abstract claims): each network's
own final linear layer, so both sides live in the K-class space whatever their widths;
"projection": CRD-style trainable linear heads C_s -> projection_dim and C_t ->
projection_dim (PyTorch nn.Linear default init), kept in the train state beside the student
(`init_extra`: {"student": (kernel, bias), "teacher": (kernel, bias)}), optimised with it,
checkpointed, and not exported. In both modes the teacher's own classifier decides which
local samples are complementary.

`windows` is (1, 2, 4) clipped to the common (smaller) pre-pool map of the pair on 32x32
inputs: (1, 2, 4) for every CIFAR pair (8x8 and 4x4 maps, e.g. resnet32x4 8x8 with ShuffleV1
4x4) but those with MobileNetV2 (2x2): (1, 2). The recipe states it as data (`WINDOWS`,
`SMALL_MAP_WINDOWS`); `check_models` checks the windows against the traced models when the
config is validated. chunk_size > 0 streams the sample-wise S x S similarity in chunks (0:
build it whole); both give the same loss. The solver is KD's: the pair's lr from
kd_jax.reference.table, CIFAR-100 pairs only.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import jax

from kd_jax import losses, models
from kd_jax.data import catalog
from kd_jax.methods.base import (HeadShapes, MethodSpec, Recipe, check_choice, check_int,
                                 check_keys, check_number)
from kd_jax.methods.registry import register
from kd_jax.models import layers
from kd_jax.reference import table

EMBEDDINGS = ("logits", "projection")
KEYS = ("windows", "tau", "complementary_weight", "ce_weight", "contrastive_weight",
        "kd_weight", "temperature", "embedding", "projection_dim", "chunk_size")
DATASETS = (catalog.CIFAR100,)
# The windows of a pair: WINDOWS, or those that fit the student's pre-pool map on 32x32 inputs
# where it is smaller than 4x4 (MobileNetV2: 2x2; every teacher's and the other students' maps
# are 8x8 or 4x4). check_models verifies them against the traced models.
WINDOWS = (1, 2, 4)
SMALL_MAP_WINDOWS = {"MobileNetV2": (1, 2)}


def hparams(recipe: Recipe) -> dict:
    if recipe.dataset not in DATASETS:
        raise ValueError(f"MSDCRD has a recipe on {', '.join(DATASETS)} only, not "
                         f"{recipe.dataset}")
    table.pair(recipe.dataset, recipe.teacher, recipe.student)  # a pair of the table
    windows = SMALL_MAP_WINDOWS.get(recipe.student, WINDOWS)
    return dict(windows=windows, tau=0.07, complementary_weight=2.0, ce_weight=1.0,
                contrastive_weight=0.8, kd_weight=0.0, temperature=4.0, embedding="logits",
                projection_dim=128, chunk_size=0)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def parse_windows(value: Any) -> tuple[int, ...]:
    """method.windows: a non-empty tuple/list of distinct positive ints -> tuple."""
    ok = (isinstance(value, (tuple, list)) and len(value) > 0
          and all(_is_int(w) and w >= 1 for w in value) and len(set(value)) == len(value))
    if not ok:
        raise ValueError(f"method.windows={value!r}: expected a non-empty tuple of distinct "
                         "positive ints, e.g. (1, 2, 4)")
    return tuple(int(w) for w in value)


def _check_windows_fit(windows: tuple[int, ...], student_hw: tuple[int, int],
                       teacher_hw: tuple[int, int]) -> None:
    """A clear error naming method.windows when a window exceeds the pair's common grid.
    student_hw, teacher_hw: (H, W) of the two pre-pool maps."""
    (hs, ws), (ht, wt) = student_hw, teacher_hw
    limit = min(hs, ws, ht, wt)
    if max(windows) > limit:
        fitting = tuple(w for w in windows if w <= limit) or (1,)
        raise ValueError(
            f"method.windows={windows}: the student's {hs}x{ws} and the teacher's {ht}x{wt} "
            f"pre-pool maps have a common {min(hs, ht)}x{min(ws, wt)} grid, so windows must "
            f"be <= {limit}; e.g. --config.method.windows=\"{fitting}\"")


def check_models(hp: Mapping[str, Any], student_arch: str, teacher_arch: str,
                 image_size: int) -> None:
    """method.windows against the pre-pool maps of the pair on (image_size, image_size)
    inputs (traced with eval_shape; the class count does not change the maps)."""
    windows = parse_windows(hp["windows"])
    student_hw, teacher_hw = (models.pre_pool_shape(arch, 10, image_size)[:2]
                              for arch in (student_arch, teacher_arch))
    _check_windows_fit(windows, student_hw, teacher_hw)


def check(hp: Mapping[str, Any]) -> None:
    check_keys("msdcrd", hp, KEYS)
    parse_windows(hp["windows"])
    check_number(hp, "tau", strict=True)
    check_number(hp, "temperature", strict=True)
    for key in ("complementary_weight", "ce_weight", "contrastive_weight", "kd_weight"):
        check_number(hp, key)
    check_choice(hp, "embedding", EMBEDDINGS)
    check_int(hp, "projection_dim", low=1)
    check_int(hp, "chunk_size", low=0)


def build(hp: Mapping[str, Any]):
    check(hp)
    windows = parse_windows(hp["windows"])
    projection = hp["embedding"] == "projection"
    kwargs = dict(windows=windows, tau=hp["tau"],
                  complementary_weight=hp["complementary_weight"],
                  chunk_size=hp["chunk_size"] or None, ce_weight=hp["ce_weight"],
                  contrastive_weight=hp["contrastive_weight"], kd_weight=hp["kd_weight"],
                  temperature=hp["temperature"], teacher_head_trainable=projection)

    def compute_loss(student, teacher, labels, epoch, extra):
        del epoch  # no warmup
        s_map, t_map = student.features["pre_pool"], teacher.features["pre_pool"]
        _check_windows_fit(windows, s_map.shape[1:3], t_map.shape[1:3])
        if projection:
            if extra is None:
                raise ValueError("method.embedding='projection' needs the projection heads "
                                 "of init_extra in the train state (extra is None)")
            s_head, t_head = tuple(extra["student"]), tuple(extra["teacher"])
        else:
            s_head, t_head = student.head, teacher.head
        return losses.msdcrd_objective(
            student.logits, teacher.logits, labels, s_map, t_map, s_head, t_head,
            teacher_local_classifier=teacher.head, **kwargs)

    return compute_loss


def init_projection_head(rng: jax.Array, in_features: int, out_features: int):
    """(kernel (in, out), bias (out,)) with PyTorch's nn.Linear default init:
    U(-1/sqrt(in), 1/sqrt(in)) for both."""
    k_kernel, k_bias = jax.random.split(rng)
    kernel = layers.torch_default_kernel_init(k_kernel, (in_features, out_features))
    bias = layers.torch_default_bias_init(in_features)(k_bias, (out_features,))
    return kernel, bias


def init_extra(rng: jax.Array, shapes: HeadShapes, hp: Mapping[str, Any]):
    """The projection heads (embedding="projection"), else None. The pre-pool maps have the
    channels of the final linear layers' inputs, so C_s, C_t are the head kernels' rows."""
    if hp["embedding"] != "projection":
        return None
    if shapes.teacher is None:
        raise ValueError("method.embedding='projection' needs the teacher's head shape")
    k_student, k_teacher = jax.random.split(rng)
    dim = hp["projection_dim"]
    return {"student": init_projection_head(k_student, shapes.student[0], dim),
            "teacher": init_projection_head(k_teacher, shapes.teacher[0], dim)}


SPEC = register(MethodSpec(name="msdcrd", needs_teacher=True, hparams=hparams, check=check,
                           build=build, init_extra=init_extra, check_models=check_models))
