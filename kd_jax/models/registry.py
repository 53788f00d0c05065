"""Name -> constructor registry of the model zoo."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}
_NON_REFERENCE: set[str] = set()


def register(name: str, *, reference: bool = True):
    """Decorator: `@register("resnet8")` on a function (num_classes, dtype, rngs) -> Module.

    reference=False marks a model that is not a port of a reference architecture (e.g. the
    tiny test networks of kd_jax.testing); `names(reference_only=True)` leaves it out.
    """

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        if not reference:
            _NON_REFERENCE.add(name)
        return fn

    return wrap


def names(reference_only: bool = False) -> list[str]:
    """Registered model names, sorted (only the reference ports if reference_only)."""
    return sorted(n for n in _REGISTRY if not (reference_only and n in _NON_REFERENCE))


def create(name: str, num_classes: int = 100, dtype: Any = jnp.float32,
           rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Builds the model `name` with `num_classes` outputs.

    dtype is the compute dtype (parameters stay float32). rngs defaults to nnx.Rngs(0).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if rngs is None:
        rngs = nnx.Rngs(0)
    return _REGISTRY[name](num_classes=num_classes, dtype=dtype, rngs=rngs)
