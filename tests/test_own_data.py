"""Own data (issue 30): image folders, .npz arrays and tfds datasets, cached, in memory or
streamed, and the two documented commands on them.

Folders are written by the tests: Fashion-MNIST images from the Debian files as PNG and JPEG
under torchvision's ImageFolder layout, and generated RGB shapes of several sizes. Expected
values come from independent code: the original IDX pixels (PNG is lossless), PIL calls made
here (torchvision's `pil_loader` + `Resize`), torchvision's listing rule restated here, and
single-process / in-memory runs for the sharded and streamed paths.
"""

import json
import multiprocessing
import os
import re
import sys

import numpy as np
import PIL.Image
import pytest

from kd_jax import data
from kd_jax.data import fashion_mnist, image_files, own, own_cache, own_dataset

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
# Fashion-MNIST's class names (label order): sorted, the folder order differs from it.
FM_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
              "Sneaker", "Bag", "Ankle_boot")
needs_fashion = pytest.mark.skipif(
    fashion_mnist.find_idx_files(FASHION_DIR) is None,
    reason=f"the Fashion-MNIST IDX files are not in {FASHION_DIR} (apt-get install "
           "dataset-fashion-mnist)")


# --- folders the tests write -------------------------------------------------------------------

def fashion_images(split: str, count: int, classes=None):
    """The first `count` images (uint8 (N, 28, 28)) and labels of a Fashion-MNIST split,
    keeping only `classes` (label values) if given."""
    images_path, labels_path = fashion_mnist.find_idx_files(FASHION_DIR)[split]
    images = fashion_mnist.read_idx(images_path, 4 * count)
    labels = fashion_mnist.read_idx(labels_path, 4 * count).astype(np.int64)
    keep = np.isin(labels, classes) if classes is not None else np.ones(len(labels), bool)
    return images[keep][:count], labels[keep][:count]


def write_fashion_folder(root, train=240, test=80, classes=None):
    """root/{train,val}/<class name>/<i>.png|.jpg (PNG for even i, JPEG for odd i): returns
    {split: [(path, original uint8 (28, 28), label)]}."""
    written = {}
    for split, folder, count in (("train", "train", train), ("test", "val", test)):
        images, labels = fashion_images(split, count, classes)
        written[split] = []
        for i, (image, label) in enumerate(zip(images, labels)):
            d = os.path.join(root, folder, FM_CLASSES[label])
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, f"{i:04d}.{'png' if i % 2 == 0 else 'jpg'}")
            PIL.Image.fromarray(image).save(path, quality=95)
            written[split].append((path, image, int(label)))
    return written


def shape_image(height, width, kind, seed):
    """An RGB image (H, W, 3) uint8: a disc (kind 0), a square (1) or a cross (2) on noise."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (height, width, 3)).astype(np.uint8)
    y, x = np.mgrid[:height, :width]
    cy, cx, r = height / 2, width / 2, min(height, width) / 3
    mask = [(y - cy) ** 2 + (x - cx) ** 2 < r * r,
            (abs(y - cy) < r) & (abs(x - cx) < r),
            (abs(y - cy) < r / 3) | (abs(x - cx) < r / 3)][kind]
    image[mask] = rng.integers(150, 256, 3)
    return image


SHAPE_SIZES = ((20, 24), (33, 17), (40, 40), (9, 31))
SHAPES = ("disc", "square", "cross")


def write_shapes_folder(root, per_class=8):
    """root/<shape>/<i>.png|.jpg, one folder (split by val_fraction), images of several sizes;
    returns [path] in the listing order torchvision gives (`torchvision_listing`)."""
    for k, name in enumerate(SHAPES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            h, w = SHAPE_SIZES[i % len(SHAPE_SIZES)]
            ext = "png" if i % 2 == 0 else "JPG"    # extensions match case-insensitively
            PIL.Image.fromarray(shape_image(h, w, k, 10 * k + i)).save(
                os.path.join(root, name, f"{i:02d}.{ext}"), quality=95)
    return torchvision_listing(root)[0]


def torchvision_listing(directory):
    """torchvision's ImageFolder(directory).samples and classes, restated from
    pytorch/vision torchvision/datasets/folder.py: find_classes sorts the sub-folder names
    (os.scandir, is_dir), make_dataset walks each class folder with sorted(os.walk(...,
    followlinks=True)), sorted file names, lower-cased extension among IMG_EXTENSIONS."""
    extensions = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    samples = []
    for index, name in enumerate(classes):
        for root, _, names in sorted(os.walk(os.path.join(directory, name), followlinks=True)):
            for file in sorted(names):
                if file.lower().endswith(extensions):
                    samples.append((os.path.join(root, file), index))
    return [p for p, _ in samples], [c for _, c in samples], classes


def pil_reference(path, size):
    """torchvision's pil_loader then Resize((H, W)) (PIL bilinear), as uint8 (H, W, 3)."""
    with open(path, "rb") as f:
        image = PIL.Image.open(f).convert("RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), PIL.Image.BILINEAR)
    return np.asarray(image)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache directory of this module's own (KD_JAX_CACHE)."""
    path = tmp_path_factory.mktemp("cache")
    saved = os.environ.get("KD_JAX_CACHE")
    os.environ["KD_JAX_CACHE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("KD_JAX_CACHE")
    else:
        os.environ["KD_JAX_CACHE"] = saved


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory, cache):
    if fashion_mnist.find_idx_files(FASHION_DIR) is None:
        pytest.skip(f"the Fashion-MNIST IDX files are not in {FASHION_DIR}")
    root = tmp_path_factory.mktemp("fashion")
    return str(root), write_fashion_folder(str(root))


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory, cache):
    root = str(tmp_path_factory.mktemp("shapes"))
    return root, write_shapes_folder(root)


