"""Draw a mask over its image (tinted fill plus outline), with an optional caption above it.

Shared by ``self1e eval --num-overlays``, ``self1e segment``, the demo pictures and the web page, so
they all look the same.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RED = (255, 40, 40)
GREEN = (40, 220, 40)


def _boundary(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of ``mask`` that touch the background (4-neighbourhood), grown to ``thickness``."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = mask & ~inner
    for _ in range(thickness - 1):
        p = np.pad(edge, 1, constant_values=False)
        edge = edge | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return edge


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def _caption(text: str, width: int) -> Image.Image:
    """A dark strip of ``width`` pixels holding ``text``, wrapped to fit."""
    size = max(12, width // 36)
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    chars_per_line = max(8, int(width / max(1.0, probe.textlength("abcdefghij", font=font) / 10)) - 2)
    lines = textwrap.wrap(text, chars_per_line) or [""]
    line_h = int(size * 1.3)
    strip = Image.new("RGB", (width, line_h * len(lines) + size // 2), (20, 20, 20))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((size // 3, size // 4 + i * line_h), line, fill=(255, 255, 255), font=font)
    return strip


def draw_masks(
    image: Image.Image,
    masks: Sequence[np.ndarray],
    colors: Sequence[tuple[int, int, int]],
    *,
    alpha: float = 0.45,
    outlines: Sequence[tuple[np.ndarray, tuple[int, int, int]]] = (),
) -> Image.Image:
    """A new RGB image: each of ``masks`` (H, W; non-zero = foreground) tinted in its colour at
    opacity ``alpha`` and outlined in it, then each ``(mask, colour)`` of ``outlines`` outlined only.

    Every mask must have the image's size (H = image.height, W = image.width); ValueError otherwise.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    h, w = rgb.shape[:2]
    for m in [*masks, *(m for m, _ in outlines)]:
        if np.shape(m) != (h, w):
            raise ValueError(f"overlay: a mask is {np.shape(m)} but the image is {(h, w)} (height, width)")
    thickness = max(1, min(h, w) // 160)
    for m, color in zip(masks, colors):
        fg, col = np.asarray(m) != 0, np.array(color, dtype=np.float32)
        rgb[fg] = (1 - alpha) * rgb[fg] + alpha * col
        rgb[_boundary(fg, thickness)] = col
    for m, color in outlines:
        rgb[_boundary(np.asarray(m) != 0, thickness)] = np.array(color, dtype=np.float32)
    return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8), "RGB")


def overlay(
    image: Image.Image,
    mask: np.ndarray,
    text: str | None = None,
    *,
    gt: np.ndarray | None = None,
    color: tuple[int, int, int] = RED,
    alpha: float = 0.45,
) -> Image.Image:
    """``image`` with ``mask`` (H, W) tinted in ``color`` and outlined, ``gt`` (optional) outlined in
    green, and ``text`` (optional) written in a caption strip added above the image."""
    out = draw_masks(image, [mask], [color], alpha=alpha, outlines=[(gt, GREEN)] if gt is not None else ())
    if not text:
        return out
    w = out.width
    strip = _caption(text, w)
    canvas = Image.new("RGB", (w, strip.height + out.height))
    canvas.paste(strip, (0, 0))
    canvas.paste(out, (0, strip.height))
    return canvas
