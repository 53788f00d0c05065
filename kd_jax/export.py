"""python -m kd_jax.export MODEL --to torch OUT.pth | --to npz OUT.npz

Writes a kd_jax model (a run's final_model/ or best_model/, a converted teacher, a .pth with
--arch, or a published teacher's name) as the reference PyTorch model's state_dict: the
reference key names and shapes (kd_jax.convert.mapping.flax_to_torch, the converter's mapping
inverted), loadable with `load_state_dict(..., strict=True)` into the reference model class
(mdistiller's `cifar_model_dict[arch][0](num_classes=...)`, torchvision's ResNets for
imagenet_*):

    python -m kd_jax.export runs/kd/final_model --to torch resnet8x4.pth
    >>> model.load_state_dict(torch.load("resnet8x4.pth"))

--to torch: a plain state_dict in torch.save's zip layout (the tensors only, loadable with
torch.load's default weights_only=True), written by kd_jax.convert.pth: PyTorch is not
needed. --to npz: the same keys and arrays in a numpy .npz. The file is written beside OUT
and renamed into place. A mistake (an unknown --arch, a broken teacher.json, OUT a directory
or under a file) or a failed write (disk full, no permission, read-only) ends in one
`kd_jax: error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np
from flax import nnx

from kd_jax import errors
from kd_jax.convert import pth
from kd_jax.convert.mapping import flax_to_torch

FORMATS = ("torch", "npz")


def export(model: nnx.Module, out: str, fmt: str = "torch") -> dict[str, np.ndarray]:
    """Writes `model`'s reference state_dict to `out` in `fmt`; returns it (numpy values)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    state_dict = flax_to_torch(model)
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        if fmt == "torch":
            pth.save(state_dict, tmp)
        else:
            with open(tmp, "wb") as f:   # a file object: np.savez would append ".npz" to a name
                np.savez(f, **state_dict)
        os.replace(tmp, out)
    except OSError as e:
        e.filename = e.filename or tmp   # a buffered write's error names no file
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return state_dict


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m kd_jax.export",
        description="Export a kd_jax model as the reference PyTorch state_dict.")
    p.add_argument("model", help="converted directory (final_model, best_model, teacher), .pth "
                                 "(with --arch and --num-classes) or published teacher name")
    p.add_argument("--to", nargs=2, metavar=("FORMAT", "OUT"), required=True,
                   help="torch OUT.pth or npz OUT.npz")
    p.add_argument("--arch", help="kd_jax model name (required for a .pth)")
    p.add_argument("--num-classes", type=int, help="outputs of the head (required for a .pth)")
    p.add_argument("--model-file", help="a Python file registering the model's arch "
                                        "(default: the one recorded in teacher.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return p.parse_args(argv)


class OutputError(ValueError):
    """OUT cannot be written there (a directory, under a file, already there)."""


def check_output(out: str, overwrite: bool) -> None:
    """Raises OutputError, before any model is loaded, if `out` is a directory, lies under a
    regular file, or exists without `overwrite`."""
    if os.path.isdir(out):
        raise OutputError(f"{out} is a directory; give the file to write, e.g. "
                          f"{os.path.join(out, 'model.pth')}")
    if os.path.exists(out) and not overwrite:
        raise OutputError(f"{out} exists (pass --overwrite to replace it)")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {out}: {parent} is a file, not a directory")


@errors.command()   # a full disk, no permission, a read-only OUT: one line, exit 2
def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    fmt, out = args.to
    if fmt not in FORMATS:
        return errors.report(f"--to {fmt}: allowed formats: {', '.join(FORMATS)}")
    from kd_jax import evaluate   # model loading: directories, .pth, teacher names
    try:
        check_output(out, args.overwrite)
        evaluate.register_model_file(args.model, args.model_file)
        model, desc = evaluate.load_model(args.model, args.arch, args.num_classes)
        state_dict = export(model, out, fmt)
    except (OutputError, evaluate.ModelError, ImportError) as e:
        return errors.report(e)
    n = sum(int(np.size(v)) for k, v in state_dict.items() if not k.endswith("num_batches_tracked"))
    print(f"wrote {out}: {desc['arch']} (num_classes={desc['num_classes']}) as the reference "
          f"state_dict, {len(state_dict)} entries, {n} values ({fmt})")
    return 0


if __name__ == "__main__":
    errors.exit_now(main())
