"""kd_jax.data paths through TensorFlow (the [tf] extra): the tf.data pipeline of imagenet2012
and the resized cache of caltech_birds2011 on fake builders (small smooth images, and
photo-sized textured ones that the pipelines shrink, as on the real data). Train batches are
uint8 with their flips; they are finished (mirrored, normalised) as the jitted step does
(kd_jax.data.on_device.finish_host_batch) before they are compared.

Expected images come from PIL, what torchvision's Resize uses on PIL images (BILINEAR, whose
filter widens with the scale factor when shrinking: antialiasing), never from the code under
test. Tolerance: PIL returns uint8 (rounded, after a uint8 intermediate pass) and the pipeline
float32, so they differ by up to 1 grey level: allowed max 1.5 grey levels and mean 0.5 (in
normalised units: / 255 / std). A resize without antialiasing is off by tens of levels on
the textured images when shrinking.
"""

import math
import os
import re
import types

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf  # core dependencies: a failed import is a failure, not a skip
import tensorflow_datasets as tfds

import jax

from kd_jax import data
from kd_jax.data import cub, imagenet, on_device, tfds_io
from kd_jax.data.base import DataFileError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def smooth_image(height, width, index):
    """A smooth uint8 image (bilinear resizers agree on it up to rounding)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [127 + 120 * np.sin(x / (9 + index) + c) * np.cos(y / 13 - c) for c in range(3)]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


class FakeBuilder:
    """Stands in for a prepared tfds builder: `name[a:b]` splits of smooth images, label = index.

    Images are (60 + 3 i) x (80 - 2 i); JPEG bytes when the image decoder is skipped.
    """

    def __init__(self, sizes):
        self.info = types.SimpleNamespace(
            splits={name: types.SimpleNamespace(num_examples=n) for name, n in sizes.items()})

    @staticmethod
    def image(index):
        return smooth_image(60 + 3 * index, 80 - 2 * index, index)

    def as_dataset(self, split, shuffle_files, decoders, read_config):
        del shuffle_files, read_config
        start, stop = map(int, re.fullmatch(r"\w+\[(\d+):(\d+)\]", split).groups())
        skip_decoding = decoders is not None
        images = [self.image(i) for i in range(start, stop)]
        if skip_decoding:
            images = [tf.io.encode_jpeg(im, quality=100).numpy() for im in images]
        labels = np.arange(start, stop, dtype=np.int64)
        return tf.data.Dataset.from_generator(
            lambda: ({"image": im, "label": lab} for im, lab in zip(images, labels)),
            output_signature={
                "image": (tf.TensorSpec((), tf.string) if skip_decoding
                          else tf.TensorSpec((None, None, 3), tf.uint8)),
                "label": tf.TensorSpec((), tf.int64)})


def textured_image(height, width, seed):
    """A photo-sized uint8 image with detail at every frequency (half smooth, half noise):
    shrinking it with and without antialiasing gives clearly different results."""
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3))
    return ((smooth_image(height, width, seed).astype(np.int64) + noise) // 2).astype(np.uint8)


class PhotoSizeBuilder(FakeBuilder):
    """FakeBuilder with real-size textured images (CUB and ImageNet photos are ~500 x 375)."""

    SIZES = ((375, 500), (500, 333), (333, 500), (480, 640))

    @staticmethod
    def image(index):
        height, width = PhotoSizeBuilder.SIZES[index % len(PhotoSizeBuilder.SIZES)]
        return textured_image(height, width, index)


def pil_resize(image, height, width):
    """PIL.Image.resize((width, height), BILINEAR) of a uint8 image, as float32."""
    return np.asarray(PIL.Image.fromarray(image).resize((width, height), PIL.Image.BILINEAR),
                      np.float32)


def normalise(pixels):
    return (pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


# The tolerance of the module docstring, in normalised units (smallest std: the largest).
MAX_LEVELS, MEAN_LEVELS = 1.5, 0.5


def assert_matches_pil(ours, expected, what=""):
    diff = np.abs(np.asarray(ours, np.float64) - expected) * 255.0 * IMAGENET_STD
    assert diff.max() <= MAX_LEVELS, f"{what}: max {diff.max():.2f} grey levels from PIL"
    assert diff.mean() <= MEAN_LEVELS, f"{what}: mean {diff.mean():.3f} grey levels from PIL"


def pil_cub_eval(image):
    """torchvision Resize((256, 256)) + CenterCrop(224) + ToTensor + Normalize (ImageNet)."""
    return normalise(pil_resize(image, 256, 256)[16:240, 16:240])


def finish(batch, ds):
    """The step's finish of a uint8 train batch (mirror where "flip", normalise), jitted."""
    finisher = on_device.host_batch_finisher(ds)
    return np.asarray(jax.jit(finisher)(batch)["image"])


