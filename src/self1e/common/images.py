"""Reading and writing images and masks: the one RGB conversion and the one PNG mask writer.

Every image a user or a dataset hands us goes through :func:`to_rgb` (or :func:`open_image` for a
file) exactly once; every mask file is read by :func:`read_mask` and written by :func:`write_mask_png`.

Rules, the same for every reader:

- **Size limit.** An image (or mask) of more than ``MAX_IMAGE_PIXELS`` = 64,000,000 pixels (width x
  height) is refused with a :class:`DataError` that names the file, its size and the limit. For a
  file the check reads only the header, before any pixel is decoded (a "decompression bomb" costs
  nothing); PIL images and numpy arrays passed to :func:`to_rgb` are checked the same way. The
  limit is, first found: the ``max_pixels`` argument, the environment variable
  ``SELF1E_MAX_IMAGE_PIXELS``, the module constant. Pillow's own decompression-bomb warning and
  error never reach the caller; our limit replaces them (also when it is set above Pillow's).
- **Memory.** A decoded RGB image is returned without a copy; an orientation or mode change makes
  one new image and drops the old one, so only one full-size copy is kept.
- **Values.** 8-bit images are taken as they are. 16-bit greyscale (Pillow modes ``I;16``,
  ``I;16B``, ``I;16L``; numpy ``uint16``) is scaled by 1/257 (65535 -> 255), rounded. Pillow mode
  ``I`` (32-bit integers) is read by its actual range: negative values clip to 0; if the maximum is
  at most 65535 the values are 16-bit (1/257), else they are scaled so that the maximum is 255.
  Floats (mode ``F``, float TIFFs, float arrays): if the largest finite value is at most 1 the
  values are taken as [0, 1] and scaled by 255, otherwise as 0..255; both clip to [0, 255] and round
  (NaN and -inf give 0, +inf white). Other integer arrays are 8-bit levels clipped to [0, 255]
  (arrays of 0 and 1 scaled by 255); bool arrays give 0 / 255.
- **Orientation.** User images follow their EXIF orientation (as photo viewers show them):
  :func:`open_image`, :func:`to_rgb` and :func:`image_size` give the displayed picture and size
  (``PIL.ImageOps.exif_transpose``). The orientation is read from the header (for a PNG, an ``eXIf``
  chunk after the pixel data is ignored); a broken EXIF block counts as upright. :func:`read_mask`
  does not rotate: masks are read in stored pixel order, like the field's annotations.
- **Masks.** :func:`read_mask` has one rule per Pillow mode (:data:`MASK_RULES`): ``1``, ``L``, ``I``,
  ``I;16*`` (16-bit) and ``F`` (float): a non-zero value is foreground (a NaN in a float mask is an
  error); ``P`` (palette): a non-zero palette *index* is foreground, whatever colour the palette
  gives it; ``RGB`` / ``RGBX``: any non-zero colour channel (a dark red ``(1, 0, 0)`` is foreground);
  ``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``: as without alpha, except that a fully transparent
  pixel (alpha 0) is background. Other modes (CMYK, YCbCr, LAB, HSV, ...) are refused.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from self1e.common.errors import DataError, TooLargeError
from self1e.common.files import atomic_write

ImageLike = str | Path | Image.Image | np.ndarray
"""What every image argument accepts: a file path, a PIL image of any mode, or an HxW / HxWxC array
(C in 1, 3, 4; uint8, uint16, float, ...: see the value rules above)."""

MAX_IMAGE_PIXELS = 64_000_000
"""Default pixel limit (width x height) of every image and mask read; see :func:`max_image_pixels`."""
PIXEL_LIMIT_ENV = "SELF1E_MAX_IMAGE_PIXELS"

T = TypeVar("T")

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError,
                  Image.DecompressionBombError)
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the picture by 90 degrees
_PILLOW_LIMIT_LOCK = threading.Lock()


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$SELF1E_MAX_IMAGE_PIXELS``, else
    :data:`MAX_IMAGE_PIXELS`. A limit that is not a positive whole number raises ValueError."""
    source = "max_pixels"
    if max_pixels is None:
        raw = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
        if not raw:
            return MAX_IMAGE_PIXELS
        source = PIXEL_LIMIT_ENV
        try:
            max_pixels = int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{PIXEL_LIMIT_ENV}={raw!r} is not a whole number of pixels") from None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"{source} must be a positive whole number of pixels, got {max_pixels!r}")
    return max_pixels


