"""PyTorch state_dict -> Flax NNX model of kd_jax.models, by attribute path.

The Flax models mirror the PyTorch module tree (kd_jax.models), so the mapping is generic:
every leaf of `nnx.state(model)` at path (..., name) corresponds to the torch key
".".join(path) with the leaf renamed (`torch_key`). Layouts change by leaf kind and rank:

  conv kernel   (kh, kw, in/groups, out)  <- weight (out, in/groups, kh, kw), transpose (2, 3, 1, 0)
  linear kernel (in, out)                  <- weight (out, in), transpose
  BN scale / bias / mean / var             <- weight / bias / running_mean / running_var
  conv / linear bias                       <- bias

`num_batches_tracked` has no Flax counterpart: it is consumed (dropped) with its BatchNorm, and
written as 0 by `flax_to_torch`, the inverse mapping (kd_jax.export).
torch need not be installed for this module: values may be numpy arrays (kd_jax.convert.pth
reads .pth files into them) or anything with `.numpy()` (torch tensors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kd_jax.models

Path = tuple[Any, ...]

# Flax leaf name -> torch state_dict suffix.
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}
_MAX_LISTED = 40  # keys shown per list in a mismatch error


class ConversionError(ValueError):
    """A checkpoint that does not fit the requested architecture, or cannot be read safely."""


def torch_key(path: Path) -> str:
    """The torch state_dict key of the Flax leaf at `path`, e.g. ('layer1', 0, 'bn1', 'mean')."""
    *prefix, leaf = (str(p) for p in path)
    if leaf not in _LEAF_TO_TORCH:
        raise ConversionError(f"Flax leaf {'.'.join(map(str, path))!r} has no PyTorch counterpart "
                              f"(known leaf names: {sorted(_LEAF_TO_TORCH)})")
    return ".".join([*prefix, _LEAF_TO_TORCH[leaf]])


def _leaves(model: nnx.Module) -> dict[Path, nnx.Variable]:
    """Path -> Variable for every Param and BatchStat (the state a converter fills)."""
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return {tuple(path): var for path, var in nnx.to_flat_state(state)}


def torch_keys(model: nnx.Module) -> dict[Path, str]:
    """Flax leaf path -> torch key for every Param and BatchStat of `model` (may be abstract)."""
    return {path: torch_key(path) for path in _leaves(model)}


def to_flax_layout(value: np.ndarray, path: Path) -> np.ndarray:
    """A torch tensor's value in the layout of the Flax leaf at `path`."""
    if str(path[-1]) != "kernel":
        return value
    if value.ndim == 4:  # OIHW -> HWIO; grouped convs keep in/groups on axis 2, as Flax expects
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:  # (out, in) -> (in, out)
        return value.T
    raise ConversionError(f"{torch_key(path)}: expected a 2-d or 4-d weight, got {value.shape}")


def to_torch_layout(value: np.ndarray, path: Path) -> np.ndarray:
    """A Flax leaf's value in the layout of its torch tensor (to_flax_layout^-1)."""
    if str(path[-1]) != "kernel":
        return value
    if value.ndim == 4:  # HWIO -> OIHW
        return np.transpose(value, (3, 2, 0, 1))
    if value.ndim == 2:  # (in, out) -> (out, in)
        return value.T
    raise ConversionError(f"{torch_key(path)}: expected a 2-d or 4-d kernel, got {value.shape}")


def flax_to_torch(model: nnx.Module) -> dict[str, np.ndarray]:
    """The reference model's state_dict (numpy values) of a kd_jax.models model: torch_to_flax^-1.

    Keys and shapes are the reference's (`torch_key`, `torch_shape`), each BatchNorm with its
    `num_batches_tracked` (int64 0: kd_jax does not count batches, and the reference BNs use a
    fixed momentum, so the counter changes nothing). Values are float32 copies.
    """
    out: dict[str, np.ndarray] = {}
    for path, var in _leaves(model).items():
        value = np.array(var.get_value(), dtype=np.float32, copy=True)
        key = torch_key(path)
        out[key] = np.ascontiguousarray(to_torch_layout(value, path))
        if key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


