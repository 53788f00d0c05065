"""kd_jax.data: IDX reader, CIFAR batch augmentation, determinism, eval padding, host sharding,
prefetch onto a mesh. Expected values come from per-example numpy references written here."""

import gzip
import threading
import os
import struct

import jax
import numpy as np
import pytest

from kd_jax import data
from kd_jax.data import augment, fashion_mnist

CIFAR_MEAN = np.array([0.5071, 0.4867, 0.4408], np.float32)
CIFAR_STD = np.array([0.2675, 0.2565, 0.2761], np.float32)


def reference_train_transform(image, offset_y, offset_x, flip, mean=CIFAR_MEAN, std=CIFAR_STD):
    """torchvision RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, one
    image (H, W, C) uint8 at the given random draws."""
    height, width, channels = image.shape
    padded = np.zeros((height + 8, width + 8, channels), np.uint8)
    padded[4:4 + height, 4:4 + width] = image
    crop = padded[offset_y:offset_y + height, offset_x:offset_x + width]
    if flip:
        crop = crop[:, ::-1]
    return (crop.astype(np.float32) / 255.0 - mean) / std


def reference_eval_transform(image, mean=CIFAR_MEAN, std=CIFAR_STD):
    return (image.astype(np.float32) / 255.0 - mean) / std


def make_dataset(num_train=40, num_test=21, size=8, process_index=0, process_count=1):
    """An in-memory dataset whose train labels are the example indices (to track order)."""
    rng = np.random.default_rng(123)
    train = rng.integers(0, 256, (num_train, size, size, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (num_test, size, size, 3), dtype=np.uint8)
    info = data.DatasetInfo("toy", num_train, (size, size, 3), num_train, num_test)
    dataset = data.InMemoryDataset(info, train, np.arange(num_train), test, np.arange(num_test),
                                   mean=CIFAR_MEAN, std=CIFAR_STD, process_index=process_index,
                                   process_count=process_count)
    return dataset, train, test


# ---------------------------------------------------------------- IDX files / Fashion-MNIST


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_dir(directory, num_train=6, num_test=5, gz=True):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte{ext}"), images, 2051)
        write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte{ext}"), labels, 2049)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_roundtrip(tmp_path, suffix):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 251
    labels = np.array([7, 0, 9])
    write_idx(str(tmp_path / f"img{suffix}"), images, 2051)
    write_idx(str(tmp_path / f"lab{suffix}"), labels, 2049)
    got_images = fashion_mnist.read_idx(str(tmp_path / f"img{suffix}"))
    got_labels = fashion_mnist.read_idx(str(tmp_path / f"lab{suffix}"))
    assert got_images.dtype == np.uint8 and got_images.shape == (3, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    first_two = fashion_mnist.read_idx(str(tmp_path / f"img{suffix}"), limit=2)
    np.testing.assert_array_equal(first_two, images[:2])


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(struct.pack(">II", 0x12345678, 1) + b"\0")
    with pytest.raises(ValueError, match="not an IDX file"):
        fashion_mnist.read_idx(str(bad_magic))
    truncated = tmp_path / "short"
    truncated.write_bytes(struct.pack(">IIII", 2051, 2, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="expected"):
        fashion_mnist.read_idx(str(truncated))


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEBIAN_DIR),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_files_and_statistics():
    files = fashion_mnist.find_idx_files(fashion_mnist.DEBIAN_DIR)
    images = fashion_mnist.read_idx(files["train"][0])
    labels = fashion_mnist.read_idx(files["train"][1])
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 6000))
    assert fashion_mnist.read_idx(files["test"][0]).shape == (10000, 28, 28)
    # The hard-coded normalisation constants are the train-set statistics on [0, 1].
    pixels = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(augment.FASHION_MNIST_MEAN[0], pixels.mean(), atol=1e-4)
    np.testing.assert_allclose(augment.FASHION_MNIST_STD[0], pixels.std(), atol=1e-4)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_dir_layout(tmp_path, gz):
    arrays = write_fashion_dir(str(tmp_path), gz=gz)
    dataset = data.get_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path)})
    assert dataset.info == data.DatasetInfo("fashion_mnist", 10, (32, 32, 3), 6, 5)
    (batch,) = list(dataset.eval_batches(5))
    mean, std = np.float32(0.2860), np.float32(0.3530)
    # 28x28 centred in a 32x32 zero border, the grey channel repeated 3 times.
    expected = np.zeros((5, 32, 32), np.float32)
    expected[:, 2:30, 2:30] = arrays["t10k"][0]
    expected = (expected / 255.0 - mean) / std
    np.testing.assert_allclose(batch["image"], np.repeat(expected[..., None], 3, -1), atol=1e-5)
    np.testing.assert_array_equal(batch["label"], arrays["t10k"][1])
    train = next(dataset.train_batches(1, 2, seed=0))
    assert train["image"].shape == (2, 32, 32, 3) and train["label"].dtype == np.int32


