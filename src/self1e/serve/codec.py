"""What crosses the wire: uploads in (size limits, decoding, downscaling for the model) and results
out (COCO RLE, boxes, the page's pictures). Plain functions, no web framework: the app and the
tests use them directly.

Limits (all in :class:`Limits`; each answered with a JSON error naming the limit):

- ``max_upload_bytes`` (413): the encoded image, before it is decoded;
- ``max_pixels`` (413): width x height of the decoded image (the library's pixel limit);
- ``model_pixels``: larger images are downscaled (same aspect) before the model sees them, and
  their masks are scaled back (nearest neighbour) to the original size;
- ``max_texts`` and ``MAX_TEXT_CHARS`` (422): expressions per request and characters per text.
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from self1e.common.errors import DataError, TooLargeError
from self1e.common.images import MAX_IMAGE_PIXELS, decode_image
from self1e.common.overlay import draw_masks, pick_colours
from self1e.inference.results import bbox, result_json, rle  # noqa: F401 - the API's results (re-exported)
from self1e.model.processing import MAX_TEXT_CHARS, check_text


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = MAX_IMAGE_PIXELS
    model_pixels: int = 4_000_000
    max_texts: int = 16
    max_text_chars: int = MAX_TEXT_CHARS


class RequestError(ValueError):
    """A bad request: ``status`` 413 (too large) or 422 (unusable), with a message for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # pickled whole (status and message), e.g. from a Ray Serve replica
        return type(self), (self.status, str(self))


@dataclass
class Upload:
    """An image as received: ``image`` is what the model sees (downscaled when the upload has more
    than ``model_pixels``), ``size`` the upload's own (width, height)."""

    image: Image.Image
    size: tuple[int, int]

    @property
    def downscaled(self) -> bool:
        return self.image.size != self.size


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``; nothing elsewhere), so a
    server's resident size falls back after a large upload instead of staying at its peak."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def b64_bytes(text: str, what: str = "image") -> bytes:
    """Base64 (plain, or a ``data:...;base64,`` URL) -> bytes; RequestError 422 when it is not base64."""
    if not isinstance(text, str) or not text.strip():
        raise RequestError(422, f"'{what}' must be a non-empty base64 string (or a data: URL)")
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"'{what}' is not valid base64") from None


def read_upload(data: bytes, limits: Limits, what: str = "the uploaded image") -> Upload:
    """Check, decode and (when large) downscale an uploaded image."""
    if len(data) > limits.max_upload_bytes:
        raise RequestError(413, f"{what} is {len(data):,} bytes; the limit is {limits.max_upload_bytes:,} bytes")
    try:
        image, size = decode_image(data, what, limits.max_pixels, reduce_to=limits.model_pixels)
    except TooLargeError as e:
        raise RequestError(413, str(e)) from None
    except DataError as e:
        raise RequestError(422, f"{e} (expected a PNG, JPEG, WebP, BMP, GIF or TIFF image)") from None
    w, h = image.size
    if w * h > limits.model_pixels:
        scale = (limits.model_pixels / (w * h)) ** 0.5
        image = image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.BILINEAR)
    return Upload(image, size)


def check_request_texts(texts: object, limits: Limits, what: str = "texts") -> list[str]:
    """A list of 1..max_texts non-empty strings of at most max_text_chars characters (422 otherwise)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise RequestError(422, f"'{what}' must be a list of strings")
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise RequestError(422, f"'{what}' holds no expression: give at least one non-empty text")
    if len(texts) > limits.max_texts:
        raise RequestError(422, f"'{what}' holds {len(texts)} expressions; the limit is {limits.max_texts} "
                                "per request")
    for t in texts:
        try:
            check_text(t, "an expression", limits.max_text_chars)
        except ValueError as e:
            raise RequestError(422, str(e)) from None
    return texts


def to_size(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask scaled (nearest neighbour) to ``size`` = (width, height); unchanged if it has it."""
    if mask.shape[::-1] == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pictures(image: Image.Image, masks: list[np.ndarray]) -> tuple[list[str], dict]:
    """The page's pictures of ``masks`` on ``image`` (all at the image's size): the colour of each
    mask (``#rrggbb``) and data URLs of the overlay, the mask-only view and one PNG per mask."""
    colours = pick_colours(image, masks)
    views = {"overlay": png_data_url(draw_masks(image, masks, colours)),
             "mask_view": png_data_url(draw_masks(image, masks, colours, mask_only=True)),
             "mask_pngs": [png_data_url(Image.fromarray(m.astype(np.uint8) * 255)) for m in masks]}
    return ["#{:02x}{:02x}{:02x}".format(*c) for c in colours], views
