"""Name -> constructor registry of the model zoo."""

from __future__ import annotations

import importlib.util
import os
import sys
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


_MODEL_FILES: dict[str, Any] = {}   # real path -> the module a user's model file became


def import_model_file(path: str) -> Any:
    """Runs a user's Python file that registers models (`@kd_jax.models.register("my_net")`
    on a function (num_classes, dtype, rngs) -> nnx.Module), once per process per file;
    returns its module. OSError if it does not exist, ValueError if it is not a .py file."""
    real = os.path.realpath(os.path.expanduser(path))
    if real in _MODEL_FILES:
        return _MODEL_FILES[real]
    if not os.path.isfile(real):
        raise FileNotFoundError(f"no such file {path!r} (expected a Python file registering "
                                "models with kd_jax.models.register)")
    if not real.endswith(".py"):
        raise ValueError("expected a Python file (*.py) registering models")
    name = "kd_jax_model_file_" + str(len(_MODEL_FILES))
    spec = importlib.util.spec_from_file_location(name, real)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)   # an error inside the file is the user's: keep its trace
    _MODEL_FILES[real] = module
    return module


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
