"""kd_jax.data paths through TensorFlow (the [tf] extra): the tf.data pipeline of imagenet2012
and caltech_birds2011 on fake builders (small smooth images, and photo-sized textured ones that
the pipelines shrink, as on the real data).

Expected images come from PIL, what torchvision's Resize uses on PIL images (BILINEAR, whose
filter widens with the scale factor when shrinking: antialiasing), never from the code under
test. Tolerance: PIL returns uint8 (rounded, after a uint8 intermediate pass) and the pipeline
float32, so they differ by up to 1 grey level: allowed max 1.5 grey levels and mean 0.5 (in
normalised units: / 255 / std). A resize without antialiasing is off by tens of levels on
the textured images when shrinking.
"""

import math
import re
import types

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf  # core dependencies: a failed import is a failure, not a skip
import tensorflow_datasets as tfds

from kd_jax import data
from kd_jax.data import imagenet, tfds_io

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


@pytest.fixture(scope="module")
def cub():
    return imagenet.TFDSImageDataset("caltech_birds2011", FakeBuilder({"train": 10, "test": 5}))


def test_cub_eval_matches_pil_and_pads(cub):
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
def cub_photos():
    return imagenet.TFDSImageDataset("caltech_birds2011",
                                     PhotoSizeBuilder({"train": 8, "test": 4}))


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


def test_cub_train_deterministic_resumable_and_cropped(cub_photos):
    cub = cub_photos
    first = list(cub.train_batches(1, 4, seed=3))
    resumed = list(cub.train_batches(1, 4, seed=3, start_step=1))
    assert len(first) == 2 and len(resumed) == 1
    assert first[0]["image"].shape == (4, 224, 224, 3) and first[0]["label"].dtype == np.int32
    np.testing.assert_array_equal(first[1]["image"], resumed[0]["image"])
    np.testing.assert_array_equal(first[1]["label"], resumed[0]["label"])
    other = next(cub.train_batches(2, 4, seed=3))
    assert not np.array_equal(first[0]["image"], other["image"])
    # Each image is a 224 window (possibly mirrored) of the 256x256 (PIL) resize of its
    # photo-sized source.
    for image, label in zip(first[0]["image"], first[0]["label"]):
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
    assert batch["image"].shape == (4, 224, 224, 3) and np.isfinite(batch["image"]).all()
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
    builder = FakeBuilder({"train": 10, "test": 5})
    hosts = [imagenet.TFDSImageDataset("caltech_birds2011", builder, process_index=i,
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
