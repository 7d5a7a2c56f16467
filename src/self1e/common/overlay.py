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


# Twelve well separated colours (hues around the wheel at two lightness levels).
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (245, 130, 48),
           (70, 240, 240), (240, 50, 230), (128, 0, 0), (0, 0, 128), (170, 110, 40), (0, 128, 128))


def pick_colours(image: Image.Image, masks: Sequence[np.ndarray]) -> list[tuple[int, int, int]]:
    """One colour per mask, chosen against the image: for each mask in turn, the palette colour
    farthest (in RGB) from both the mean colour under and around that mask and the colours already
    chosen, so a mask on a red object is not drawn in red and no two masks share a colour (past
    twelve masks colours repeat, as far apart as the palette allows)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    palette = np.array(PALETTE, dtype=np.float32)
    chosen: list[int] = []
    for m in masks:
        fg = np.asarray(m) != 0
        region = fg | _boundary(fg, max(2, min(fg.shape) // 40)) if fg.any() else np.ones(fg.shape, bool)
        under = rgb[_grow(region)].mean(0)
        score = np.linalg.norm(palette - under, axis=1)
        if chosen and len(chosen) < len(PALETTE):
            score = np.minimum(score, np.linalg.norm(palette[:, None] - palette[chosen][None], axis=2).min(1))
            score[chosen] = -1.0
        chosen.append(int(score.argmax()))
    return [PALETTE[k] for k in chosen]


def _grow(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, constant_values=False)
    return mask | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def draw_masks(
    image: Image.Image,
    masks: Sequence[np.ndarray],
    colors: Sequence[tuple[int, int, int]] | None = None,
    *,
    alpha: float = 0.35,
    outlines: Sequence[tuple[np.ndarray, tuple[int, int, int]]] = (),
    mask_only: bool = False,
) -> Image.Image:
    """A new RGB image: each of ``masks`` (H, W; non-zero = foreground) filled lightly in its
    colour (opacity ``alpha``) and outlined in it, each outline with a thin dark or light edge so it
    shows on any background; then each ``(mask, colour)`` of ``outlines`` outlined only. Where masks
    overlap the later one's fill wins (never a blend of two colours) and every outline stays visible.
    ``colors`` default to :func:`pick_colours`. ``mask_only``: the masks in full colour on black.

    Every mask must have the image's size (H = image.height, W = image.width); ValueError otherwise.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    h, w = rgb.shape[:2]
    for m in [*masks, *(m for m, _ in outlines)]:
        if np.shape(m) != (h, w):
            raise ValueError(f"overlay: a mask is {np.shape(m)} but the image is {(h, w)} (height, width)")
    colors = pick_colours(image, masks) if colors is None else colors
    fgs = [np.asarray(m) != 0 for m in masks]
    if mask_only:
        rgb[:] = 0
        alpha = 1.0
    fill = np.full((h, w), -1)
    for k, fg in enumerate(fgs):
        fill[fg] = k
    for k, color in enumerate(colors[:len(fgs)]):
        sel = fill == k
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.array(color, dtype=np.float32)
    thickness = max(1, min(h, w) // 160)
    edges = [(_boundary(fg, thickness), np.array(c, dtype=np.float32)) for fg, c in zip(fgs, colors)]
    edges += [(_boundary(np.asarray(m) != 0, thickness), np.array(c, dtype=np.float32)) for m, c in outlines]
    for edge, color in edges:  # a contrasting edge just outside the outline, then the outline itself
        halo = _grow(edge) & ~edge
        rgb[halo] = (255.0 if color.mean() < 100 else 0.0) * 0.6 + rgb[halo] * 0.4
        rgb[edge] = color
    return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8), "RGB")


def legend(image: Image.Image, entries: Sequence[tuple[tuple[int, int, int], str]]) -> Image.Image:
    """``image`` with a strip below it: one colour swatch and its label per entry."""
    if not entries:
        return image
    size = max(12, image.width // 36)
    font = _font(size)
    line_h = int(size * 1.5)
    strip = Image.new("RGB", (image.width, line_h * len(entries) + size // 2), (250, 250, 250))
    draw = ImageDraw.Draw(strip)
    for i, (color, label) in enumerate(entries):
        y = size // 4 + i * line_h
        draw.rectangle((size // 3, y + 2, size // 3 + size, y + size + 2), fill=tuple(color), outline=(0, 0, 0))
        draw.text((size // 3 + int(size * 1.5), y), label, fill=(20, 20, 20), font=font)
    canvas = Image.new("RGB", (image.width, image.height + strip.height))
    canvas.paste(image, (0, 0))
    canvas.paste(strip, (0, image.height))
    return canvas


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