@pytest.fixture
def attempts(monkeypatch):
    """Records (and refuses) every network connection, tfds download and tfds_io builder
    preparation; a test asserts on the list, so an attempt counts even if the code under test
    swallows the error."""
    import socket

    import tensorflow_datasets as tfds
    from kd_jax.data import tfds_io

    made = []

    def refusing(what, original=None):
        def call(*args, **kwargs):
            made.append(what)
            if original is not None:
                return original(*args, **kwargs)
            raise OSError(f"test: {what} refused")
        return call

    monkeypatch.setattr(socket.socket, "connect", refusing("connect"))
    monkeypatch.setattr(socket, "create_connection", refusing("create_connection"))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        refusing("download_and_prepare"))
    monkeypatch.setattr(tfds_io, "prepared_builder",
                        refusing("prepared_builder", tfds_io.prepared_builder))
    return made


def test_fashion_mnist_missing_data_fails_before_tfds(tmp_path, attempts):
    """An explicit data_dir without IDX files or a tfds directory fails at once: tfds is not
    consulted at all (so no download and no retry loop can run), and nothing is written."""
    with pytest.raises(data.DataNotFoundError) as error:
        data.get_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path)})
    assert attempts == []
    message = str(error.value)
    assert str(tmp_path) in message
    assert "dataset-fashion-mnist" in message and "data_dir" in message
    assert os.listdir(tmp_path) == []  # nothing written into the user's directory


def test_fashion_mnist_unprepared_tfds_dir_is_never_downloaded_into(tmp_path, attempts):
    """A data_dir holding an unprepared tfds fashion_mnist directory: tfds is asked whether
    it is prepared, and the answer "no" is an error, not a download (no network touched)."""
    (tmp_path / "fashion_mnist").mkdir()
    with pytest.raises(data.DataNotFoundError, match="downloading is disabled"):
        data.get_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path)})
    assert attempts == ["prepared_builder"]


def test_limits_keep_the_first_examples(tmp_path):
    arrays = write_fashion_dir(str(tmp_path), num_train=6, num_test=5)
    dataset = data.get_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path),
                                "limit_train": 4, "limit_test": 3})
    assert (dataset.info.num_train, dataset.info.num_test) == (4, 3)
    (batch,) = list(dataset.eval_batches(3))
    np.testing.assert_array_equal(batch["label"], arrays["t10k"][1][:3])


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="cifar10, cifar100, imagenet2012, caltech_birds2011, "
                                         "fashion_mnist, synthetic"):
        data.get_dataset({"name": "mnist"})


# ---------------------------------------------------------------- CIFAR augmentation