def folder_config(root, **overrides):
    return {"name": "image_folder", "data_dir": root, "image_size": 32, "workers": 1,
            **overrides}


# --- loading equals the reference ----------------------------------------------------------

def test_fashion_png_and_jpeg_load_as_written(fashion_folder, capsys):
    """At their own size (image_size=0): PNG files give the IDX pixels exactly (grey
    repeated to RGB), JPEG files PIL's decoding of them; labels are torchvision's indices."""
    root, written = fashion_folder
    ds = data.get_dataset(folder_config(root, image_size=0))
    assert isinstance(ds, data.InMemoryDataset) and ds.info.image_shape == (28, 28, 3)
    names = sorted(FM_CLASSES)
    assert ds.info.classes == tuple(names) and ds.info.num_classes == 10
    images, labels = ds.train_arrays
    paths, expected_labels, _ = torchvision_listing(os.path.join(root, "train"))
    by_path = {p: (image, label) for p, image, label in written["train"]}
    assert len(paths) == len(images) == 240
    for i, path in enumerate(paths):
        original, label = by_path[path]
        assert labels[i] == expected_labels[i] == names.index(FM_CLASSES[label])
        if path.endswith(".png"):
            np.testing.assert_array_equal(images[i], np.repeat(original[..., None], 3, -1))
        else:
            np.testing.assert_array_equal(images[i], pil_reference(path, None))
    assert "are not RGB (modes L" in capsys.readouterr().err   # grey files: said so


def test_shapes_of_several_sizes_resize_like_pil(shapes_folder):
    """RGB PNG / JPEG files of four sizes, one folder split by val_fraction: each stored image
    is PIL's bilinear resize to 24x24, in torchvision's order, every class in both splits."""
    root, paths = shapes_folder
    ds = data.get_dataset(folder_config(root, image_size=24, val_fraction=0.25))
    images, labels = ds.train_arrays
    _, all_labels, classes = torchvision_listing(root)
    assert ds.info.classes == tuple(classes) == tuple(sorted(SHAPES))
    assert ds.info.num_train + ds.info.num_test == len(paths) == 24
    assert ds.info.num_test == 6                           # round(0.25 * 8) of each class
    reference = np.stack([pil_reference(p, (24, 24)) for p in paths])
    # The train split keeps the listing order: match each stored image to its file.
    rows = [int(np.flatnonzero((reference == image).all(axis=(1, 2, 3)))[0]) for image in images]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    np.testing.assert_array_equal(labels, np.asarray(all_labels)[rows])
    assert set(labels.tolist()) == {0, 1, 2}