def cached_cub(builder, directory):
    """The CUB dataset of `builder` through its resized cache, built in `directory`."""
    cub.build(builder, str(directory), threads=2)
    return cub.CUBDataset(str(directory))


@pytest.fixture(scope="module")
def cub_small(tmp_path_factory):
    return cached_cub(FakeBuilder({"train": 10, "test": 5}), tmp_path_factory.mktemp("cub"))


def test_cub_eval_matches_pil_and_pads(cub_small):
    cub = cub_small
    assert cub.info == data.DatasetInfo("caltech_birds2011", 200, (224, 224, 3), 10, 5)
    batches = list(cub.eval_batches(4))
    assert len(batches) == 2
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]),
                                  [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:5], range(5))
    np.testing.assert_array_equal(batches[1]["image"][1:], 0.0)
    for i in range(2):  # small sources: the resize enlarges them
        assert_matches_pil(batches[0]["image"][i], pil_cub_eval(FakeBuilder.image(i)), f"{i}")


@pytest.fixture(scope="module")
def cub_photos(tmp_path_factory):
    return cached_cub(PhotoSizeBuilder({"train": 8, "test": 4}),
                      tmp_path_factory.mktemp("cub_photos"))


def test_cub_eval_shrinks_like_pil(cub_photos):
    """Real-size sources (375x500, 500x333, ...) -> 256x256: the resize shrinks, antialiased."""
    (batch,) = list(cub_photos.eval_batches(4))
    for i, image in enumerate(batch["image"]):
        assert_matches_pil(image, pil_cub_eval(PhotoSizeBuilder.image(i)),
                           f"source {PhotoSizeBuilder.SIZES[i]}")


@pytest.mark.parametrize("source,size", [((375, 500), (224, 224)), ((500, 333), (256, 170)),
                                         ((300, 900), (224, 224)), ((120, 100), (224, 224))])
def test_resize_matches_pil_bilinear(source, size):
    """The pipelines' one resize (also the ImageNet train crop's) against PIL, shrinking (by up
    to 4x, anisotropically) and enlarging."""
    image = textured_image(*source, seed=7)
    ours = imagenet._resize(tf.constant(image), list(size)).numpy()
    assert ours.shape == size + (3,) and ours.dtype == np.float32
    diff = np.abs(ours.astype(np.float64) - pil_resize(image, *size))
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())


@pytest.mark.parametrize("source,size", [((375, 500), (224, 224)), ((120, 100), (224, 224))])
def test_resize_rounded_to_uint8_as_pil_rounds(source, size):
    """What the pipelines send (resize_uint8: rounded half up, as PIL's uint8 output) is
    closer to PIL than the float resize: at most 1 grey level, most pixels identical."""
    image = textured_image(*source, seed=7)
    pil = pil_resize(image, *size)
    rounded = imagenet.resize_uint8(tf.constant(image), list(size)).numpy()
    float_diff = np.abs(imagenet._resize(tf.constant(image), list(size)).numpy() - pil)
    diff = np.abs(rounded.astype(np.float64) - pil)
    assert rounded.dtype == np.uint8 and diff.max() <= 1
    assert diff.mean() < 0.8 * float_diff.mean() and (diff == 0).mean() > 0.75