def torch_shape(path: Path, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of the Flax leaf at `path` of shape `flax_shape` (to_flax_layout^-1)."""
    if str(path[-1]) == "kernel" and len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if str(path[-1]) == "kernel" and len(flax_shape) == 2:
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def _as_numpy(value: Any) -> np.ndarray:
    """A tensor's value as a numpy array of its own. Floating point reaches the model as float32
    either way: torch tensors through `.float()` here, numpy arrays (kd_jax.convert.pth keeps
    the stored dtype, bfloat16 as ml_dtypes) through fill_model's cast, both exact for fp16/bf16."""
    if hasattr(value, "detach"):  # a torch.Tensor; fp16/bf16 go through fp32 (numpy has no bf16)
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    # Copy: on CPU, jnp arrays built from a tensor's numpy view may share its memory, so a
    # later in-place torch update (e.g. BatchNorm statistics) would change the Flax model.
    return np.array(value, copy=True)


def _listing(keys: list[str]) -> str:
    more = len(keys) - _MAX_LISTED
    return ", ".join(keys[:_MAX_LISTED]) + (f", ... ({more} more)" if more > 0 else "")


def _head_path(model: nnx.Module) -> Path | None:
    """Attribute path of `model.head` (the classifier), found by identity."""
    head = getattr(model, "head", None)
    for path, node in nnx.iter_graph(model):
        if head is not None and node is head:
            return tuple(path)
    return None


def abstract_model(arch: str, num_classes: int, dtype: Any = jnp.float32) -> nnx.Module:
    """The model with ShapeDtypeStruct leaves: the graph is built, no initialiser is run."""
    return nnx.eval_shape(lambda: kd_jax.models.create(
        arch, num_classes=num_classes, dtype=dtype, rngs=nnx.Rngs(0)))


def fill_model(abstract: nnx.Module, values: Mapping[Path, np.ndarray]) -> nnx.Module:
    """The abstract model's graph merged with concrete Param/BatchStat values given by path."""
    graphdef, filled, rest = nnx.split(abstract, (nnx.Param, nnx.BatchStat), ...)
    if jax.tree.leaves(rest):
        other = sorted(".".join(map(str, p)) for p, _ in nnx.to_flat_state(rest))
        raise ConversionError(f"the model holds state other than Param/BatchStat ({other}); "
                              "the converter cannot fill it")
    for path, var in nnx.to_flat_state(filled):
        var.set_value(jnp.asarray(values[tuple(path)], dtype=var.dtype))
    return nnx.merge(graphdef, filled, rest)


def torch_to_flax(state_dict: Mapping[str, Any], arch: str, num_classes: int,
                  dtype: Any = jnp.float32) -> nnx.Module:
    """The kd_jax.models model `arch` with every parameter and BN statistic from `state_dict`.

    `state_dict`: torch key -> tensor/array with the reference model's keys (wrapper prefixes
    such as "module.student." are stripped by `kd_jax.convert.extract_state_dict`). `dtype` is
    the compute dtype (parameters stay float32). Every key must be used and every Flax leaf
    filled, else ConversionError lists the missing and unexpected keys; a shape mismatch names
    the key and both shapes. The model is built abstractly (no init) and returned in eval mode.
    """
    abstract = abstract_model(arch, num_classes, dtype)
    leaves = _leaves(abstract)
    keys = {path: torch_key(path) for path in leaves}

    wanted = set(keys.values())
    bn_prefixes = {k[: -len("running_mean")] for k in wanted if k.endswith(".running_mean")}
    missing = sorted(wanted - set(state_dict))
    unexpected = sorted(k for k in state_dict if k not in wanted and not (
        k.endswith(".num_batches_tracked") and k[: -len("num_batches_tracked")] in bn_prefixes))
    if missing or unexpected:
        raise ConversionError(
            f"state_dict does not match {arch!r} (num_classes={num_classes}):\n"
            f"  missing keys ({len(missing)}): {_listing(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")

    head = _head_path(abstract)
    if head is not None:  # the most common mismatch gets its own message
        head_key = torch_key(head + ("kernel",))
        found = tuple(np.shape(state_dict[head_key]))
        if len(found) == 2 and found[0] != num_classes:
            raise ConversionError(
                f"checkpoint {head_key} has {found[0]} classes but num_classes={num_classes}")

    values = {}
    for path, var in leaves.items():
        key = keys[path]
        value = _as_numpy(state_dict[key])
        expected = torch_shape(path, tuple(var.shape))
        if value.shape != expected:
            raise ConversionError(f"shape mismatch for {key}: checkpoint has {value.shape}, "
                                  f"{arch} (num_classes={num_classes}) expects {expected}")
        values[path] = to_flax_layout(value, path)
    model = fill_model(abstract, values)
    model.eval()
    return model
