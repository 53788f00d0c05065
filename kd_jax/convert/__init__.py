"""PyTorch teachers -> Flax models of kd_jax.models.

    from kd_jax import convert
    model = convert.torch_to_flax(state_dict, "resnet32x4", num_classes=100)
    model = convert.load_torch_checkpoint("ckpt_epoch_240.pth", "resnet32x4", num_classes=100)
    model = convert.load_teacher(path, "resnet32x4", 100)  # a .pth file or a converted directory

Command line (writes an orbax checkpoint and teacher.json):

    python -m kd_jax.convert --arch resnet32x4 --num-classes 100 ckpt_epoch_240.pth out_dir/

.pth files are read without PyTorch (kd_jax.convert.pth: the policy of
torch.load(weights_only=True), tensors as numpy arrays); a file naming other globals needs
allow_pickle=True / --allow-pickle and PyTorch (kd_jax.convert.torch_files).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax.numpy as jnp
from flax import nnx

from kd_jax.convert.converted import (is_converted_dir, load_converted, read_meta,
                                      save_converted)
from kd_jax.convert.torch_files import TorchCheckpoint, extract_state_dict, read_checkpoint
from kd_jax.convert.mapping import ConversionError, torch_key, torch_keys, torch_to_flax

_log = logging.getLogger(__name__)


def load_torch_checkpoint(path: str, arch: str, num_classes: int, allow_pickle: bool = False,
                          dtype: Any = jnp.float32) -> nnx.Module:
    """The Flax model `arch` filled from a PyTorch checkpoint file, in eval mode.

    Reads any supported format (kd_jax.convert.torch_files); what was stripped or ignored (e.g.
    the teacher of a distiller checkpoint) is logged as a warning.
    """
    ckpt = read_checkpoint(path, allow_pickle=allow_pickle)
    for note in ckpt.notes:
        _log.warning("%s: %s", path, note)
    return torch_to_flax(ckpt.state_dict, arch, num_classes, dtype=dtype)


def load_teacher(path: str, arch: str, num_classes: int, allow_pickle: bool = False,
                 dtype: Any = jnp.float32) -> nnx.Module:
    """A teacher in eval mode, from a .pth file or a directory written by kd_jax.convert.

    A directory's recorded arch and num_classes must equal the requested ones.
    """
    if os.path.isdir(path):
        if not is_converted_dir(path):
            raise ConversionError(f"{path} is a directory without teacher.json, not a converted "
                                  "teacher (write one with `python -m kd_jax.convert`)")
        return load_converted(path, arch=arch, num_classes=num_classes, dtype=dtype)
    if not os.path.exists(path):
        raise FileNotFoundError(f"teacher checkpoint {path} does not exist")
    return load_torch_checkpoint(path, arch, num_classes, allow_pickle=allow_pickle, dtype=dtype)


__all__ = ["ConversionError", "TorchCheckpoint", "extract_state_dict", "is_converted_dir",
           "load_converted", "load_teacher", "load_torch_checkpoint", "read_checkpoint",
           "read_meta", "save_converted", "torch_key", "torch_keys", "torch_to_flax"]