def test_cub_train_deterministic_resumable_and_cropped(cub_photos):
    cub = cub_photos
    first = list(cub.train_batches(1, 4, seed=3))
    resumed = list(cub.train_batches(1, 4, seed=3, start_step=1))
    assert len(first) == 2 and len(resumed) == 1
    assert first[0]["image"].shape == (4, 224, 224, 3) and first[0]["image"].dtype == np.uint8
    assert first[0]["label"].dtype == np.int32 and first[0]["flip"].dtype == bool
    for key in ("image", "label", "flip"):
        np.testing.assert_array_equal(first[1][key], resumed[0][key])
    other = next(cub.train_batches(2, 4, seed=3))
    assert not np.array_equal(first[0]["image"], other["image"])
    # Each finished image is a 224 window (possibly mirrored) of the 256x256 (PIL) resize of
    # its photo-sized source.
    for image, label in zip(finish(first[0], cub), first[0]["label"]):
        full = normalise(pil_resize(PhotoSizeBuilder.image(label), 256, 256))
        # A mirrored window of `full` is a window of the mirrored `full`; locate it by the
        # 8x8 corner (the noise makes the match unique), then compare the whole crop.
        candidates = [src[oy:oy + 224, ox:ox + 224] for src in (full, full[:, ::-1])
                      for oy in range(33) for ox in range(33)]
        best = min(candidates, key=lambda w: np.abs(w[:8, :8] - image[:8, :8]).mean())
        assert_matches_pil(image, best, f"train crop of example {label}")


def test_imagenet_pipeline_shapes_and_eval_resize():
    dataset = imagenet.TFDSImageDataset("imagenet2012",
                                        FakeBuilder({"train": 8, "validation": 3}))
    assert dataset.info.num_classes == 1000 and dataset.steps_per_epoch(4) == 2
    batch = next(dataset.train_batches(1, 4, seed=0))
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.uint8
    assert batch["flip"].shape == (4,) and batch["flip"].dtype == bool
    (evaluation,) = list(dataset.eval_batches(4))
    np.testing.assert_array_equal(evaluation["mask"], [1, 1, 1, 0])
    # Resize(256) keeps the aspect ratio: a 60x80 source becomes 256x341, crop the centre.
    source = FakeBuilder.image(0)
    decoded = tf.io.decode_jpeg(tf.io.encode_jpeg(source, quality=100)).numpy()
    expected = normalise(pil_resize(decoded, 256, 341)[16:240, 58:282])
    assert_matches_pil(evaluation["image"][0], expected, "enlarged 60x80")


def test_imagenet_eval_shrinks_like_pil():
    """Photo-sized JPEGs: Resize(256) (short side 256, long side int(256 * long / short), as
    torchvision) then CenterCrop(224) (offsets round((size - 224) / 2)), against PIL on the
    decoded pixels (the JPEG decoder is not what is tested)."""
    dataset = imagenet.TFDSImageDataset("imagenet2012",
                                        PhotoSizeBuilder({"train": 4, "validation": 3}))
    (evaluation,) = list(dataset.eval_batches(4))
    for i in range(3):
        source = PhotoSizeBuilder.image(i)
        decoded = tf.io.decode_jpeg(tf.io.encode_jpeg(source, quality=100)).numpy()
        h, w = decoded.shape[:2]
        short = min(h, w)
        new_h, new_w = (256, int(256 * w / short)) if h == short else (int(256 * h / short), 256)
        top, left = int(round((new_h - 224) / 2)), int(round((new_w - 224) / 2))
        expected = normalise(pil_resize(decoded, new_h, new_w)[top:top + 224, left:left + 224])
        assert_matches_pil(evaluation["image"][i], expected, f"source {(h, w)} -> {(new_h, new_w)}")


def test_tfds_host_slices_partition_the_splits():
    builder = FakeBuilder({"train": 10, "validation": 5})
    hosts = [imagenet.TFDSImageDataset("imagenet2012", builder, process_index=i,
                                       process_count=2) for i in range(2)]
    labels = [np.concatenate([b["label"][b["mask"] > 0] for b in h.eval_batches(4)])
              for h in hosts]
    np.testing.assert_array_equal(np.concatenate(labels), range(5))
    assert [len(list(h.eval_batches(4))) for h in hosts] == [2, 2]  # same step count
    train = [np.concatenate([b["label"] for b in h.train_batches(1, 4, seed=0)]) for h in hosts]
    assert set(train[0]) <= set(range(5)) and set(train[1]) <= set(range(5, 10))