def test_class_order_is_torchvision(tmp_path, cache):
    """Names whose sorted order is not the 'natural' one (case, digits, punctuation), nested
    sub-folders, upper-case extensions and non-image files."""
    names = ["b", "B", "a_", "10", "2", "Zebra", "aa", "a"]
    root = tmp_path / "tree"
    for i, name in enumerate(names):
        nested = root / name / ("sub" if i % 2 else "")
        nested.mkdir(parents=True, exist_ok=True)
        for j, ext in enumerate(("png", "PNG", "txt")):
            image = np.full((4, 4, 3), 10 * i + j, np.uint8)
            PIL.Image.fromarray(image).save(nested / f"{j}.{ext}", format="PNG")
        PIL.Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(root / name / "z.png")
    layout = image_files.scan(str(root), 0.5, 0)
    paths, labels, classes = torchvision_listing(str(root))
    assert list(layout.classes) == classes == sorted(names)
    ordered = sorted(zip(layout.train.paths + layout.test.paths,
                         np.concatenate([layout.train.labels, layout.test.labels]).tolist()),
                     key=lambda pair: paths.index(pair[0]))
    assert [p for p, _ in ordered] == paths and [c for _, c in ordered] == labels
    assert not any(p.endswith(".txt") for p in paths)


# --- the two paths -----------------------------------------------------------------------

@pytest.mark.parametrize("image_size", [24, 96])   # CIFAR-style, ImageNet-style
def test_streamed_equals_in_memory(shapes_folder, image_size):
    """Files decoded by 2 worker processes per batch give the in-memory batches bit for bit,
    from the start of an epoch and resumed at a step (the checkpointable position)."""
    root, _ = shapes_folder
    memory = data.get_dataset(folder_config(root, image_size=image_size, val_fraction=0.25))
    streamed = data.get_dataset(folder_config(root, image_size=image_size, val_fraction=0.25,
                                              in_memory=False, workers=2))
    assert isinstance(streamed, own_dataset.OwnDataset)
    assert isinstance(streamed._train, own_dataset.FileReader)
    style = own_dataset.style_for(image_size)
    assert style.imagenet == (image_size == 96) and memory.info == streamed.info
    try:
        for epoch, start in ((1, 0), (2, 1)):
            for a, b in zip(memory.train_batches(epoch, 6, 3, start),
                            streamed.train_batches(epoch, 6, 3, start)):
                np.testing.assert_array_equal(a["image"], b["image"])
                np.testing.assert_array_equal(a["label"], b["label"])
        for a, b in zip(memory.eval_batches(4), streamed.eval_batches(4)):
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(a[key], b[key])
        assert a["image"].shape == (4, image_size, image_size, 3)
    finally:
        streamed.close()


def _read_shard(root, cache_dir, process_index, queue):
    """In a fresh process: host `process_index` of 2 streams epoch 1; reports the indices of
    the files it asked to decode and its batches."""
    os.environ["KD_JAX_CACHE"] = cache_dir
    requested = []
    read_ahead = own_dataset.FileReader.read_ahead

    def recording(self, indices):
        for index in indices:
            requested.append(np.asarray(index).tolist())
            yield from read_ahead(self, [index])

    own_dataset.FileReader.read_ahead = recording
    ds = data.get_dataset(folder_config(root, val_fraction=0.25, in_memory=False, workers=1),
                          process_index=process_index, process_count=2)
    batches = list(ds.train_batches(1, 6, 5))
    ds.close()
    queue.put((process_index, requested, [b["image"] for b in batches],
               [b["label"] for b in batches]))


def test_two_processes_read_their_own_shard(shapes_folder, cache):
    """Two processes (hosts) each decode only their half of every global batch, and their
    halves put together are the one-process batches."""
    root, _ = shapes_folder
    whole = data.get_dataset(folder_config(root, val_fraction=0.25, in_memory=False,
                                           workers=1))
    expected = list(whole.train_batches(1, 6, 5))
    whole.close()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_read_shard, args=(root, str(cache), i, queue))
             for i in (0, 1)]
    for p in procs:
        p.start()
    results = dict((r[0], r[1:]) for r in (queue.get(timeout=240) for _ in procs))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    read = [set(sum(results[i][0], [])) for i in (0, 1)]
    assert read[0] and read[1] and not read[0] & read[1]   # disjoint shards
    for step, batch in enumerate(expected):
        np.testing.assert_array_equal(
            np.concatenate([results[0][1][step], results[1][1][step]]), batch["image"])
        np.testing.assert_array_equal(
            np.concatenate([results[0][2][step], results[1][2][step]]), batch["label"])