def _check_pixels(size: tuple[int, int], limit: int, what: str) -> None:
    w, h = size
    if w * h > limit:
        raise TooLargeError(f"{what} is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} pixels "
                        f"(raise it with {PIXEL_LIMIT_ENV} or max_pixels=)")


def _open_header(f: IO[bytes]) -> Image.Image:
    """``Image.open`` (header only) without Pillow's own decompression-bomb check, which our limit
    replaces: its warning is silenced and, past its error threshold, the header is read again with
    the check lifted for that moment (the caller checks the size next)."""
    try:
        return Image.open(f)
    except Image.DecompressionBombError:
        pass
    f.seek(0)
    with _PILLOW_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(f)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextmanager
def _opened(path: str | Path | bytes, what: str, max_pixels: int | None) -> Iterator[Image.Image]:
    """The file's (or the bytes') header, checked against the pixel limit; decoding errors in the
    block (and a missing file) raise DataError naming the file. Pixels must be loaded inside the block."""
    limit = max_image_pixels(max_pixels)
    if isinstance(path, bytes):
        label, stream = what, io.BytesIO(path)
    else:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{what} not found: {path}")
        label, stream = f"{what} {path}", None
    try:
        with warnings.catch_warnings(), (stream or path.open("rb")) as f:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open_header(f)
            _check_pixels(im.size, limit, label)
            yield im
    except DataError:
        raise
    except _DECODE_ERRORS as e:
        why = "not an image format Pillow recognises" if isinstance(e, UnidentifiedImageError) else e
        raise DataError(f"cannot read {label}: {why}") from None


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8 from the metadata already read (never decodes pixels); 1 if absent or broken."""
    try:
        with warnings.catch_warnings():  # Pillow warns about a corrupt block: it counts as upright, quietly
            warnings.simplefilter("ignore")
            value = Image.Image.getexif(im).get(ExifTags.Base.Orientation, 1)  # the base method: header only
    except Exception:  # a broken EXIF block: the pixels are still fine, take them upright
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(im: Image.Image, orientation: int) -> Image.Image:
    return ImageOps.exif_transpose(im) if orientation != 1 else im


def open_image(path: str | Path, max_pixels: int | None = None, exif: bool = True) -> Image.Image:
    """Open any image Pillow reads as RGB, upright by its EXIF orientation (``exif=False``: in
    stored pixel order, as the field's annotations are); raises DataError naming the file (missing,
    unreadable, or over the pixel limit)."""
    with _opened(path, "image", max_pixels) as im:
        orientation = _orientation(im) if exif else 1  # from the header, as image_size reads it
        im.load()
        return _pil_to_rgb(_upright(im, orientation))


def decode_image(data: bytes, what: str = "the uploaded image", max_pixels: int | None = None,
                 reduce_to: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Encoded image bytes (an upload) as :func:`open_image` reads a file: RGB, upright by EXIF;
    DataError naming ``what`` when they are empty, not an image, corrupt or over the pixel limit.
    Returns the image and its full (width, height), upright. ``reduce_to``: a JPEG of more pixels
    may be decoded at a reduced scale (1/2, 1/4, 1/8; Pillow's draft mode), never below that many
    pixels, so a huge upload costs a fraction to decode; other formats decode in full."""
    if not data:
        raise DataError(f"{what} is empty (0 bytes)")
    with _opened(data, what, max_pixels) as im:
        orientation = _orientation(im)
        w, h = im.size
        if reduce_to is not None and w * h > reduce_to and im.format == "JPEG":
            scale = (reduce_to / (w * h)) ** 0.5
            im.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
        im.load()
        return _pil_to_rgb(_upright(im, orientation)), ((h, w) if orientation in _SWAPS_SIDES else (w, h))


