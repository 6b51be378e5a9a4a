"""Image transforms (torchvision.transforms.v2): training augmentation and evaluation.

Presets, for small datasets of material surfaces:

* none: the evaluation transform (resize, centre crop).
* light: random resized crop (60-100 % of the area) and horizontal flips.
* strong: random resized crop (30-100 %), horizontal and vertical flips, rotation up to 30
  degrees, colour jitter and, on every third image, a slight blur. Surfaces have no "up", so
  flips and rotations keep the label; colour jitter and blur mimic lighting and focus.

An explicit list applies its operations with the strong preset's settings, crop first; without
random_resized_crop the image is resized and centre-cropped first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "light": ("random_resized_crop", "hflip"),
    "strong": ("random_resized_crop", "hflip", "vflip", "rotation", "color_jitter", "blur"),
}
#: The order operations are applied in, whatever order a list gives them.
OPERATIONS = ("random_resized_crop", "hflip", "vflip", "rotation", "color_jitter", "blur")


def train_transform(image_size: int, augmentation: str | Sequence[str]) -> v2.Compose:
    if isinstance(augmentation, str):
        ops = PRESETS[augmentation]
        crop_scale = (0.3, 1.0) if augmentation == "strong" else (0.6, 1.0)
    else:
        unknown = set(augmentation) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown augmentation {sorted(unknown)}")
        ops = tuple(op for op in OPERATIONS if op in augmentation)
        crop_scale = (0.3, 1.0)
    steps: list[v2.Transform] = [v2.ToImage()]
    if "random_resized_crop" in ops:
        steps.append(v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True))
    else:
        steps += _resize_and_crop(image_size)
    if "hflip" in ops:
        steps.append(v2.RandomHorizontalFlip())
    if "vflip" in ops:
        steps.append(v2.RandomVerticalFlip())
    if "rotation" in ops:
        steps.append(v2.RandomRotation(30))
    if "color_jitter" in ops:
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03))
    if "blur" in ops:
        steps.append(v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.5))], p=1 / 3))
    return v2.Compose([*steps, *_to_normalised_tensor()])


def eval_transform(image_size: int) -> v2.Compose:
    return v2.Compose([v2.ToImage(), *_resize_and_crop(image_size), *_to_normalised_tensor()])


def _resize_and_crop(image_size: int) -> list[v2.Transform]:
    return [v2.Resize(round(image_size / 0.875), antialias=True), v2.CenterCrop(image_size)]


def _to_normalised_tensor() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