# --- the cache ---------------------------------------------------------------------------

def test_cache_is_rebuilt_after_a_file_changes(tmp_path, cache, monkeypatch):
    root = str(tmp_path / "folder")
    write_shapes_folder(root, per_class=4)
    entries = []
    real = own_cache.load_or_build
    monkeypatch.setattr(own_cache, "load_or_build",
                        lambda *a, **k: entries.append(real(*a, **k)) or entries[-1])
    config = folder_config(root, image_size=16, val_fraction=0.25)
    first = data.get_dataset(config)
    data.get_dataset(config)
    assert [e.built for e in entries] == [True, False]          # the second run reads it
    manifest = entries[0].manifest
    assert manifest["mean"] == pytest.approx(own_cache.mean_std(first.train_arrays[0])[0])
    changed = os.path.join(root, "cross", "00.png")
    PIL.Image.fromarray(np.full((20, 24, 3), 255, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))   # even put back with an old mtime: its size differs
    again = data.get_dataset(config)
    assert entries[-1].built
    arrays = entries[-1].arrays
    white = [(arrays[f"{k}_images"] == 255).all(axis=(1, 2, 3)).sum() for k in ("train", "test")]
    assert sum(white) == 1
    os.remove(os.path.join(root, "disc", "03.JPG"))
    fewer = data.get_dataset(config)
    assert entries[-1].built
    assert fewer.info.num_train + fewer.info.num_test == again.info.num_train + \
        again.info.num_test - 1


# --- errors: one line naming the file or class --------------------------------------------

def rgb_folder(root, layout):
    """{relative path: (H, W) or None (an empty folder) or bytes (a broken file)}."""
    for rel, what in layout.items():
        path = os.path.join(root, rel)
        if what is None:
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(what, bytes):
            with open(path, "wb") as f:
                f.write(what)
        else:
            PIL.Image.fromarray(np.zeros((*what, 3), np.uint8)).save(path)
    return root


ERRORS = {
    "empty class folder": ({"train/cat/0.png": (8, 8), "train/dog": None},
                           {}, r"^class folder .*train/dog holds no image file"),
    "unreadable image": ({"train/cat/0.png": (8, 8), "train/dog/1.png": b"not an image"},
                         {}, r"^.*train/dog/1.png: cannot be read as an image .*"
                             r"skip_unreadable=True"),
    "mixed sizes": ({"cat/0.png": (8, 8), "cat/2.png": (8, 8), "dog/1.png": (8, 9),
                     "dog/3.png": (8, 9)},
                    {"image_size": 0}, r"^mixed sizes: .*cat/\d.png is 8x8 but .*dog/\d.png is "
                                       r"9x8; set --config.dataset.image_size=N"),
    "test class missing from train": ({"train/cat/0.png": (8, 8), "train/dog/1.png": (8, 8),
                                       "val/cow/2.png": (8, 8)},
                                      {}, r"^class 'cow' of .*val has no folder in .*train"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_the_file_or_class(tmp_path, cache, case):
    layout, overrides, message = ERRORS[case]
    root = rgb_folder(str(tmp_path / "d"), layout)
    with pytest.raises(data.DataFileError, match=message) as error:
        data.get_dataset(folder_config(root, **overrides))
    assert "\n" not in str(error.value)


def test_unreadable_images_can_be_skipped_and_grey_rgba_are_said(tmp_path, cache, capsys):
    root = rgb_folder(str(tmp_path / "d"), {f"cat/{i}.png": (8, 8) for i in range(4)}
                      | {f"dog/{i}.png": (8, 8) for i in range(4)}
                      | {"dog/broken.jpg": b"\xff\xd8 truncated"})
    PIL.Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(root, "cat", "grey.png"))
    PIL.Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(os.path.join(root, "dog", "a.png"))
    ds = data.get_dataset(folder_config(root, image_size=8, skip_unreadable=True,
                                        val_fraction=0.25))
    assert ds.info.num_train + ds.info.num_test == 10    # 11 files, the broken one left out
    err = capsys.readouterr().err
    assert "1 unreadable image file(s) left out (skip_unreadable), first: " in err
    modes = re.findall(r"are not RGB \(modes ([^:]*):", err)   # per split: one line each
    assert "broken.jpg" in err and sorted(", ".join(modes).split(", ")) == ["L", "RGBA"]
    assert all(line.startswith("kd_jax: note: ") for line in err.splitlines())


# --- npz and tfds --------------------------------------------------------------------------

def test_npz_arrays_grey_and_rgba(tmp_path, cache, capsys):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (30, 12, 12), dtype=np.uint8)   # grey (N, H, W)
    x_test = rng.integers(0, 256, (10, 12, 12, 4), dtype=np.uint8)  # RGBA
    y_train, y_test = np.arange(30) % 3, np.arange(10) % 3
    path = str(tmp_path / "d.npz")
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             classes=np.array(["a", "b", "c"]))
    ds = data.get_dataset({"name": "npz", "data_dir": path, "image_size": 0})
    assert ds.info.classes == ("a", "b", "c") and ds.info.image_shape == (12, 12, 3)
    images, labels = ds.train_arrays
    np.testing.assert_array_equal(images, np.repeat(x_train[..., None], 3, -1))
    np.testing.assert_array_equal(labels, y_train)
    batch = next(ds.eval_batches(10))
    mean, std = ds.augmentation[:2]
    np.testing.assert_allclose(batch["image"], (x_test[..., :3] / 255.0 - mean) / std,
                               rtol=1e-5, atol=1e-5)
    err = capsys.readouterr().err
    assert "x_train is grey" in err and "x_test is RGBA" in err
    np.savez(path, x_train=x_train.astype(np.float32), y_train=y_train, x_test=x_test,
             y_test=y_test)
    with pytest.raises(data.DataFileError, match=r"d.npz: x_train is float32; expected uint8"):
        data.get_dataset({"name": "npz", "data_dir": path})
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test)
    with pytest.raises(data.DataFileError, match=r"d.npz: no array 'y_test' \(it has x_train, "
                                                 r"y_train, x_test; expected"):
        data.get_dataset({"name": "npz", "data_dir": path})
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test[:, :, :, :3],
             y_test=y_test + 1)
    with pytest.raises(data.DataFileError, match=r"d.npz: label 3 appears in the test split "
                                                 r"but in no training example"):
        data.get_dataset({"name": "npz", "data_dir": path, "image_size": 0})


