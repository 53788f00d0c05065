"""Reading PyTorch checkpoint files: safe loading and the state_dict inside.

Formats seen in the reference code bases:
  * RepDistiller / mdistiller teachers `<name>_vanilla/ckpt_epoch_240.pth`: a dict with
    "model" (the state_dict), "epoch", "accuracy" or "best_acc", "optimizer";
  * distiller checkpoints: keys "module.student.*", "module.teacher.*", plus distiller modules;
  * plain state_dicts (torchvision ImageNet ResNets), possibly with a DataParallel "module." prefix.

Files are read by kd_jax.convert.pth, without PyTorch: the zip, legacy-stream and tar layouts
of torch.save, tensors as numpy arrays, under the pickle policy of
`torch.load(weights_only=True)` plus numpy scalars/arrays and argparse.Namespace (data only).
PyTorch is used in two cases only, and must then be installed: a file holding a construct that
reader does not rebuild (sparse, quantized or nested tensors, tensor subclasses) is read with
`torch.load(weights_only=True)`, the same policy; and a file naming other globals needs
`allow_pickle=True` (CLI `--allow-pickle`), which executes it as a pickle
(`torch.load(weights_only=False)`): this can run arbitrary code, so only for files you trust.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import warnings
from collections.abc import Mapping
from typing import Any

from kd_jax.convert import pth
from kd_jax.convert.mapping import ConversionError

_STATE_DICT_ENTRIES = ("model", "state_dict")  # where checkpoint dicts keep the state_dict
_ACCURACY_ENTRIES = ("accuracy", "best_acc")


class MissingTorchError(ImportError):
    """Reading this file needs PyTorch, which is not installed (the file is not at fault)."""


@dataclasses.dataclass
class TorchCheckpoint:
    """What a checkpoint file holds, with its state_dict already stripped of wrapper prefixes."""

    state_dict: dict[str, Any]
    source_format: str                # e.g. "checkpoint dict ('model' entry)" or "plain state_dict"
    accuracy: float | None = None     # as recorded (percent in the reference code), 4 decimals
    epoch: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)   # what was stripped or ignored


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _import_torch(why: str) -> Any:
    try:
        import torch
    except ImportError as e:  # torch is optional for the rest of kd_jax
        raise MissingTorchError(f"{why}: that needs PyTorch (pip install torch; the CPU build "
                                "is enough)") from e
    return torch


def _torch_weights_only(path: str, why: str) -> Any:
    """torch.load(weights_only=True), numpy scalars/arrays/dtypes and argparse.Namespace allowed
    (the policy of kd_jax.convert.pth)."""
    torch = _import_torch(why)
    import numpy as np

    multiarray = np._core.multiarray
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32,
                                          np.int64, np.bool_)]
    allowed = [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes,
               argparse.Namespace, (multiarray.scalar, "numpy.core.multiarray.scalar"),
               (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch refuses it too
        raise pth.PthError(f"{why}; torch.load(weights_only=True) fails too ({type(e).__name__}:"
                           f" {' '.join(str(e).split())[:200]})") from None


def load_torch_file(path: str, allow_pickle: bool = False) -> Any:
    """The object in the .pth file `path` (tensors as numpy arrays), under the policy of the
    module docstring. ConversionError (pth.PthError) if it is unreadable or refused;
    MissingTorchError where the file needs PyTorch and it is absent."""
    try:
        return pth.load(path)
    except pth.UnsafePickleError as e:
        if not allow_pickle:
            raise pth.UnsafePickleError(
                f"{path}: {e}. Loading it means executing it as a pickle, which can run "
                "arbitrary code. If you trust the file, pass allow_pickle=True (command line: "
                "--allow-pickle; it needs PyTorch).") from None
        torch = _import_torch(f"{path}: --allow-pickle loads it with torch.load")
        warnings.warn(f"{path}: loading with torch.load(weights_only=False) because "
                      f"allow_pickle=True: the file is executed as a pickle ({e})", stacklevel=2)
        return torch.load(path, map_location="cpu", weights_only=False)
    except pth.UnsupportedPthError as e:
        why = f"{path}: {e}"
        obj = _torch_weights_only(path, why)
        warnings.warn(f"{why}; read it with torch.load(weights_only=True)", stacklevel=2)
        return obj
    except pth.PthError as e:
        raise pth.PthError(f"{path}: {e}; expected a .pth file written by torch.save") from None


def _is_tensor_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _strip_wrappers(state_dict: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """Removes DataParallel's "module." and keeps only the student of a distiller checkpoint."""
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
        notes.append("stripped the 'module.' prefix (DataParallel)")
    if any(k.startswith("student.") for k in sd):
        others = sorted({k.split(".", 1)[0] for k in sd if not k.startswith("student.")})
        sd = {k[len("student."):]: v for k, v in sd.items() if k.startswith("student.")}
        note = f"distiller checkpoint: took the {len(sd)} 'student.' entries"
        if others:
            note += f" and ignored the other modules ({', '.join(others)})"
        notes.append(note)
    return sd


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def extract_state_dict(obj: Any) -> TorchCheckpoint:
    """The state_dict and metadata of a loaded checkpoint object (any of the formats above)."""
    notes: list[str] = []
    if hasattr(obj, "state_dict") and callable(obj.state_dict):  # a pickled nn.Module
        return TorchCheckpoint(_strip_wrappers(obj.state_dict(), notes), "pickled nn.Module",
                               notes=notes)
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"expected a state_dict or a checkpoint dict, got {type(obj).__name__}")
    for entry in _STATE_DICT_ENTRIES:
        if isinstance(obj.get(entry), Mapping):
            accuracy = next((obj[k] for k in _ACCURACY_ENTRIES if obj.get(k) is not None), None)
            epoch = obj.get("epoch")
            return TorchCheckpoint(
                _strip_wrappers(obj[entry], notes), f"checkpoint dict ({entry!r} entry)",
                accuracy=None if accuracy is None else round(float(_scalar(accuracy)), 4),
                epoch=None if epoch is None else int(_scalar(epoch)), notes=notes)
    if obj and all(_is_tensor_like(v) for v in obj.values()):
        return TorchCheckpoint(_strip_wrappers(obj, notes), "plain state_dict", notes=notes)
    raise ConversionError(
        "found no state_dict: expected a dict of tensors or a dict with a "
        f"{' or '.join(map(repr, _STATE_DICT_ENTRIES))} entry; "
        f"top-level keys: {sorted(map(str, obj))[:20]}")


def read_checkpoint(path: str, allow_pickle: bool = False) -> TorchCheckpoint:
    """load_torch_file + extract_state_dict."""
    return extract_state_dict(load_torch_file(path, allow_pickle=allow_pickle))
