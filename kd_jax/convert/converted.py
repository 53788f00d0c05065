"""Converted teachers on disk: an orbax checkpoint of the model state plus a JSON record.

Layout of a converted directory:
  <dir>/state/        orbax StandardCheckpointer checkpoint of the nested dict
                      nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))
  <dir>/teacher.json  {"arch", "num_classes", "source", "source_sha256", "source_format",
                       "accuracy", "epoch", "notes", "parameter_count", "format_version"}
Restoring builds the model abstractly (nnx.eval_shape) and fills it, like the converter.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from kd_jax.convert.mapping import ConversionError, abstract_model

META_FILE = "teacher.json"
STATE_DIR = "state"
FORMAT_VERSION = 1


def is_converted_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def save_converted(model: nnx.Module, out_dir: str, meta: dict[str, Any],
                   overwrite: bool = False) -> str:
    """Writes `model`'s parameters and BN statistics to out_dir/state and `meta` to teacher.json.

    `meta` must hold "arch" and "num_classes". Returns the JSON path. In a multi-process run
    every process must call it (orbax saves synchronise all processes); process 0 writes.
    """
    for field in ("arch", "num_classes"):
        if field not in meta:
            raise ValueError(f"meta needs {field!r}")
    out_dir = os.path.abspath(out_dir)  # orbax wants absolute paths
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty "
                              "(pass overwrite=True / --overwrite)")
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, META_FILE)
    if jax.process_index() == 0 and os.path.exists(meta_path):
        # teacher.json is written last: its presence marks a complete directory, so an
        # overwrite cut short (killed, disk full) never leaves an old record over new state.
        os.remove(meta_path)
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(out_dir, STATE_DIR), pure, force=overwrite)
    checkpointer.wait_until_finished()  # saves are asynchronous
    n_params = sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    record = dict(meta, format_version=FORMAT_VERSION, parameter_count=int(n_params))
    if jax.process_index() == 0:
        write_meta(out_dir, record)
    return meta_path


def write_meta(path: str, record: dict[str, Any]) -> None:
    """Writes `record` as path/teacher.json, atomically: never a truncated record."""
    meta_path = os.path.join(path, META_FILE)
    with open(meta_path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(meta_path + ".tmp", meta_path)


def read_meta(path: str) -> dict[str, Any]:
    """`path`/teacher.json; ConversionError naming the file if it is not a JSON object with
    "arch" and "num_classes" (truncated or damaged)."""
    meta_path = os.path.join(path, META_FILE)
    with open(meta_path, "rb") as f:
        try:
            meta = json.loads(f.read())
        except ValueError as e:   # JSONDecodeError, UnicodeDecodeError
            raise ConversionError(f"{meta_path}: not valid JSON ({e}); the file is truncated "
                                  "or damaged") from None
    if not isinstance(meta, dict) or not all(k in meta for k in ("arch", "num_classes")):
        raise ConversionError(f"{meta_path}: expected a JSON object with \"arch\" and "
                              f"\"num_classes\", got {str(meta)[:80]}")
    return meta


def load_converted(path: str, arch: str | None = None, num_classes: int | None = None,
                   dtype: Any = jnp.float32) -> nnx.Module:
    """The model saved by save_converted, in eval mode.

    If given, arch and num_classes must equal those recorded in teacher.json (ConversionError
    otherwise), so a trainer cannot silently pick up the wrong teacher.
    """
    meta = read_meta(path)
    for field, wanted in (("arch", arch), ("num_classes", num_classes)):
        if wanted is not None and meta[field] != wanted:
            raise ConversionError(f"{path} holds a converted {meta['arch']} with num_classes="
                                  f"{meta['num_classes']}, but {field}={wanted!r} was requested")
    abstract = abstract_model(meta["arch"], int(meta["num_classes"]), dtype)
    graphdef, state, rest = nnx.split(abstract, (nnx.Param, nnx.BatchStat), ...)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    state_dir = os.path.join(os.path.abspath(path), STATE_DIR)
    restored = ocp.StandardCheckpointer().restore(state_dir, target)
    nnx.replace_by_pure_dict(state, restored)
    model = nnx.merge(graphdef, state, rest)
    model.eval()
    return model