def image_size(path: str | Path, max_pixels: int | None = None, exif: bool = True) -> tuple[int, int]:
    """(width, height) of an image file as :func:`open_image` returns it (with ``exif``, the EXIF
    orientation applied), reading only its header."""
    with _opened(path, "image", max_pixels) as im:
        w, h = im.size
        return (h, w) if exif and _orientation(im) in _SWAPS_SIDES else (w, h)


def to_rgb(image: ImageLike, max_pixels: int | None = None) -> Image.Image:
    """Any :data:`ImageLike` as an RGB PIL image, upright by its EXIF orientation. An upright RGB
    PIL image is returned as it is (no copy). Sizes over the pixel limit raise DataError."""
    if isinstance(image, (str, Path)):
        return open_image(image, max_pixels)
    limit = max_image_pixels(max_pixels)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image array must be HxW or HxWxC with C in 1, 3, 4; got shape {arr.shape}")
        _check_pixels((arr.shape[1], arr.shape[0]), limit, f"image array of shape {arr.shape}")
        return _pil_to_rgb(Image.fromarray(_to_uint8(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)))
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected an image path, PIL image or numpy array, got {type(image).__name__}")
    what = f"PIL image ({image.mode})"
    _check_pixels(image.size, limit, what)
    with warnings.catch_warnings():  # a lazily decoded image (e.g. a GIF frame) checks again
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return _pil_to_rgb(_upright(image, _orientation(image)))
        except Image.DecompressionBombError as e:
            raise DataError(f"cannot read {what}: {e}") from None


