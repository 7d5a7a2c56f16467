"""Reading and writing images and masks: the one RGB conversion and the one PNG mask writer.

Every image a user or a dataset hands us goes through :func:`to_rgb` (or :func:`open_image` for a
file) exactly once; every mask file is read by :func:`read_mask` and written by :func:`write_mask_png`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from self1e.common.errors import DataError

ImageLike = str | Path | Image.Image | np.ndarray
"""What every image argument accepts: a file path, a PIL image of any mode, or an HxW / HxWxC array
(uint8, or float in [0, 1])."""

T = TypeVar("T")


def _read(path: str | Path, what: str, convert: Callable[[Image.Image], T]) -> T:
    """Decode a picture file with Pillow; missing or unreadable files raise DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return convert(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None


def open_image(path: str | Path) -> Image.Image:
    """Open any image Pillow reads and return it as RGB; raises DataError naming the file."""
    return _read(path, "image", lambda im: im.convert("RGB"))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def to_rgb(image: ImageLike) -> Image.Image:
    """Any :data:`ImageLike` as an RGB PIL image. An RGB PIL image is returned as it is (no copy)."""
    if isinstance(image, (str, Path)):
        return open_image(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image array must be HxW or HxWxC with C in 1, 3, 4; got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected an image path, PIL image or numpy array, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a bool (H, W) array; any non-zero pixel is foreground."""
    return _read(path, "mask", _mask_pixels)


def _mask_pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im if im.mode in ("L", "1", "I", "I;16") else im.convert("L")) != 0


def write_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """Write a (H, W) mask (non-zero = foreground) as a single-channel 0/255 PNG; makes the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.asarray(mask) != 0).astype(np.uint8) * 255, "L").save(path, format="PNG", compress_level=1)
    return path
