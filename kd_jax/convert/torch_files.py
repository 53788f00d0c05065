"""Reading PyTorch checkpoint files: safe loading and the state_dict inside.

Formats seen in the reference code bases:
  * RepDistiller / mdistiller teachers `<name>_vanilla/ckpt_epoch_240.pth`: a dict with
    "model" (the state_dict), "epoch", "accuracy" or "best_acc", "optimizer";
  * distiller checkpoints: keys "module.student.*", "module.teacher.*", plus distiller modules;
  * plain state_dicts (torchvision ImageNet ResNets), possibly with a DataParallel "module." prefix.

Pickle policy: files are loaded with `torch.load(weights_only=True)`, which reconstructs only
tensors, containers and numbers. If that refuses the file, it is retried with a small allow-list
of numpy scalar/array/dtype types (data only: some training scripts store the accuracy as a numpy
float). Anything else needs `allow_pickle=True` (CLI `--allow-pickle`): the file is then executed
as a pickle (`weights_only=False`), which can run arbitrary code, so only do it for files you trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import warnings
from collections.abc import Mapping
from typing import Any

from kd_jax.convert.mapping import ConversionError

_STATE_DICT_ENTRIES = ("model", "state_dict")  # where checkpoint dicts keep the state_dict
_ACCURACY_ENTRIES = ("accuracy", "best_acc")


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


def _numpy_allow_list() -> list[Any]:
    """numpy types a weights_only load may reconstruct: scalars, arrays, dtypes (data, no code).

    Files written under numpy 1.x name `numpy.core.multiarray.*`, numpy 2.x `numpy._core...`;
    the (object, name) form maps the old names onto the current objects.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32,
                                                 np.int64, np.bool_)]
    return [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtype_classes,
            (multiarray.scalar, "numpy.core.multiarray.scalar"),
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]


def _not_torch(path: str, error: BaseException) -> ConversionError:
    return ConversionError(
        f"{path}: not a PyTorch checkpoint (torch.load failed: {type(error).__name__}: "
        f"{' '.join(str(error).split())[:200]}); expected a .pth file written by torch.save")


def load_torch_file(path: str, allow_pickle: bool = False) -> Any:
    """torch.load(path) on CPU under the pickle policy of this module (see the module docstring)."""
    try:
        import torch
    except ImportError as e:  # torch is optional for the rest of kd_jax
        raise ImportError("reading .pth files needs PyTorch "
                          "(pip install torch; the CPU build is enough)") from e

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_error = e
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001  a file that is not a torch checkpoint at all
        raise _not_torch(path, e) from None
    try:
        with torch.serialization.safe_globals(_numpy_allow_list()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # noqa: BLE001  not a torch.save archive (garbage, another format)
        raise _not_torch(path, e) from None
    if not allow_pickle:
        raise ConversionError(
            f"{path}: torch.load(weights_only=True) refuses this file: it holds Python objects "
            f"beyond tensors, numbers and numpy scalars ({', '.join(unsafe) or first_error}). "
            "Loading it means executing it as a pickle, which can run arbitrary code. If you "
            "trust the file, pass allow_pickle=True (command line: --allow-pickle).")
    warnings.warn(f"{path}: loading with torch.load(weights_only=False) because "
                  "allow_pickle=True: the file is executed as a pickle (globals it imports: "
                  f"{', '.join(unsafe)})", stacklevel=2)
    return torch.load(path, map_location="cpu", weights_only=False)


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
