"""Classical texture descriptors for the hybrid model, computed with scikit-image.

Every image is described once, un-augmented, after a centre crop to DESCRIPTOR_SIZE pixels:

* lbp: uniform local binary pattern histograms at two radii, (8 points, radius 1) and
  (16 points, radius 2): 10 + 18 = 28 values. The local micro-structure of a surface.
* gabor: a bank of Gabor filters, 3 frequencies x 4 orientations; the mean and variance of
  each filter's response magnitude: 24 values. Oriented frequency content (grain, weave).
* color: per-channel mean and standard deviation in RGB and in HSV: 12 values.

Descriptors are cached in memory per dataset and, when a cache folder is given, on disk, keyed
by the files' paths, sizes and modification times, so a resumed or repeated run does not
describe the images again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps
from skimage.color import rgb2hsv
from skimage.feature import local_binary_pattern
from skimage.filters import gabor_kernel

DESCRIPTOR_SIZE = 96
DESCRIPTOR_VERSION = 1  # part of the cache key: bump when a descriptor's definition changes

LBP_SETTINGS: tuple[tuple[int, float], ...] = ((8, 1.0), (16, 2.0))
GABOR_FREQUENCIES: tuple[float, ...] = (0.1, 0.2, 0.4)  # cycles per pixel
GABOR_ORIENTATIONS = 4

#: Values each descriptor contributes.
DESCRIPTOR_DIMS: dict[str, int] = {
    "lbp": sum(points + 2 for points, _ in LBP_SETTINGS),
    "gabor": len(GABOR_FREQUENCIES) * GABOR_ORIENTATIONS * 2,
    "color": 12,
}

_memory_cache: dict[str, NDArray[np.float32]] = {}
_MEMORY_CACHE_ENTRIES = 4


def descriptor_dim(names: Sequence[str]) -> int:
    return sum(DESCRIPTOR_DIMS[name] for name in names)


def describe_image(image: Image.Image, names: Sequence[str]) -> NDArray[np.float32]:
    """The descriptors `names`, concatenated in that order, of one image."""
    rgb = ImageOps.fit(image.convert("RGB"), (DESCRIPTOR_SIZE, DESCRIPTOR_SIZE))
    pixels = np.asarray(rgb, dtype=np.float64) / 255.0
    parts = []
    for name in names:
        if name == "lbp":
            parts.append(_lbp(np.asarray(rgb.convert("L"))))
        elif name == "gabor":
            parts.append(_gabor(np.asarray(rgb.convert("L"), dtype=np.float64) / 255.0))
        elif name == "color":
            parts.append(_color(pixels))
        else:
            raise ValueError(f"unknown descriptor {name!r}")
    return np.concatenate(parts).astype(np.float32)


def describe_files(
    paths: Sequence[Path], names: Sequence[str], cache_dir: Path | None = None
) -> NDArray[np.float32]:
    """An (images x descriptor_dim) array for `paths`, from a cache when one holds it."""
    key = _cache_key(paths, names)
    if key in _memory_cache:
        return _memory_cache[key]
    cache_file = cache_dir / f"descriptors-{key[:20]}.npy" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        table: NDArray[np.float32] = np.load(cache_file)
    else:
        table = np.zeros((len(paths), descriptor_dim(names)), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for row, values in enumerate(pool.map(lambda p: _describe_file(p, names), paths)):
                table[row] = values
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp.npy")
            np.save(tmp, table)
            os.replace(tmp, cache_file)
    if len(_memory_cache) >= _MEMORY_CACHE_ENTRIES:
        _memory_cache.pop(next(iter(_memory_cache)))
    _memory_cache[key] = table
    return table


def _describe_file(path: Path, names: Sequence[str]) -> NDArray[np.float32]:
    with Image.open(path) as image:
        return describe_image(image, names)


def _lbp(gray: NDArray[np.uint8]) -> NDArray[np.float64]:
    histograms = []
    for points, radius in LBP_SETTINGS:
        codes = local_binary_pattern(gray, points, radius, method="uniform")
        counts = np.bincount(codes.astype(np.int64).ravel(), minlength=points + 2)
        histograms.append(counts / codes.size)
    return np.concatenate(histograms)


def _gabor(gray: NDArray[np.float64]) -> NDArray[np.float64]:
    gray = gray - gray.mean()  # brightness belongs to the colour descriptor
    kernels = [
        _gabor_kernel(frequency, k)
        for frequency in GABOR_FREQUENCIES
        for k in range(GABOR_ORIENTATIONS)
    ]
    # One FFT of the reflect-padded image serves the whole bank. The padding is at least every
    # kernel's half-size, so the circular convolution's wrap-around never reaches the pixels
    # read back below.
    pad = max(max(kernel.shape) for kernel in kernels) // 2
    padded = np.pad(gray, pad, mode="reflect")
    spectrum = np.fft.fft2(padded)
    height, width = gray.shape
    features = []
    for kernel in kernels:
        top, left = pad + kernel.shape[0] // 2, pad + kernel.shape[1] // 2
        response = np.fft.ifft2(spectrum * np.fft.fft2(kernel, s=padded.shape))
        magnitude = np.abs(response[top : top + height, left : left + width])
        features += [magnitude.mean(), magnitude.var()]
    return np.array(features)


_kernels: dict[tuple[float, int], NDArray[np.complex128]] = {}


def _gabor_kernel(frequency: float, orientation: int) -> NDArray[np.complex128]:
    key = (frequency, orientation)
    if key not in _kernels:
        theta = np.pi * orientation / GABOR_ORIENTATIONS
        _kernels[key] = np.asarray(gabor_kernel(frequency, theta=theta))
    return _kernels[key]


def _color(pixels: NDArray[np.float64]) -> NDArray[np.float64]:
    # Hue is circular; its plain mean is still a usable summary for one material's narrow range.
    hsv = rgb2hsv(pixels)
    return np.concatenate(
        [
            pixels.mean(axis=(0, 1)),
            pixels.std(axis=(0, 1)),
            hsv.mean(axis=(0, 1)),
            hsv.std(axis=(0, 1)),
        ]
    )


def _cache_key(paths: Sequence[Path], names: Sequence[str]) -> str:
    files = []
    for path in paths:
        stat = path.stat()
        files.append([str(path), stat.st_size, stat.st_mtime_ns])
    raw = json.dumps([DESCRIPTOR_VERSION, DESCRIPTOR_SIZE, list(names), files])
    return hashlib.sha256(raw.encode()).hexdigest()
