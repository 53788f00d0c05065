"""Image files in torchvision's ImageFolder layout, read with Pillow (no TensorFlow).

Layouts of ``dataset.data_dir = DIR`` (kd_jax.data.own):

- split folders: ``DIR/train/<class>/<image>`` with ``DIR/val/<class>/...`` (else
  ``DIR/test/<class>/...``) as the test split;
- one folder: ``DIR/<class>/<image>`` (or ``DIR/train/...`` alone): the test split is a seeded
  fraction of each class (``val_fraction``, ``split_seed``).

The rules are torchvision's (pytorch/vision, torchvision/datasets/folder.py), so that a torch
model trained with ``ImageFolder`` has the same label order:

- classes (`find_classes`): ``sorted(entry.name for entry in os.scandir(directory) if
  entry.is_dir())``, class index = position in that list;
- files (`make_dataset`): class by class in that order, ``sorted(os.walk(class_dir,
  followlinks=True))`` and ``sorted(fnames)``, kept when the lower-cased name ends with one of
  `IMG_EXTENSIONS`; a class folder without any is an error;
- decoding (`pil_loader`): ``Image.open(f).convert("RGB")`` (grey replicated to 3 channels,
  alpha dropped), then ``Resize((S, S))`` = PIL's bilinear resize (antialiased when
  shrinking).

The functions `inspect` and `decode` take lists of paths: kd_jax.data.own_dataset runs them in
worker processes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from kd_jax.data.base import DataFileError, DataNotFoundError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TRAIN, TEST_FOLDERS = "train", ("val", "test")   # test split: the first that exists


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: image paths and their int labels, in torchvision's order."""

    paths: tuple[str, ...]
    labels: np.ndarray           # int32 (N,)


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a folder holds: its classes (torchvision's order) and both splits."""

    root: str
    classes: tuple[str, ...]
    train: Split
    test: Split
    test_from: str               # "DIR/val", "DIR/test" or "a 0.1 fraction of DIR/train"


def find_classes(directory: str) -> list[str]:
    """torchvision's class list of `directory`: its sub-folder names, sorted."""
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_images(directory: str, classes: Sequence[str], class_to_idx: dict[str, int]
                ) -> tuple[list[str], list[int]]:
    """(paths, labels) of `classes` in `directory`, in torchvision's `make_dataset` order.
    Raises DataFileError naming the first class folder that holds no image file."""
    paths, labels = [], []
    for name in classes:
        count = 0
        for root, _, files in sorted(os.walk(os.path.join(directory, name), followlinks=True)):
            for file in sorted(files):
                if is_image_file(file):
                    paths.append(os.path.join(root, file))
                    labels.append(class_to_idx[name])
                    count += 1
        if not count:
            raise DataFileError(f"class folder {os.path.join(directory, name)} holds no image "
                                f"file ({', '.join(IMG_EXTENSIONS)}): add images or remove it")
    return paths, labels


def _classes_of(directory: str) -> list[str]:
    classes = find_classes(directory)
    if not classes:
        raise DataNotFoundError(f"{directory}: no class folders (expected "
                                f"{os.path.join(directory, '<class>', '<image>')})")
    return classes


def _split(paths: list[str], labels: list[int]) -> Split:
    return Split(tuple(paths), np.asarray(labels, np.int32).reshape(-1))


def scan(root: str, val_fraction: float, split_seed: int) -> Layout:
    """The classes and splits of the folder `root` (see the module docstring)."""
    if not os.path.isdir(root):
        raise DataNotFoundError(f"dataset.data_dir={root!r}: no such directory (expected an "
                                "image folder: DIR/train/<class>/<image> with DIR/val/<class>/"
                                "..., or DIR/<class>/<image>)")
    train_dir = os.path.join(root, TRAIN)
    test_dir = next((os.path.join(root, d) for d in TEST_FOLDERS
                     if os.path.isdir(os.path.join(root, d))), None)
    if not os.path.isdir(train_dir):
        if test_dir is not None:
            raise DataNotFoundError(f"{root} has {os.path.basename(test_dir)}/ but no train/ "
                                    "folder: put the training images in "
                                    f"{os.path.join(root, TRAIN, '<class>')}")
        train_dir = root
    classes = _classes_of(train_dir)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    paths, labels = list_images(train_dir, classes, class_to_idx)
    if test_dir is not None:
        test_classes = _classes_of(test_dir)
        missing = [c for c in test_classes if c not in class_to_idx]
        if missing:
            raise DataFileError(f"class {missing[0]!r} of {test_dir} has no folder in "
                                f"{train_dir}: every class of the test split must be a "
                                f"training class ({len(classes)}: {', '.join(classes[:5])}"
                                f"{', ...' if len(classes) > 5 else ''})")
        test = _split(*list_images(test_dir, test_classes, class_to_idx))
        return Layout(root, tuple(classes), _split(paths, labels), test, test_dir)
    train, test = split_by_fraction(paths, labels, len(classes), val_fraction, split_seed)
    return Layout(root, tuple(classes), train, test,
                  f"a {val_fraction:g} fraction of each class of {train_dir} (split_seed "
                  f"{split_seed})")


def split_by_fraction(paths: list[str], labels: list[int], num_classes: int,
                      fraction: float, seed: int) -> tuple[Split, Split]:
    """Holds out round(fraction * n_c) of each class's n_c images (at least 1 and at most
    n_c - 1 where n_c >= 2), chosen by a generator seeded with (seed, class); both splits
    keep the listing's order."""
    if not 0 < fraction < 1:
        raise ValueError(f"dataset.val_fraction={fraction!r}: expected a number in (0, 1), "
                         "the share of each class held out as the test split")
    labels_arr = np.asarray(labels, np.int32)
    held = np.zeros(len(paths), bool)
    for c in range(num_classes):
        members = np.flatnonzero(labels_arr == c)
        n = len(members)
        k = min(max(int(round(fraction * n)), 1), n - 1) if n >= 2 else 0
        chosen = np.random.default_rng([seed, c]).permutation(n)[:k]
        held[members[chosen]] = True
    pick = lambda mask: _split([p for p, m in zip(paths, mask) if m], labels_arr[mask])  # noqa
    return pick(~held), pick(held)


# --- decoding --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Probe:
    """What an image file's header says (no pixels decoded)."""

    width: int
    height: int
    mode: str                    # PIL mode: "RGB", "L" (grey), "RGBA", "P", ...


# What Pillow raises on a file it cannot read (UnidentifiedImageError is an OSError; a
# truncated or corrupt body raises OSError, ValueError or SyntaxError from its decoders).
_PIL_ERRORS = (OSError, ValueError, SyntaxError)


def _unreadable(path: str, error: BaseException) -> str:
    return f"{path}: cannot be read as an image ({type(error).__name__}: {error})"


def inspect(paths: Sequence[str]) -> list:
    """Per path, its Probe, or the one-line message of why it cannot be read (header only)."""
    import PIL.Image
    out = []
    for path in paths:
        try:
            with PIL.Image.open(path) as image:
                out.append(Probe(image.width, image.height, image.mode))
        except _PIL_ERRORS + (PIL.Image.DecompressionBombError,) as e:
            out.append(_unreadable(path, e))
    return out


def to_rgb_array(image, size: Optional[tuple[int, int]]) -> np.ndarray:
    """A PIL image -> uint8 (H, W, 3): converted to RGB as torchvision's loader, then resized
    to size = (H, W) with PIL's bilinear filter (None: its own size)."""
    import PIL.Image
    image = image.convert("RGB")
    if size is not None and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), PIL.Image.BILINEAR)
    return np.asarray(image, np.uint8)