def _torchvision_rrc_window(height, width, uniforms):
    """torchvision RandomResizedCrop.get_params written out in Python, driven by the given
    uniform draws (area, log-ratio, top, left per attempt) instead of torch's RNG."""
    area = height * width
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for u_area, u_ratio, u_top, u_left in uniforms:
        target_area = area * (0.08 + (1.0 - 0.08) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return [int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w]
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, int(round(width / (3 / 4)))
    elif in_ratio > 4 / 3:
        h, w = height, int(round(height * (4 / 3)))
    else:
        w, h = width, height
    return [(height - h) // 2, (width - w) // 2, h, w]


def test_imagenet_random_resized_crop_follows_torchvision():
    """Same draws -> the same window as torchvision's algorithm, fallback included."""
    import tensorflow as tf
    from kd_jax.data import imagenet

    rng = np.random.default_rng(0)
    shapes = [(375, 500), (500, 333), (224, 224), (64, 900), (900, 40), (1, 1), (3, 1000)]
    exact = total = 0
    for height, width in shapes:
        for _ in range(25):
            uniforms = rng.random((imagenet.RRC_ATTEMPTS, 4), dtype=np.float32)
            got = imagenet.random_resized_crop_window(height, width, tf.constant(uniforms))
            expected = _torchvision_rrc_window(height, width, uniforms.astype(np.float64))
            top, left, h, w = got.numpy().tolist()
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            # float32 (TF) and float64 (reference) can round a length differently when it
            # lands within float32 precision of .5: allow 1 pixel there, and only rarely.
            np.testing.assert_allclose(got.numpy(), expected, atol=1)
            exact += got.numpy().tolist() == expected
            total += 1
    assert exact >= 0.97 * total, f"only {exact}/{total} windows identical"


# --- uint8 to the device, finished in the step; bounded threads; CUB's resized cache -------

def test_flip_draw_is_tf_stateless_flip_decision():
    """imagenet_train sends the flip instead of applying it: the decision equals the one
    tf.image.stateless_random_flip_left_right takes with the same seed (the same stream)."""
    image = tf.constant(np.arange(2 * 3 * 1, dtype=np.uint8).reshape(2, 3, 1))
    decisions = []
    for i in range(40):
        seed = tf.constant([7, i], tf.int64)
        flipped = tf.image.stateless_random_flip_left_right(image, seed).numpy()
        expected = bool(np.array_equal(flipped, image.numpy()[:, ::-1]))
        assert bool(imagenet.flip_draw(seed)) == expected, i
        decisions.append(expected)
    assert 10 < sum(decisions) < 30


def test_finish_in_the_step_equals_the_normalisation_formula():
    """A uint8 ImageNet batch finished in the step (mirror, then x * scale - shift) against
    the formula in float64, (x / 255 - mean) / std rounded once to float32, and against the
    host's former float32 formula (x - 255 mean) / (255 std): float32 rounding apart."""
    dataset = imagenet.TFDSImageDataset("imagenet2012", FakeBuilder({"train": 8,
                                                                     "validation": 2}))
    batch = next(dataset.train_batches(1, 8, seed=1))
    assert 0 < batch["flip"].sum() < 8
    got = finish(batch, dataset)
    pixels = np.where(batch["flip"][:, None, None, None], batch["image"][:, :, ::-1],
                      batch["image"]).astype(np.float64)
    exact = (pixels / 255.0 - IMAGENET_MEAN.astype(np.float64)) / IMAGENET_STD
    former = ((pixels.astype(np.float32) - IMAGENET_MEAN * np.float32(255))
              / (IMAGENET_STD * np.float32(255)))
    assert got.dtype == np.float32
    # One rounding of values below 2.7 in magnitude: within 2 ulp of 2.7 (4.8e-7).
    np.testing.assert_allclose(got, exact, rtol=0, atol=5e-7)
    np.testing.assert_allclose(got, former, rtol=0, atol=5e-7)


def test_tf_data_threads_are_bounded_per_process(monkeypatch):
    dataset = imagenet.TFDSImageDataset("imagenet2012", FakeBuilder({"train": 8,
                                                                     "validation": 2}),
                                        threads=3)
    options = dataset.train_dataset(1, 4, seed=0).options()
    assert options.threading.private_threadpool_size == 3
    assert options.threading.max_intra_op_parallelism == 1
    # Automatic: an unbound process gets its share of the host; a bound one its own cores.
    monkeypatch.setattr(imagenet.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(imagenet.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert [imagenet.auto_threads(n) for n in (1, 8, 32)] == [16, 2, 1]
    monkeypatch.setattr(imagenet.os, "sched_getaffinity", lambda pid: {4, 5, 6, 7})
    assert imagenet.auto_threads(8) == 4


class CountingBuilder(FakeBuilder):
    """A FakeBuilder prepared in data_dir (a dataset_info.json there) that counts its reads."""

    def __init__(self, sizes, data_dir, info=b'{"version": "2.1.0"}'):
        super().__init__(sizes)
        self.data_dir = str(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        with open(os.path.join(self.data_dir, "dataset_info.json"), "wb") as fh:
            fh.write(info)
        self.reads = 0

    def as_dataset(self, *args, **kwargs):
        self.reads += 1
        return super().as_dataset(*args, **kwargs)


def test_cub_is_resized_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """The first load decodes and resizes both splits into the cache; the next ones read it
    (no tfds, no TensorFlow: prepared_builder is not called); preparing the data again (a new
    dataset_info.json) or an incomplete cache builds it again."""
    monkeypatch.setenv("KD_JAX_CACHE", str(tmp_path / "cache"))
    data_dir = tmp_path / "tfds"
    builder = CountingBuilder({"train": 6, "test": 3}, data_dir / "caltech_birds2011" / "2.1.0")
    calls = []
    monkeypatch.setattr(imagenet, "prepared_builder",
                        lambda name, d: calls.append(name) or builder)
    first = cub.load(str(data_dir), threads=2)
    assert (calls, builder.reads) == (["caltech_birds2011"], 2)
    assert first.directory.startswith(str(tmp_path / "cache" / "caltech_birds2011"))
    images = np.load(os.path.join(first.directory, "train_images.npy"), mmap_mode="r")
    assert images.shape == (6, 256, 256, 3) and images.dtype == np.uint8
    np.testing.assert_allclose(images[2], pil_resize(FakeBuilder.image(2), 256, 256), atol=1)

    again = cub.load(str(data_dir), threads=2, limit_train=4)
    assert (calls, builder.reads) == (["caltech_birds2011"], 2)
    assert again.directory == first.directory and again.info.num_train == 4
    assert next(again.train_batches(1, 4, seed=0))["image"].shape == (4, 224, 224, 3)

    with open(os.path.join(builder.data_dir, "dataset_info.json"), "wb") as fh:
        fh.write(b'{"version": "2.1.0", "prepared": "again"}')
    rebuilt = cub.load(str(data_dir), threads=2)
    assert builder.reads == 4 and rebuilt.directory != first.directory

    os.remove(os.path.join(rebuilt.directory, cub.MANIFEST))   # e.g. killed while building
    cub.load(str(data_dir), threads=2)
    assert builder.reads == 6
    assert not [f for f in os.listdir(rebuilt.directory) if ".part-" in f]


def test_cub_cache_build_that_fails_leaves_nothing(tmp_path):
    """A split shorter than its info says: one clear error, no part file, no manifest."""
    class Short(FakeBuilder):
        def as_dataset(self, split, **kwargs):
            return super().as_dataset(split, **kwargs).take(2)

    with pytest.raises(DataFileError, match="other than the 6 examples"):
        cub.build(Short({"train": 6, "test": 3}), str(tmp_path), threads=1)
    assert os.listdir(tmp_path) == []
