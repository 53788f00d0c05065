"""What a distillation method is to the trainer: a `MethodSpec`, and the records it reads.

    spec = kd_jax.methods.get("dkd")
    hp = spec.hparams(Recipe("cifar100", "resnet32x4", "resnet8x4"))   # the reference values
    spec.check(hp)                        # ValueError naming method.<key> on a bad value
    compute_loss = spec.build(hp)         # checks, then the pure loss
    loss, terms = compute_loss(student_out, teacher_out, labels, epoch, extra)

`student_out` / `teacher_out` are `ModelOutput` records; the teacher's are constants
(the train step puts them under stop_gradient, so no method can forget). `epoch` is an int32
scalar counted from 1 (warmups change per epoch without a recompile). `extra` holds the
method's own trainable parameters (None unless the spec has `init_extra`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

import jax

Terms = dict[str, jax.Array]
LossFn = Callable[..., tuple[jax.Array, Terms]]


class ModelOutput(NamedTuple):
    """One network's outputs on a batch: what a method may read."""

    logits: jax.Array                    # (B, K)
    features: Mapping[str, Any]          # the model's features record (pre_pool (B,H,W,C), ...)
    head: tuple[jax.Array, jax.Array]    # its final linear layer: kernel (C, K), bias (K,)


class Recipe(NamedTuple):
    """What a method's reference hyperparameters depend on (un-prefixed model names)."""

    dataset: str
    teacher: str          # "" for a model trained alone
    student: str
    variant: str = ""     # a method's variant, e.g. SDD's base loss 'kd' | 'dkd' | 'nkd'


class Variants(NamedTuple):
    """The flavours of a method whose recipe depends on one choice (SDD's base loss).

    The hyperparameter `param` holds the chosen one of `choices` (SDD: method.base); `default`
    is used when a config argument names none; `key_format` gives the method key of a choice
    ('sd_{}' -> 'sd_kd').
    """

    param: str
    choices: tuple[str, ...]
    default: str
    key_format: str


class HeadShapes(NamedTuple):
    """Kernel shapes (C, K) of the final linear layers, for methods with extra parameters."""

    student: tuple[int, int]
    teacher: Optional[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One distillation method.

    name: the config's method.name. needs_teacher: whether the step runs a teacher for it.
    hparams: Recipe -> the reference hyperparameters (every value the loss uses); pure data,
      nothing is traced.
    check: hyperparameters -> None; raises ValueError naming `method.<key>` on a bad, missing
      or unexpected value. Config validation calls it; it builds nothing.
    build: hyperparameters -> compute_loss; calls `check` first.
    variants: the method's flavours (None: it has none; SDD: its bases). The method key of a
      method without variants is its name, else the chosen variant's key. Keys name runs and
      published columns; the label is the key in capitals with '-' for '_' ('SD-DKD').
    init_extra: (rng, HeadShapes, hyperparameters) -> trainable parameters of the method's
      own (None: the method has none). They are optimised with the student, checkpointed,
      and not exported.
    check_models: (hyperparameters, student_arch, teacher_arch, image_size) -> None; raises
      ValueError naming `method.<key>` when a value does not fit the pair's models (None:
      nothing to check). Config validation calls it, so the mistake fails before any data
      is read or anything compiles.
    """

    name: str
    needs_teacher: bool
    hparams: Callable[[Recipe], dict]
    check: Callable[[Mapping[str, Any]], None]
    build: Callable[[Mapping[str, Any]], LossFn]
    variants: Optional[Variants] = None
    init_extra: Optional[Callable[[jax.Array, HeadShapes, Mapping[str, Any]], Any]] = None
    check_models: Optional[Callable[[Mapping[str, Any], str, str, int], None]] = None

    @property
    def variant_choices(self) -> tuple[str, ...]:
        """The values Recipe.variant may take; () for a method without variants."""
        return self.variants.choices if self.variants else ()

    def variant_key(self, variant: str) -> str:
        return self.variants.key_format.format(variant) if self.variants else self.name

    def method_key(self, hp: Mapping[str, Any]) -> str:
        return self.variant_key(hp[self.variants.param]) if self.variants else self.name

    def label(self, hp: Mapping[str, Any]) -> str:
        return label_of(self.method_key(hp))


def label_of(method_key: str) -> str:
    """'sd_dkd' -> 'SD-DKD', 'ce' -> 'CE'."""
    return method_key.upper().replace("_", "-")


def check_keys(method: str, hp: Mapping[str, Any], keys: Iterable[str], hint: str = "") -> None:
    """Raises ValueError unless `hp` has exactly `keys` (the config must hold every value)."""
    keys = set(keys)
    missing, unexpected = sorted(keys - set(hp)), sorted(set(hp) - keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"method.{k}" for k in missing))
        if unexpected:
            parts.append("unexpected " + ", ".join(f"method.{k}" for k in unexpected))
        raise ValueError(f"method {method!r}: {'; '.join(parts)}{hint}")


def check_number(hp: Mapping[str, Any], key: str, *, low: float = 0.0,
                 strict: bool = False) -> None:
    """method.<key> must be a finite real number >= low (> low if strict)."""
    v = hp[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
        v > low if strict else v >= low)
    if not ok:
        raise ValueError(f"method.{key}={v!r}: expected a finite number "
                         f"{'>' if strict else '>='} {low}")


def check_choice(hp: Mapping[str, Any], key: str, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if hp[key] not in allowed:
        raise ValueError(f"method.{key}={hp[key]!r}; allowed: "
                         + ", ".join(repr(a) if not isinstance(a, str) else a for a in allowed))


def check_int(hp: Mapping[str, Any], key: str, *, low: int = 0) -> None:
    v = hp[key]
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
        raise ValueError(f"method.{key}={v!r}: expected an integer >= {low}")