def test_crop_into_padding_gives_normalised_zero():
    image = np.full((1, 32, 32, 3), 200, np.uint8)
    # Offset (0, 0): the crop's first 4 rows and columns are padding.
    params = augment.CropFlipParams(np.array([0]), np.array([0]), np.array([False]))
    out = augment.cifar_train_augment(image, params, CIFAR_MEAN, CIFAR_STD)[0]
    padded_value = (0.0 - CIFAR_MEAN) / CIFAR_STD
    np.testing.assert_allclose(out[:4, :, :], np.broadcast_to(padded_value, (4, 32, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(out[:, :4, :], np.broadcast_to(padded_value, (32, 4, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(out[4:, 4:], np.broadcast_to((200 / 255 - CIFAR_MEAN) / CIFAR_STD,
                                                            (28, 28, 3)), rtol=1e-6)


def test_flip_mirrors_columns():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    params = augment.CropFlipParams(np.array([4, 4]), np.array([4, 4]), np.array([True, False]))
    out = augment.pad_crop_flip(images, params, pad=4)
    np.testing.assert_array_equal(out[0], images[0, :, ::-1])
    np.testing.assert_array_equal(out[1], images[1])


def test_batch_augmentation_matches_per_example_reference():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    params = augment.sample_crop_flip(rng, 64, pad=4)
    assert params.offset_y.min() >= 0 and params.offset_y.max() <= 8
    assert params.flip.any() and not params.flip.all()
    out = augment.cifar_train_augment(images, params, CIFAR_MEAN, CIFAR_STD)
    assert out.dtype == np.float32 and out.shape == images.shape
    expected = np.stack([reference_train_transform(images[i], params.offset_y[i],
                                                   params.offset_x[i], params.flip[i])
                         for i in range(64)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- train / eval iteration


def test_train_batch_is_reference_augmentation_of_the_indexed_images():
    dataset, train, _ = make_dataset()
    batch = next(dataset.train_batches(epoch=3, global_batch_size=8, seed=5))
    index = batch["label"]  # labels are example indices
    images = batch["image"]
    # Each output must be some crop/flip of its source image: search the 9 x 9 x 2 draws.
    for i in range(8):
        candidates = [reference_train_transform(train[index[i]], oy, ox, f)
                      for oy in range(9) for ox in range(9) for f in (False, True)]
        assert min(np.abs(c - images[i]).max() for c in candidates) < 1e-5


def test_epoch_is_a_permutation_without_remainder():
    dataset, _, _ = make_dataset(num_train=40)
    assert dataset.steps_per_epoch(16) == 2  # 40 // 16: the last 8 examples are dropped
    labels = np.concatenate([b["label"] for b in dataset.train_batches(1, 16, seed=0)])
    assert labels.shape == (32,) and len(np.unique(labels)) == 32


def test_determinism_resume_and_epoch_dependence():
    dataset, _, _ = make_dataset()
    first = list(dataset.train_batches(2, 8, seed=7))
    again = list(dataset.train_batches(2, 8, seed=7))
    resumed = list(dataset.train_batches(2, 8, seed=7, start_step=3))
    assert len(first) == 5 and len(resumed) == 2
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    for a, b in zip(first[3:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other_epoch = next(dataset.train_batches(3, 8, seed=7))
    other_seed = next(dataset.train_batches(2, 8, seed=8))
    assert not np.array_equal(first[0]["label"], other_epoch["label"])
    assert not np.array_equal(first[0]["label"], other_seed["label"])


def test_train_arguments_are_validated():
    dataset, _, _ = make_dataset()
    with pytest.raises(ValueError, match="counted from 1"):
        next(dataset.train_batches(0, 8, seed=0))
    with pytest.raises(ValueError, match="start_step"):
        next(dataset.train_batches(1, 8, seed=0, start_step=6))


def test_eval_covers_test_set_once_with_padding_mask():
    dataset, _, test = make_dataset(num_test=21)
    batches = list(dataset.eval_batches(8))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, np.r_[np.ones(21), np.zeros(3)])
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[:21], np.arange(21))
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_allclose(images[:21], reference_eval_transform(test), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(images[21:], 0.0)
    assert all(b["image"].dtype == np.float32 and b["mask"].dtype == np.float32 for b in batches)


def test_host_slices_concatenate_to_the_global_batch():
    whole, _, _ = make_dataset()
    hosts = [make_dataset(process_index=i, process_count=2)[0] for i in range(2)]
    for g, *h in zip(whole.train_batches(4, 8, seed=1),
                     *[d.train_batches(4, 8, seed=1) for d in hosts]):
        assert h[0]["image"].shape == (4, 8, 8, 3)
        for key in ("image", "label"):
            np.testing.assert_array_equal(g[key], np.concatenate([h[0][key], h[1][key]]))
    for g, *h in zip(whole.eval_batches(8), *[d.eval_batches(8) for d in hosts]):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(g[key], np.concatenate([h[0][key], h[1][key]]))
    with pytest.raises(ValueError, match="multiple of the process count"):
        next(hosts[0].train_batches(1, 7, seed=0))


def test_synthetic_dataset_shapes_and_seed():
    config = {"name": "synthetic", "data_dir": None, "num_train": 50, "num_test": 10,
              "image_size": 16, "num_classes": 7}
    dataset = data.get_dataset(config)
    assert dataset.info == data.DatasetInfo("synthetic", 7, (16, 16, 3), 50, 10)
    assert dataset.steps_per_epoch(16) == 3
    batch = next(dataset.train_batches(1, 16, seed=0))
    assert batch["image"].shape == (16, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["label"].max() < 7
    again = next(data.get_dataset(config).train_batches(1, 16, seed=0))
    np.testing.assert_array_equal(batch["image"], again["image"])
    other = next(data.get_dataset({**config, "seed": 1}).train_batches(1, 16, seed=0))
    assert not np.array_equal(batch["image"], other["image"])


# ---------------------------------------------------------------- prefetch_to_mesh


@pytest.fixture(scope="module")
def sharding():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def test_prefetch_to_mesh_gives_sharded_global_arrays(sharding):
    dataset, _, _ = make_dataset()
    host = list(dataset.train_batches(1, 8, seed=0))
    device = list(data.prefetch_to_mesh(dataset.train_batches(1, 8, seed=0), sharding, size=2))
    assert len(device) == len(host)
    for h, d in zip(host, device):
        for key in ("image", "label"):
            assert isinstance(d[key], jax.Array) and d[key].sharding == sharding
            assert d[key].shape == h[key].shape and d[key].dtype == h[key].dtype
            np.testing.assert_array_equal(np.asarray(d[key]), h[key])


def test_prefetch_to_mesh_reraises_producer_errors(sharding):
    def failing():
        yield {"x": np.zeros((2,), np.float32)}
        raise RuntimeError("broken pipeline")

    iterator = data.prefetch_to_mesh(failing(), sharding)
    next(iterator)
    with pytest.raises(RuntimeError, match="broken pipeline"):
        next(iterator)


# Generous bound on joining a producer that has been told to stop (it polls every 0.1 s): not
# a timing check, only a guard against hanging the suite if the thread never ends.
JOIN_TIMEOUT = 60.0


def _counting_source(pulled: list):
    """An endless batch source that counts the batches taken from it."""
    while True:
        pulled.append(1)
        yield {"x": np.zeros((2,), np.float32)}


@pytest.mark.parametrize("advance", [True, False])
def test_prefetch_to_mesh_close_stops_the_producer(sharding, advance):
    pulled = []
    iterator = data.prefetch_to_mesh(_counting_source(pulled), sharding, size=2)
    thread = iterator.thread  # the producer this iterator owns, not any thread by name
    assert isinstance(thread, threading.Thread) and thread.daemon
    if advance:
        next(iterator)
    iterator.close()  # also without a next(): the producer must not outlive its consumer
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
    taken = len(pulled)
    # The queue holds at most 2 batches and the producer one more: it stopped pulling.
    assert taken <= 2 + 1 + int(advance)
    with pytest.raises(StopIteration):
        next(iterator)
    assert len(pulled) == taken