class FakeTfdsBuilder:
    """A prepared tfds builder: train/test splits of (image, label), variable sizes."""

    def __init__(self):
        import types
        self.info = types.SimpleNamespace(
            splits={"train": types.SimpleNamespace(num_examples=12),
                    "test": types.SimpleNamespace(num_examples=6)},
            features={"label": types.SimpleNamespace(names=["x", "y"], num_classes=2)},
            version="1.0.0")
        self.examples = {split: [(shape_image(10 + i, 14, i % 2, i), i % 2)
                                 for i in range(n.num_examples)]
                         for split, n in self.info.splits.items()}


def test_tfds_dataset(cache, monkeypatch):
    from kd_jax.data import tfds_io
    builder = FakeTfdsBuilder()
    monkeypatch.setattr(tfds_io, "prepared_builder", lambda *a, **k: builder)
    monkeypatch.setattr(own, "tfds_examples", lambda b, split: iter(b.examples[split]))
    ds = data.get_dataset({"name": "tfds:fake_shapes", "image_size": 16})
    assert ds.info.classes == ("x", "y") and (ds.info.num_train, ds.info.num_test) == (12, 6)
    images, labels = ds.train_arrays
    expected = [np.asarray(PIL.Image.fromarray(im).resize((16, 16), PIL.Image.BILINEAR))
                for im, _ in builder.examples["train"]]
    np.testing.assert_array_equal(images, np.stack(expected))
    np.testing.assert_array_equal(labels, [lab for _, lab in builder.examples["train"]])
    with pytest.raises(data.DataFileError, match=r"mixed sizes: tfds dataset 'fake_shapes'"):
        data.get_dataset({"name": "tfds:fake_shapes", "image_size": 0})
    with pytest.raises(data.DataFileError, match=r"^tfds:fake_shapes: its 18 images would "
                                                 r"exceed dataset.memory_budget_mb=0.001"):
        data.get_dataset({"name": "tfds:fake_shapes", "image_size": 16,
                          "memory_budget_mb": 0.001})


# --- the documented commands ------------------------------------------------------------------