def _pil_to_rgb(im: Image.Image) -> Image.Image:
    """RGB with the value rules of the module docstring (Pillow's own convert clips 16-bit, 32-bit
    and float values at 255 instead of scaling them)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    return im.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str | None = None) -> np.ndarray:
    """Pixel values as 8-bit levels (the value rules of the module docstring); ``mode``: the Pillow
    mode the array came from, None for a numpy array."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f":
        a = arr.astype(np.float32)
        finite = np.isfinite(a)
        top = float(a[finite].max()) if finite.any() else 0.0
        scale = 255.0 if top <= 1.0 else 1.0
        a[~finite] = np.where(np.isposinf(a[~finite]), 255.0 / scale, 0.0)
        return np.rint(np.clip(a * scale, 0, 255)).astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"image array of dtype {arr.dtype} is not supported (use integers, floats or bool)")
    a = np.clip(arr.astype(np.int64), 0, None)
    if (mode or "").startswith("I;16") or (mode is None and arr.dtype == np.uint16):
        return ((np.minimum(a, 65535) + 128) // 257).astype(np.uint8)
    top = int(a.max(initial=0))
    if mode == "I":
        if top <= 65535:
            return ((a + 128) // 257).astype(np.uint8)
        return ((a * 255 + top // 2) // top).astype(np.uint8)
    return np.clip(a * 255 if top <= 1 else a, 0, 255).astype(np.uint8)


MASK_RULES = {
    "1, L, I, I;16*, F": "non-zero value",
    "P": "non-zero palette index",
    "RGB, RGBX": "any non-zero colour channel",
    "RGBA, RGBa, LA, La, PA": "as without alpha, and alpha non-zero",
}
"""Which pixels :func:`read_mask` takes as foreground, per Pillow mode (see the module docstring)."""
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_MAX_VALUES_SHOWN = 4


def read_mask(path: str | Path, max_pixels: int | None = None, problems: list[str] | None = None) -> np.ndarray:
    """Read a mask file as a bool (H, W) array in stored pixel order (no EXIF rotation), by the rule
    of its mode (:data:`MASK_RULES`). With ``problems`` (a list), a note naming the file is appended
    when the mask is not binary: its foreground pixels do not all hold one value (e.g. a JPEG mask,
    whose compression blurs the edges into many levels)."""
    path = Path(path)

    def convert(im: Image.Image) -> np.ndarray:
        mask, values = _mask_pixels(im, f"mask {path}")
        if problems is not None:
            levels = np.unique(values[mask])
            if len(levels) > 1:
                shown = ", ".join(_level(v, im.mode) for v in levels[:_MAX_VALUES_SHOWN])
                more = ", ..." if len(levels) > _MAX_VALUES_SHOWN else ""
                problems.append(f"mask {path} is not binary: its foreground holds {len(levels)} different "
                                f"{im.mode} values ({shown}{more}); every non-zero pixel counts as foreground "
                                "(save masks as 0/255 PNG)")
        return mask

    return _read_pixels(path, "mask", max_pixels, convert)


def _level(value: np.generic, mode: str) -> str:
    """One packed pixel value of :func:`_mask_pixels` as the mode's bands, e.g. ``(255, 0, 0)``."""
    if mode in ("F", "1", "L", "P", "I") or mode.startswith("I;16"):
        return str(value.item())
    bands = Image.getmodebands(mode)
    return str(tuple((int(value) >> (8 * c)) & 255 for c in range(bands)))


def _mask_pixels(im: Image.Image, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, values): the rule of :data:`MASK_RULES` applied to an opened image, and each
    pixel's whole value (the bands packed into one integer) to tell whether the mask is binary."""
    mode = im.mode
    if mode in ("1", "L", "P", "I", "F") or mode.startswith("I;16"):
        arr = np.asarray(im)
        if mode == "F" and np.isnan(arr).any():
            raise DataError(f"{what}: a float mask holds NaN values, which are neither foreground nor background")
        return arr != 0, arr if mode == "F" else arr.astype(np.int64)
    if mode not in ("RGB", "RGBX") and mode not in _ALPHA_MODES:
        raise DataError(f"{what}: masks of mode {mode} are not supported (use a 1-, L-, P-, RGB- or RGBA-mode "
                        "image, e.g. a 0/255 PNG)")
    arr = np.asarray(im)
    colour = arr[..., :3] if mode in ("RGB", "RGBX", "RGBA", "RGBa") else arr[..., :1]
    mask = (colour != 0).any(axis=2)
    if mode in _ALPHA_MODES:
        mask &= arr[..., -1] != 0
    bands = arr[..., :3] if mode == "RGBX" else arr
    values = np.zeros(mask.shape, dtype=np.int64)
    for c in range(bands.shape[2]):
        values |= bands[..., c].astype(np.int64) << (8 * c)
    return mask, values


def _read_pixels(path: str | Path, what: str, max_pixels: int | None, convert: Callable[[Image.Image], T]) -> T:
    with _opened(path, what, max_pixels) as im:
        im.load()
        return convert(im)


def check_mask_path(path: str | Path) -> Path:
    """``path`` if it can name a mask file: masks are PNG only (lossless 0/255); any other
    extension (``.jpg``, ``.webp``, none, ...) raises ValueError naming it."""
    path = Path(path)
    suffix = path.suffix
    if suffix.lower() != ".png":
        found = f"the extension {suffix!r}" if suffix else "no extension"
        raise ValueError(f"mask {path}: masks are written as PNG only (lossless 0/255), and {path.name!r} has "
                         f"{found}; use a .png name")
    return path


def write_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """Write a (H, W) mask (non-zero = foreground) as a single-channel 0/255 PNG, atomically
    (:func:`self1e.common.files.atomic_write`); makes the folder. ``path`` must end in ``.png``."""
    path = check_mask_path(path)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask {path}: a mask is (height, width), got shape {arr.shape}")
    im = Image.fromarray((arr != 0).astype(np.uint8) * 255)
    return atomic_write(path, lambda tmp: im.save(tmp, format="PNG", compress_level=1))


def image_format(path: str | Path) -> str:
    """The Pillow format that writes ``path``, chosen by its extension; ValueError naming the
    extension when Pillow writes none."""
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        found = f"the extension {path.suffix!r}" if suffix else "no extension"
        raise ValueError(f"cannot write the image {path}: it has {found}, which names no format Pillow "
                         "writes (use .png, .jpg, .webp, ...)")
    return fmt


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write a picture (an overlay) in the format its extension names, atomically; makes the folder."""
    fmt = image_format(path)
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))