def load(path: str, size: Optional[tuple[int, int]]) -> np.ndarray:
    """One file -> uint8 (H, W, 3) (see `to_rgb_array`); DataFileError naming it if unreadable."""
    import PIL.Image
    try:
        with open(path, "rb") as f, PIL.Image.open(f) as image:
            return to_rgb_array(image, size)
    except _PIL_ERRORS + (PIL.Image.DecompressionBombError,) as e:
        raise DataFileError(_unreadable(path, e)) from None


def decode(paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """Files -> uint8 (n, H, W, 3), all resized to size = (H, W); raises DataFileError naming
    the first unreadable file."""
    out = np.empty((len(paths), size[0], size[1], 3), np.uint8)
    for i, path in enumerate(paths):
        out[i] = load(path, size)
    return out


def decode_lenient(paths: Sequence[str], size: tuple[int, int]
                   ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Like `decode`, but an unreadable file is left out: (uint8 (n_ok, H, W, 3) in order,
    [(position in paths, message)] of the files left out)."""
    out = np.empty((len(paths), size[0], size[1], 3), np.uint8)
    failed, kept = [], 0
    for i, path in enumerate(paths):
        try:
            out[kept] = load(path, size)
            kept += 1
        except DataFileError as e:
            failed.append((i, str(e)))
    return out[:kept], failed


def resize_array(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size[0], size[1], 3) with the same PIL resize as files (a
    no-op at the same size)."""
    import PIL.Image
    if images.shape[1:3] == tuple(size):
        return images
    out = np.empty((len(images), size[0], size[1], 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = to_rgb_array(PIL.Image.fromarray(image), size)
    return out