USER_MODEL_FILE = '''\
"""A user's models: registered under names that student.arch / teacher.arch can take."""
from flax import nnx
from kd_jax import models
from kd_jax.models import layers


class SmallNet(nnx.Module):
    def __init__(self, width, num_classes, *, dtype, rngs):
        self.conv1 = layers.conv(3, width, 3, padding=1, rngs=rngs, dtype=dtype)
        self.bn1 = layers.BatchNorm(width, dtype=dtype)
        self.conv2 = layers.conv(width, 2 * width, 3, stride=2, padding=1, rngs=rngs,
                                 dtype=dtype)
        self.bn2 = layers.BatchNorm(2 * width, dtype=dtype)
        self.fc = layers.linear(2 * width, num_classes, rngs=rngs)   # float32 head

    @property
    def head(self):
        return self.fc

    def __call__(self, x):
        f1 = layers.relu(self.bn1(self.conv1(x)))
        f2 = layers.relu(self.bn2(self.conv2(f1)))
        return layers.pool_and_classify(self.fc, f2, [f1, f2], None)


@models.register("user_net", reference=False)
def user_net(num_classes, dtype, rngs):
    return SmallNet(8, num_classes, dtype=dtype, rngs=rngs)


@models.register("user_net_wide", reference=False)
def user_net_wide(num_classes, dtype, rngs):
    return SmallNet(16, num_classes, dtype=dtype, rngs=rngs)
'''
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(config_arg, workdir, *overrides):
    """`python -m kd_jax.main --config CONFIG_ARG --workdir WORKDIR OVERRIDES`, in-process."""
    from kd_jax import cli as kd_cli
    from kd_jax import main as kd_main
    args = kd_cli.parse(["kd_jax.main", f"--config={config_arg}", f"--workdir={workdir}",
                         *overrides])
    return kd_main.run(args.config, args.workdir)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "my_models.py"
    path.write_text(USER_MODEL_FILE)
    return str(path)


@pytest.mark.slow
@needs_fashion
def test_teacher_then_distil_beats_chance(tmp_path, cache, model_file, capsys):
    """The two documented commands on a folder of 320 Fashion-MNIST PNG / JPEG files of 4
    classes (chance: 25 %), with the user's own models: a teacher, then KD and DKD students
    in lockstep from it; `python -m kd_jax.evaluate` of a student reads what the run recorded
    and finds the accuracy its run reported."""
    from kd_jax import evaluate
    root = str(tmp_path / "my_images")
    write_fashion_folder(root, train=320, test=80, classes=[0, 1, 7, 8])
    common = [f"--config.dataset.data_dir={root}", f"--config.model_file={model_file}",
              "--config.dataset.image_size=16", "--config.num_epochs=4",
              "--config.batch_size=32", "--config.optimizer.schedule=cosine",
              "--config.optimizer.milestones=()", "--config.optimizer.lr=0.1",
              "--config.eval_every_epochs=4", "--config.progress_bar=False",
              "--config.tensorboard=False"]
    teacher = cli("custom_teacher.py:user_net_wide", tmp_path / "teacher", *common)
    assert teacher["best_top1"] >= 70.0, teacher
    final = str(tmp_path / "teacher" / "final_model")
    students = cli("custom_distill.py:user_net_wide-user_net,kd,dkd", tmp_path / "distill",
                   *common, f"--config.teacher.checkpoint={final}")["students"]
    for name in ("kd", "dkd"):
        assert students[name]["best_top1"] >= 60.0, (name, students[name])
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "distill" / "dkd" / "final_model"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["dataset"] == "image_folder" and record["num_test"] == 80
    assert record["top1"] == pytest.approx(students["dkd"]["final_model"]["top1"], abs=1e-6)


def test_missing_data_dir_and_empty_class_are_one_line(tmp_path, cache, capsys):
    """Through the command line: `kd_jax: error: ...`, one line, exit code 2."""
    from kd_jax import main as kd_main
    root = rgb_folder(str(tmp_path / "d"), {"cat/0.png": (8, 8), "dog": None})
    for overrides, expected in (
            ([], "kd_jax: error: dataset.name='image_folder' needs dataset.data_dir: the image "
                 "folder (--config.dataset.data_dir=PATH)"),
            ([f"--config.dataset.data_dir={root}"],
             f"kd_jax: error: class folder {root}/dog holds no image file")):
        with pytest.raises(SystemExit) as exit_:
            kd_main.main(["kd_jax.main", "--config=custom_teacher.py:resnet8",
                          f"--workdir={tmp_path / 'run'}", *overrides])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith(expected)
        assert not os.path.exists(tmp_path / "run")


