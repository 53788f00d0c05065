"""One small strategy per distillation method: config -> a pure `compute_loss`.

    loss, terms = method.compute_loss(student_out, teacher_out, labels, epoch,
                                      student_head, teacher_head, extra)

student_out / teacher_out are the model outputs `(logits (B, K), features dict)`; the
teacher's are already under stop_gradient (the step does it, so no method can forget).
`*_head` = (kernel (C, K), bias (K,)) of the model's final linear layer (SDD's local logits).
`epoch` is an int32 scalar array (from 1), so warmup factors change per epoch without a
recompile. `extra` holds the method's own trainable parameters (None for every method here;
a method such as MSDCRD sets `init_extra` and the trainer optimises them with the student).
Hyperparameters are validated when the strategy is built, before any compile.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax

from kd_jax import losses
from kd_jax.losses import objectives
from kd_jax.train import recipes

ComputeLoss = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    needs_teacher: bool
    compute_loss: ComputeLoss
    # (rng, student module, num_classes) -> pytree of extra trainable params.
    init_extra: Optional[Callable[..., Any]] = None


def parse_scales(scales) -> tuple[int, ...]:
    """method.scales ('[1,2]' as in the reference CLI, or a tuple) -> (1, 2); errors name the key."""
    try:
        return losses.parse_scales(scales)
    except ValueError as e:
        raise ValueError(f"method.scales: {e}") from None


def _ce(student_out, teacher_out, labels, epoch, student_head, teacher_head, extra):
    loss = losses.ce_loss(student_out[0], labels)
    return loss, {"ce": loss}


def _kd(m, student_out, teacher_out, labels, epoch, student_head, teacher_head, extra):
    return objectives.kd_objective(student_out[0], teacher_out[0], labels,
                                   temperature=m.temperature, ce_weight=m.ce_weight,
                                   kd_weight=m.kd_weight)


def _dkd(m, student_out, teacher_out, labels, epoch, student_head, teacher_head, extra):
    return objectives.dkd_objective(student_out[0], teacher_out[0], labels, epoch,
                                    alpha=m.alpha, beta=m.beta, temperature=m.temperature,
                                    ce_weight=m.ce_weight, warmup_epochs=m.warmup_epochs)


def _nkd(m, student_out, teacher_out, labels, epoch, student_head, teacher_head, extra):
    return objectives.nkd_objective(student_out[0], teacher_out[0], labels, epoch,
                                    gamma=m.gamma, temperature=m.temperature,
                                    ce_weight=m.ce_weight, warmup_epochs=m.warmup_epochs)


def _sdd(m, scales, ce_weight, kd_weight, student_out, teacher_out, labels, epoch,
         student_head, teacher_head, extra):
    # Each model's own classifier (kernel and bias) on its multi-scale pooled pre-pool map.
    student_local = losses.local_logits(student_out[1]["pre_pool"], *student_head, scales)
    teacher_local = losses.local_logits(teacher_out[1]["pre_pool"], *teacher_head, scales)
    return objectives.sd_objective(
        student_out[0], student_local, teacher_local, labels, epoch, base=m.base,
        temperature=m.temperature, alpha=m.alpha, beta=m.beta, gamma=m.gamma,
        ce_weight=ce_weight, kd_weight=kd_weight, warmup_epochs=m.warmup_epochs,
        complementary_weight=m.complementary_weight)


def _clkd(m, student_out, teacher_out, labels, epoch, student_head, teacher_head, extra):
    return objectives.clkd_objective(
        student_out[0], teacher_out[0], labels, ce_weight=m.ce_weight,
        instance_weight=m.instance_weight, class_weight_beta=m.class_weight_beta,
        correlation_weight=m.correlation_weight, correlation=m.correlation)


def _frozen(method_config):
    """A hashable, attribute-access copy of the method block (closures must not see edits)."""
    d = method_config.to_dict()
    return type("MethodHParams", (), d)


def get_method(config) -> Method:
    """The strategy for config.method.name (ce | kd | dkd | nkd | sdd | clkd)."""
    m = _frozen(config.method)
    name = config.method.name
    if name == "ce":
        return Method("ce", False, _ce)
    if name == "kd":
        return Method("kd", True, functools.partial(_kd, m))
    if name == "dkd":
        return Method("dkd", True, functools.partial(_dkd, m))
    if name == "nkd":
        return Method("nkd", True, functools.partial(_nkd, m))
    if name == "sdd":
        if m.base not in ("kd", "dkd", "nkd"):
            raise ValueError(f"method.base={m.base!r}; allowed: kd, dkd, nkd")
        ce_w, kd_w = recipes.sdd_weights(m.base, config.dataset.name)
        ce_w = ce_w if m.ce_weight is None else m.ce_weight
        kd_w = kd_w if m.kd_weight is None else m.kd_weight
        return Method("sdd", True,
                      functools.partial(_sdd, m, parse_scales(m.scales), ce_w, kd_w))
    if name == "clkd":
        if m.correlation not in ("batch", "class"):
            raise ValueError(f"method.correlation={m.correlation!r}; allowed: batch, class")
        return Method("clkd", True, functools.partial(_clkd, m))
    raise ValueError(f"method.name={name!r}; allowed: {', '.join(recipes.METHODS)}")
