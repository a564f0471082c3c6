"""From a backbone's pretrained config to the pixels it expects.

Images are decoded once into a square uint8 "store" (shorter side resized to `image_size / crop_pct`,
centre-cropped), the same geometry timm uses for evaluation; `images.py` defines that decode and the crop
for every path (`Preprocessing.recipe()` holds its arguments). From the store:
- evaluation centre-crops `image_size` (exactly timm's eval transform),
- training applies an augmentation preset on uint8 tensors (torchvision transforms v2),
- normalisation to the model's mean/std happens on whole batches, on the device that runs the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from headstart.images import load_square, read_rgb, square_pixels

AUGMENT_PRESETS = ("none", "light", "strong")


@dataclass(frozen=True)
class Preprocessing:
    """What a pretrained model expects: its input size, how its training images were resized, and the
    mean/std it was normalised with (read from the model's pretrained config)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    @property
    def store_size(self) -> int:
        """Side of the decoded square kept per image: the eval resize, so a centre crop gives eval input."""
        return int(math.floor(self.image_size / self.crop_pct))

    def recipe(self) -> dict:
        """The arguments of `images.load_pixels` / `load_input` for this model: what `predict` and export's check
        call, and what an export's sidecar publishes (`input.recipe`) for the serving side."""
        return {"resize_to": self.store_size, "image_size": self.image_size, "interpolation": self.interpolation}

    def with_image_size(self, image_size: int | None) -> Preprocessing:
        return self if image_size is None else replace(self, image_size=int(image_size))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(d["image_size"], tuple(d["mean"]), tuple(d["std"]), d["interpolation"], d["crop_pct"])

    @classmethod
    def from_timm_config(cls, cfg: dict) -> Preprocessing:
        return cls(
            image_size=int(cfg["input_size"][-1]),
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
        )


def suggest_image_size(pre: Preprocessing, median_source_side: float) -> int | None:
    """A smaller working size when the source images are tiny: CIFAR's 32x32 gain nothing from being blown
    up to 224 beyond what ~4x (rounded to 32) gives, and cost (224/128)^2 = 3x the compute."""
    target = int(min(pre.image_size, max(64, round(4 * median_source_side / 32) * 32)))
    return target if target < pre.image_size else None


def to_store(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """A decoded image -> its square store (S x S x 3 uint8): `images.square_pixels` at this model's size."""
    return square_pixels(img, pre.store_size, pre.interpolation)


def read_store(ref: str, pre: Preprocessing, read: Callable[[str], Image.Image] = read_rgb) -> np.ndarray:
    """An image of a data set -> its square store, the step every path caches or repeats: files through
    `images.load_square` (so the reduced-scale JPEG decoding is the same everywhere), images that come from
    elsewhere (an ImageSet's own `read`, e.g. fashion-mnist's arrays) through the same resize."""
    if read is read_rgb:
        return load_square(ref, pre.store_size, pre.interpolation)
    return to_store(read(ref), pre)


def eval_transform(pre: Preprocessing) -> v2.Transform:
    """The store's centre `image_size` crop on C x H x W tensors: torchvision's op, which cuts the same pixels
    as `images.centre_crop` (same rounding; tests/test_imagepath.py holds them together)."""
    return v2.CenterCrop(pre.image_size)


def train_transform(pre: Preprocessing, augment: str) -> v2.Transform:
    """Augmentation presets for small data, applied to uint8 C x H x W tensors.

    `light` is what a few hundred natural photos want: a random crop covering 35-100% of the image,
    horizontal flips, mild colour jitter. `strong` widens every range for when the model still overfits.
    `none` trains on exactly the eval view, which makes frozen features cacheable.
    """
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"augment must be one of {AUGMENT_PRESETS}, got {augment!r}")
    size = pre.image_size
    interp = InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else InterpolationMode.BILINEAR
    if augment == "none":
        return eval_transform(pre)
    if augment == "light":
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=interp, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ])
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.12, 1.0), interpolation=interp, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05),
        v2.RandomGrayscale(p=0.05),
    ])


def normalize_batch(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 N x 3 x H x W (any device) -> float normalised with the model's mean/std, channels_last."""
    mean = torch.tensor(pre.mean, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std, device=images.device).view(1, 3, 1, 1) * 255.0
    out = (images.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last)