def test_models_fit_the_image_size(tmp_path, cache):
    """Any family on own data, as long as its downsampling fits dataset.image_size."""
    from kd_jax.recipes import own_data
    from kd_jax.train import config_validation
    config = own_data.teacher_config("imagenet_ResNet18")
    config.dataset.data_dir = str(tmp_path)
    config.dataset.image_size = 64
    config_validation.validate(config, num_devices=1)
    config.dataset.image_size = 16
    with pytest.raises(config_validation.ConfigError,
                       match=r"dataset.image_size=16: smaller than the 32x downsampling of "
                             r"student.arch='imagenet_ResNet18'; use at least 32"):
        config_validation.validate(config, num_devices=1)


def test_init_from_imagenet_classes_gets_a_new_head(tmp_path, model_file):
    """student.init_from a converted model with other classes (as torchvision's ImageNet
    weights): every variable but the head's is loaded, the head is the fresh one's."""
    from flax import nnx
    from kd_jax import convert, models
    from kd_jax.recipes import own_data
    from kd_jax.train import config_validation, setup
    from kd_jax.train.config_validation import ConfigError
    models.import_model_file(model_file)
    source = models.create("user_net", 1000, rngs=nnx.Rngs(7))
    rng = np.random.default_rng(0)   # as trained: BatchNorm statistics away from 0 and 1
    for _, variable in nnx.to_flat_state(nnx.state(source)):
        variable.set_value(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
    path = str(tmp_path / "imagenet_user_net")
    convert.save_converted(source, path, {"arch": "user_net", "num_classes": 1000})
    config = own_data.teacher_config("user_net")
    config.student.init_from = path
    model = setup.init_from(config, 4, seed=3)
    fresh = models.create("user_net", 4, rngs=nnx.Rngs(3))
    got, want, fresh_state = (dict(nnx.to_flat_state(nnx.state(m)))
                              for m in (model, source, fresh))
    for key, variable in got.items():
        expected = fresh_state[key] if key[0] == "fc" else want[key]
        np.testing.assert_array_equal(np.asarray(variable[...]), np.asarray(expected[...]),
                                      err_msg=str(key))
    assert got[("fc", "kernel")].shape == (16, 4)
    config.student.init_from = "published"   # a fetched published teacher of student.arch
    with pytest.raises(ConfigError, match=r"^student.init_from='published': no published "
                                          r"teacher for arch 'user_net'"):
        config_validation.init_from_path(config)


def test_decoding_imports_no_tensorflow(shapes_folder, tmp_path):
    """A folder is read without TensorFlow (a fresh interpreter: nothing imported by other
    tests), worker processes included."""
    import subprocess
    root, _ = shapes_folder
    code = ("import json, sys\n"
            "from kd_jax import data\n"
            "if __name__ == '__main__':\n"
            f"    ds = data.get_dataset({{'name': 'image_folder', 'data_dir': {root!r}, "
            "'val_fraction': 0.25, 'in_memory': False, 'workers': 1})\n"
            "    next(ds.train_batches(1, 6, 0))\n"
            "    ds.close()\n"
            "    print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorflow_datasets'))))\n")
    script = tmp_path / "read.py"
    script.write_text(code)
    env = dict(os.environ, KD_JAX_CACHE=str(tmp_path / "cache"), PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("arch, size", [("resnet8x4", 24), ("vgg8", 40), ("ShuffleV1", 48),
                                        ("MobileNetV2", 64), ("imagenet_ResNet18", 96)])
def test_zoo_models_take_the_data_classes_and_size(arch, size):
    """A zoo model built for 7 classes runs on (size, size) images other than its design
    size: (B, 7) logits (traced with eval_shape: nothing is computed)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from kd_jax import models

    def forward(images):
        model = models.create(arch, 7, rngs=nnx.Rngs(0))
        model.eval()
        return model(images)[0]

    logits = jax.eval_shape(forward, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
    assert logits.shape == (2, 7)
