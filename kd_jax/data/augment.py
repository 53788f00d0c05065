"""Batch augmentations in numpy (vectorised over the batch, no per-example Python loop).

All images are NHWC. Geometry (pad, crop, flip) runs on uint8 so that it is cheap and so that
padding happens BEFORE normalisation, exactly like torchvision's
``RandomCrop(32, padding=4) -> RandomHorizontalFlip() -> ToTensor() -> Normalize(mean, std)``:
a zero-padded pixel ends up as ``(0 - mean) / std`` after normalisation, not 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Per-channel statistics on [0, 1] (RGB).
# CIFAR-10: the per-channel mean and std of its 50000 training images (torchvision's examples).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fashion-MNIST: computed once over the 60000 original 28x28 training images on [0, 1]
# (mean 0.28604, std 0.35302) and repeated over the 3 channels the CIFAR zoo expects.
FASHION_MNIST_MEAN = (0.2860, 0.2860, 0.2860)
FASHION_MNIST_STD = (0.3530, 0.3530, 0.3530)


@dataclasses.dataclass(frozen=True)
class CropFlipParams:
    """Random parameters of a pad-crop-flip for a batch of B images.

    offset_y, offset_x: int (B,), top-left corner of the crop in the padded image, in
    [0, 2 * pad]; flip: bool (B,), mirror the crop horizontally.
    """

    offset_y: np.ndarray
    offset_x: np.ndarray
    flip: np.ndarray

    def __getitem__(self, index) -> "CropFlipParams":
        """Parameters of a sub-batch (e.g. this host's slice of the global batch)."""
        return CropFlipParams(self.offset_y[index], self.offset_x[index], self.flip[index])


def sample_crop_flip(rng: np.random.Generator, batch_size: int, pad: int) -> CropFlipParams:
    """Draws torchvision RandomCrop(size, padding=pad) + RandomHorizontalFlip(0.5) parameters.

    torchvision draws the offset uniformly from {0, ..., 2 * pad} on each axis.
    """
    offset_y = rng.integers(0, 2 * pad + 1, size=batch_size)
    offset_x = rng.integers(0, 2 * pad + 1, size=batch_size)
    flip = rng.random(batch_size) < 0.5
    return CropFlipParams(offset_y, offset_x, flip)


def pad_crop_flip(images: np.ndarray, params: CropFlipParams, pad: int) -> np.ndarray:
    """Zero-pads each image by `pad`, takes an (H, W) crop at the given offsets, maybe flips it.

    images: (B, H, W, C) any dtype (uint8 in the pipelines); returns the same shape and dtype.
    One gather with broadcast row/column index arrays does all B crops and flips at once.
    """
    batch, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = params.offset_y[:, None] + np.arange(height)  # (B, H)
    cols = params.offset_x[:, None] + np.arange(width)  # (B, W)
    # A horizontal flip of the crop reads its columns right to left.
    cols = np.where(params.flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


def crop_flip(images: np.ndarray, params: CropFlipParams, size: tuple[int, int]) -> np.ndarray:
    """torchvision RandomCrop(size) (no padding) + flip: the (h, w) = size window of each
    image at its offsets (offset_y in [0, H - h], offset_x in [0, W - w]), maybe mirrored.

    images: (B, H, W, C) any dtype; returns (B, h, w, C). One gather, as `pad_crop_flip`.
    """
    batch = images.shape[0]
    rows = params.offset_y[:, None] + np.arange(size[0])  # (B, h)
    cols = params.offset_x[:, None] + np.arange(size[1])  # (B, w)
    cols = np.where(params.flip[:, None], cols[:, ::-1], cols)
    return images[np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


def center_crop(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision CenterCrop(size) of (B, H, W, C): top = round((H - h) / 2), likewise left."""
    top = int(round((images.shape[1] - size[0]) / 2))
    left = int(round((images.shape[2] - size[1]) / 2))
    return images[:, top:top + size[0], left:left + size[1]]


def normalize_affine(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """float32 (C,) (scale, shift) with ``(x / 255 - mean) / std == x * scale - shift``.

    The one home of these constants: the host path (`normalize`) computes with them, and the
    on-device path (kd_jax.data.on_device.normalize_table) tabulates what it computes.
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return 1.0 / (255.0 * std), mean / std


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (..., C) in [0, 255] -> float32 ``(x / 255 - mean) / std`` per channel."""
    # One fused multiply-add over the batch: x * (1 / (255 std)) - mean / std.
    scale, shift = normalize_affine(mean, std)
    out = images.astype(np.float32)
    out *= scale
    out -= shift
    return out


def cifar_train_augment(images: np.ndarray, params: CropFlipParams, mean, std,
                        pad: int = 4) -> np.ndarray:
    """CIFAR train transform on a uint8 batch (B, H, W, C): pad, crop, flip, then normalise."""
    return normalize(pad_crop_flip(images, params, pad), mean, std)
