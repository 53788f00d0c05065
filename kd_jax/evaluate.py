"""python -m kd_jax.evaluate MODEL --dataset NAME: top-1, top-5 and loss on a test split.

MODEL is any model kd_jax can load:
  * a converted directory (teacher.json + state/): a fetched or converted teacher, a run's
    final_model/ or best_model/ (arch and num_classes from teacher.json);
  * a PyTorch .pth (needs --arch; num_classes is the dataset's);
  * the name of a fetched published teacher (e.g. resnet32x4; see python -m kd_jax.teachers).

    python -m kd_jax.evaluate resnet32x4 --dataset cifar100
    python -m kd_jax.evaluate runs/kd/final_model --dataset cifar100 --json
    python -m kd_jax.evaluate runs/teacher/final_model    # own data: as recorded by the run

Metrics over the N test images: top-k = 100 * #{label among the k largest logits} / N, loss =
mean cross-entropy (natural log). Single-device, in the model's float32 (or --dtype bfloat16).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from kd_jax import convert, data, errors, models, teachers
from kd_jax.convert.converted import META_FILE
from kd_jax.train.step import topk_correct

RUN_MODEL_DIRS = ("final_model", "best_model")   # what a kd_jax run exports into its workdir


class ModelError(ValueError):
    """MODEL cannot be found or loaded."""


def load_model(path: str, arch: Optional[str] = None, num_classes: Optional[int] = None,
               allow_pickle: bool = False, dtype: Any = jnp.float32
               ) -> tuple[nnx.Module, dict]:
    """(model in eval mode, description) of a converted directory, a .pth or a teacher name.

    description: {"path", "arch", "num_classes", "kind", plus teacher.json's fields}. `arch`
    and `num_classes`, if given, must equal a converted directory's.
    """
    if not os.path.exists(path) and os.sep not in path and path in _published_names():
        try:
            path = teachers.published_path(path)
        except FileNotFoundError as e:
            raise ModelError(str(e)) from None
    if arch and arch not in models.names():
        raise ModelError(f"--arch {arch!r}: unknown model; known models: "
                         f"{', '.join(models.names())}")
    if num_classes is not None and num_classes < 1:
        raise ModelError(f"--num-classes {num_classes}: expected an integer >= 1")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, META_FILE)):
            inside = [d for d in RUN_MODEL_DIRS if os.path.isdir(os.path.join(path, d))]
            runs = " or ".join(os.path.join(path, d) for d in inside)
            hint = (f"; it is a run directory: pass {runs}"
                    if inside else " (write one with python -m kd_jax.convert)")
            raise ModelError(f"{path} holds no {META_FILE}: not a converted model{hint}")
        try:
            meta = convert.read_meta(path)
            model = convert.load_converted(path, arch=arch, num_classes=num_classes, dtype=dtype)
        except convert.ConversionError as e:
            raise ModelError(str(e)) from None
        return model, dict(meta, path=os.path.abspath(path), kind="converted directory")
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such file or directory (expected a converted directory, "
                         "a .pth file or a published teacher name: "
                         f"{', '.join(_published_names())})")
    if not arch or not num_classes:
        raise ModelError(f"{path} is a PyTorch file: pass --arch (its kd_jax model name)")
    try:
        model = convert.load_torch_checkpoint(path, arch, num_classes, allow_pickle, dtype)
    except convert.ConversionError as e:
        raise ModelError(str(e)) from None
    return model, {"path": os.path.abspath(path), "arch": arch, "num_classes": num_classes,
                   "kind": "PyTorch checkpoint"}


def _published_names() -> list[str]:
    from kd_jax.teachers import catalog
    return list(catalog.TEACHERS)


def _make_step(graphdef):
    @jax.jit
    def step(state, image, label, mask):
        model = nnx.merge(graphdef, state)
        logits, _ = model(image)
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, label)
        return {"top1": jnp.sum(topk_correct(logits, label, 1) * mask),
                "top5": jnp.sum(topk_correct(logits, label, 5) * mask),
                "loss": jnp.sum(loss * mask), "count": jnp.sum(mask)}
    return step


def evaluate(model: nnx.Module, ds: data.Dataset, batch_size: int = 256,
             progress: bool = True, desc: str = "evaluate") -> dict:
    """{"top1", "top5" (%), "loss" (mean CE), "count"} of `model` over ds's test split.

    The model runs in eval mode (BatchNorm running statistics); padding examples of the last
    batch are masked out.
    """
    model.eval()
    graphdef, state = nnx.split(model)
    step = _make_step(graphdef)
    sums = []
    batches = ds.eval_batches(batch_size)
    total = math.ceil(ds.info.num_test / batch_size)
    for batch in tqdm(batches, total=total, desc=desc, unit="batch", file=sys.stderr,
                      disable=None if progress else True, leave=False):  # None: a TTY only
        sums.append(step(state, batch["image"].astype(np.float32), batch["label"], batch["mask"]))
    host = jax.device_get(sums)
    total_sums = {k: float(np.sum([s[k] for s in host], dtype=np.float64)) for k in host[0]}
    count = max(total_sums["count"], 1.0)
    return {"top1": 100.0 * total_sums["top1"] / count, "top5": 100.0 * total_sums["top5"] / count,
            "loss": total_sums["loss"] / count, "count": int(total_sums["count"])}


def register_model_file(model: str, model_file: Optional[str] = None) -> None:
    """Imports `model_file`, else the model_file recorded in MODEL's teacher.json (a run on a
    model the user registered), so that its arch can be built. ModelError if it fails, a
    broken teacher.json included (export calls this before load_model reads the file)."""
    meta_path = os.path.join(model, META_FILE)
    if not model_file and os.path.isfile(meta_path):
        try:
            model_file = convert.read_meta(model).get("model_file")
        except convert.ConversionError as e:
            raise ModelError(str(e)) from None
    if model_file:
        try:
            models.import_model_file(model_file)
        except (OSError, ValueError) as e:
            raise ModelError(f"model file {model_file!r}: {e}") from None


def own_dataset_config(name: str, recorded: Optional[dict], data_dir: Optional[str] = None,
                       limit: int = 0, image_size: Optional[int] = None) -> dict:
    """The config of own data `name` (kd_jax.data.own): the one a run recorded in its
    export's teacher.json (same data, image size, split and mean/std), else the defaults;
    data_dir, a test limit and image_size (if given) replace the recorded values."""
    from kd_jax.recipes import base_config
    cfg = base_config(name).dataset.to_dict()
    if recorded and recorded.get("name") == name:
        cfg.update(recorded)
    cfg["data_dir"] = data_dir or cfg.get("data_dir")
    if limit:
        cfg["limit_test"] = limit
    if image_size is not None:
        cfg["image_size"] = image_size
    return cfg


def dataset_config(name: str, num_classes: int, data_dir: Optional[str] = None,
                   limit: int = 0, num_test: Optional[int] = None) -> dict:
    """The kd_jax.data config of `name` as a run's config has it by default (so synthetic
    gives the same test images as a default synthetic run), test split only where possible."""
    from kd_jax.recipes import base_config
    cfg = base_config(name).dataset.to_dict()
    cfg.update(data_dir=data_dir, limit_test=limit, num_classes=num_classes)
    if name != data.SYNTHETIC:
        cfg["limit_train"] = 1   # only the test split is used (synthetic: it sets the images)
    if num_test is not None:
        cfg["num_test"] = num_test
    return cfg


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m kd_jax.evaluate",
        description="Top-1/top-5 accuracy and loss of a model on a dataset's test split.")
    p.add_argument("model", help="converted directory (teacher, final_model, best_model), "
                                 ".pth file (with --arch) or published teacher name")
    p.add_argument("--dataset", help=f"one of {data.catalog.allowed_names()} (default: the "
                                     "one recorded in teacher.json, if any); synthetic: the "
                                     "test images of a default synthetic run; own data "
                                     "(image_folder, npz, tfds:NAME): the data, split, image "
                                     "size and mean/std the run recorded")
    p.add_argument("--data-dir", help="the dataset's directory (see kd_jax.data); own data: "
                                      "the image folder, .npz file or tfds data dir")
    p.add_argument("--image-size", type=int, help="own data: the side the model sees "
                                                   "(default: the recorded one, else 32)")
    p.add_argument("--arch", help="kd_jax model name (required for a .pth)")
    p.add_argument("--model-file", help="a Python file registering the model's arch "
                                        "(default: the one recorded in teacher.json)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help=">0: only the first N test images")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (parameters stay float32)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load a .pth that torch.load(weights_only=True) refuses "
                        "(trusted files only)")
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    return p.parse_args(argv)


@errors.command()   # a read or write that fails for a storage cause: one line, exit 2
def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.batch_size < 1 or args.limit < 0:
        return errors.report("--batch-size must be >= 1 and --limit >= 0")
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    start = time.perf_counter()
    try:
        if not os.path.exists(args.model) and args.model in _published_names():
            try:
                args.model = teachers.published_path(args.model)
            except FileNotFoundError as e:
                raise ModelError(str(e)) from None
        meta = {}
        if os.path.isdir(args.model) and os.path.isfile(os.path.join(args.model, META_FILE)):
            try:
                meta = convert.read_meta(args.model)
            except convert.ConversionError as e:
                raise ModelError(str(e)) from None
        name = args.dataset or meta.get("dataset")
        allowed = data.catalog.allowed_names()
        if not name:
            raise ModelError(f"pass --dataset (one of {allowed})")
        try:
            data.catalog.check_name(name)
        except ValueError:
            raise ModelError(f"--dataset {name!r}; allowed: {allowed}") from None
        register_model_file(args.model, args.model_file)
        ds = None
        if data.catalog.is_own(name):   # classes from the data: read it first
            ds = data.get_dataset(own_dataset_config(
                name, meta.get("dataset_config"), args.data_dir, args.limit, args.image_size))
        num_classes = (meta.get("num_classes") or (ds.info.num_classes if ds else 0)
                       or data.facts(name).num_classes)
        model, desc = load_model(args.model, args.arch, None if meta else num_classes,
                                 args.allow_pickle, dtype)
        if ds is None:
            ds = data.get_dataset(dataset_config(name, desc["num_classes"], args.data_dir,
                                                 args.limit))
        if ds.info.num_classes != desc["num_classes"]:
            raise ModelError(f"{args.model} has {desc['num_classes']} outputs but {name} has "
                             f"{ds.info.num_classes} classes")
    except (ModelError, data.DataNotFoundError, data.DataFileError, ValueError) as e:
        return errors.report(e)
    result = evaluate(model, ds, args.batch_size, progress=not args.json, desc=name)
    record = {"model": desc["path"], "arch": desc["arch"], "dataset": name,
              "num_test": result["count"], "top1": result["top1"], "top5": result["top5"],
              "loss": result["loss"], "seconds": round(time.perf_counter() - start, 2)}
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{desc['arch']} ({desc['kind']} {desc['path']}) on the {name} test split "
              f"({result['count']} images): top-1 {result['top1']:.2f}%  top-5 "
              f"{result['top5']:.2f}%  loss {result['loss']:.4f}  ({record['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    errors.exit_now(main())
