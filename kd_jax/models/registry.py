"""Name -> constructor registry of the model zoo."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}


def register(name: str):
    """Decorator: `@register("resnet8")` on a function (num_classes, dtype, rngs) -> Module."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


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
