"""Image layouts: how one backbone family turns an image into pixel values and LLM image tokens.

A layout knows the picture side of a backbone and nothing of its modules: the resize, the
normalisation, the pixel-value tensor the vision tower takes, how many LLM image tokens an image
becomes, the tokens that open, fill and close the image in a prompt, and how the LLM's states at
those tokens fold back into a 2D map for the mask head.

An image is ``n_tiles(grid)`` units of ``tokens_per_tile`` LLM tokens: InternVL's units are tiles
(side x side tokens each, :class:`TileLayout`), SmolVLM's sub-images (:class:`SubImageLayout`); a
native-resolution backbone's unit is one token per merged group of patches (:class:`NativeLayout`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageInput:
    """pixel_values: the vision tower's input for one image (InternVL: (T, 3, S, S) tiles, row-major,
    then the thumbnail if any; native resolution: (patches, 3 * t * p * p) rows in merge order);
    grid: InternVL's (rows, cols) tiles, or the (rows, cols) patch grid; size: the original (width, height)."""

    pixel_values: torch.Tensor
    grid: tuple[int, int]
    size: tuple[int, int]


def normalise(im: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float, normalised per channel."""
    arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return (arr - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def tile_grid(width: int, height: int, max_tiles: int, tile_size: int) -> tuple[int, int]:
    """InternVL's dynamic tiling: the (rows, cols) grid of at most ``max_tiles`` tiles whose aspect
    ratio is closest to the image's; on a tie the larger grid wins if the image has more than half
    its pixels."""
    grids = sorted(((r, c) for r in range(1, max_tiles + 1) for c in range(1, max_tiles + 1) if r * c <= max_tiles),
                   key=lambda rc: rc[0] * rc[1])
    best, best_diff = (1, 1), float("inf")
    for rows, cols in grids:
        diff = abs(width / height - cols / rows)
        if diff < best_diff:
            best, best_diff = (rows, cols), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * rows * cols:
            best = (rows, cols)
    return best


def longest_edge_resize(width: int, height: int, long: int) -> tuple[int, int]:
    """SmolVLM's (Idefics3's) first resize: the longest edge to ``long`` pixels, the other keeping the
    aspect ratio, rounded as that processor rounds it (down, then up to an even number). (width, height)."""
    if width >= height:
        short = int(long / (width / height))
        return long, max(1, short + short % 2)
    short = int(long * (width / height))
    return max(1, short + short % 2), long


def subimage_grid(width: int, height: int, per_side: int, tile_size: int) -> tuple[int, int]:
    """SmolVLM's split: after :func:`longest_edge_resize` to ``per_side`` sub-images (its processor's
    ``size.longest_edge`` over ``max_image_size.longest_edge``), each edge rounded up to whole
    sub-images. (rows, cols)."""
    w, h = longest_edge_resize(width, height, per_side * tile_size)
    return math.ceil(h / tile_size), math.ceil(w / tile_size)


def stitch(tiles: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(rows*cols, h, w, C) row-major tiles -> (rows*h, cols*w, C)."""
    rows, cols = grid
    _, h, w, c = tiles.shape
    return tiles.reshape(rows, cols, h, w, c).permute(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


class TileLayout:
    """InternVL: square tiles of ``image_size`` (a grid of up to ``max_tiles`` chosen by aspect ratio,
    plus a thumbnail when there are several), ImageNet normalisation, ``(image_size / patch / 2)²``
    tokens per tile between ``<img>`` and ``</img>``. The head reads the grid's tiles, stitched; the
    thumbnail's tokens only reach it through the LLM."""

    open_token, context_token, close_token = "<img>", "<IMG_CONTEXT>", "</img>"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    resample = Image.BICUBIC
    thumbnail_of_whole = False  # the thumbnail is the original image resized (InternVL), not the resized one

    def __init__(self, image_size: int, patch_size: int, max_tiles: int = 1, use_thumbnail: bool = True,
                 factor: int = 2) -> None:
        self.image_size, self.patch_size = image_size, patch_size
        self.max_tiles, self.use_thumbnail = max_tiles, use_thumbnail
        self.grid_side = image_size // patch_size // factor  # LLM tokens per tile side

    @property
    def tokens_per_tile(self) -> int:
        return self.grid_side**2

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """The (rows, cols) tiles of an image of this size."""
        return tile_grid(width, height, self.max_tiles, self.image_size) if self.max_tiles > 1 else (1, 1)

    def resize_whole(self, im: Image.Image, grid: tuple[int, int]) -> Image.Image:
        """The image resized to its grid of tiles."""
        return im.resize((grid[1] * self.image_size, grid[0] * self.image_size), self.resample)

    def prepare(self, im: Image.Image) -> ImageInput:
        s = self.image_size
        rows, cols = self.grid(im.width, im.height)
        big = self.resize_whole(im, (rows, cols))
        tiles = [big.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
        if self.use_thumbnail and len(tiles) > 1:
            tiles.append((big if self.thumbnail_of_whole else im).resize((s, s), self.resample))
        return ImageInput(torch.stack([normalise(t, self.mean, self.std) for t in tiles]), (rows, cols), im.size)

    def n_tiles(self, grid: tuple[int, int]) -> int:
        n = grid[0] * grid[1]
        return n + 1 if self.use_thumbnail and n > 1 else n

    def block(self, image: tuple[int, int] | int) -> list[str]:
        """The image's tokens in a prompt, for its grid or its number of tiles: the opening token, the
        context token once per LLM image token, the closing token."""
        n = image if isinstance(image, int) else self.n_tiles(image)
        return [self.open_token, *[self.context_token] * (n * self.tokens_per_tile), self.close_token]

    def token_map(self, states: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The LLM's states at one image's tokens (n, C) -> the (rows*side, cols*side, C) map of its
        grid tiles (the thumbnail's tokens, last, are not part of it)."""
        n, side = grid[0] * grid[1], self.grid_side
        return stitch(states[: n * side * side].reshape(n, side, side, -1), grid)


class NativeLayout:
    """Native resolution (Qwen2.5-VL, Qwen3-VL): the image is resized, its aspect ratio kept, to about
    ``pixels`` pixels with both sides multiples of ``patch_size * merge``; its ``p x p`` patches (each
    repeated ``temporal`` times, as a still frame of a video) are flattened in the merger's order, so
    every ``merge x merge`` group is ``merge²`` consecutive rows (row-major inside the group, groups
    row-major over the image), one LLM token per group. ``grid`` is the (rows, cols) patch grid."""

    def __init__(self, patch_size: int, merge: int, temporal: int, pixels: int, mean: tuple[float, ...],
                 std: tuple[float, ...], tokens: tuple[str, str, str]) -> None:
        self.patch_size, self.merge, self.temporal, self.pixels = patch_size, merge, temporal, pixels
        self.mean, self.std = mean, std
        self.open_token, self.context_token, self.close_token = tokens
        self.tokens_per_tile = 1
        self.image_size = round(math.sqrt(pixels))  # the side of a square image (for reporting)

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of this size is resized to: about ``pixels`` pixels, the aspect
        ratio kept, both sides whole merged groups. A side shorter than one group is one group, and the
        other side is then shortened so the image stays within 1.5 x ``pixels`` (a 1000 x 3 strip does
        not become thousands of tokens)."""
        unit = self.patch_size * self.merge
        scale = math.sqrt(self.pixels / (width * height))
        w, h = max(unit, round(width * scale / unit) * unit), max(unit, round(height * scale / unit) * unit)
        limit = max(unit * unit, int(1.5 * self.pixels))
        if w * h > limit:
            if w >= h:
                w = max(unit, limit // h // unit * unit)
            else:
                h = max(unit, limit // w // unit * unit)
        return w, h

    def prepare(self, im: Image.Image) -> ImageInput:
        w, h = self.resized(im.width, im.height)
        x = normalise(im.resize((w, h), Image.BICUBIC), self.mean, self.std)  # (3, H, W)
        p, m, t = self.patch_size, self.merge, self.temporal
        rows, cols = h // p, w // p
        x = x.reshape(3, rows // m, m, p, cols // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)  # (R, C, m, m, 3, p, p)
        x = x[:, :, :, :, :, None].expand(-1, -1, -1, -1, -1, t, -1, -1)  # (..., 3, t, p, p)
        return ImageInput(x.reshape(rows * cols, 3 * t * p * p).contiguous(), (rows, cols), im.size)

    def n_tiles(self, grid: tuple[int, int]) -> int:
        return grid[0] * grid[1] // self.merge**2

    def block(self, image: tuple[int, int] | int) -> list[str]:
        n = image if isinstance(image, int) else self.n_tiles(image)
        return [self.open_token, *[self.context_token] * n, self.close_token]

    def token_map(self, states: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(n, C) states at one image's tokens -> (rows / merge, cols / merge, C)."""
        return states.reshape(grid[0] // self.merge, grid[1] // self.merge, -1)

    def patch_map(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Per-patch features in merge order (rows * cols, D) -> the (rows, cols, D) image grid."""
        m = self.merge
        r, c = grid[0] // m, grid[1] // m
        return patches.reshape(r, c, m, m, -1).permute(0, 2, 1, 3, 4).reshape(grid[0], grid[1], -1)


class SubImageLayout(TileLayout):
    """SmolVLM (Idefics3): sub-images of ``image_size`` laid out by SmolVLM's own rule
    (:func:`subimage_grid`: the longest edge becomes ``per_side`` sub-images, the largest number whose
    square is at most ``max_tiles``), followed by a downscaled global image whenever there are
    several; a single sub-image is the whole image, as the global image alone. Lanczos resampling and
    0.5 / 0.5 normalisation, as SmolVLM's processor. Each sub-image is ``(image_size / patch / factor)²``
    tokens after ``<fake_token_around_image><row_r_col_c>``, a newline after each row of sub-images,
    then ``\\n<fake_token_around_image><global-img>``, its tokens and ``<fake_token_around_image>``.
    The head reads the sub-images, stitched; the global image reaches it only through the LLM."""

    open_token = close_token = "<fake_token_around_image>"
    context_token, global_token = "<image>", "<global-img>"
    mean = std = (0.5, 0.5, 0.5)
    resample = Image.LANCZOS
    thumbnail_of_whole = True

    @property
    def per_side(self) -> int:
        """Sub-images along the longest edge (SmolVLM2's processor: 1536 / 384 = 4, so ``max_tiles`` 16)."""
        return math.isqrt(self.max_tiles)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        return subimage_grid(width, height, self.per_side, self.image_size)

    def resize_whole(self, im: Image.Image, grid: tuple[int, int]) -> Image.Image:
        """In SmolVLM's two steps: the longest edge to ``per_side`` sub-images (the other edge as in
        :func:`subimage_grid`), then each edge up to whole sub-images; the global image is this, resized."""
        size = longest_edge_resize(im.width, im.height, self.per_side * self.image_size)
        return super().resize_whole(im.resize(size, self.resample), grid)

    def block(self, image: tuple[int, int] | int) -> list[str]:
        if isinstance(image, int):
            if image != 1:
                raise ValueError(f"a SmolVLM image block needs its sub-image grid, not a count ({image})")
            image = (1, 1)
        rows, cols = image
        tokens = [self.context_token] * self.tokens_per_tile
        glob = [self.open_token, self.global_token, *tokens, self.close_token]
        if rows * cols == 1:
            return glob
        pieces: list[str] = []
        for r in range(rows):
            for c in range(cols):
                pieces += [self.open_token, f"<row_{r + 1}_col_{c + 1}>", *tokens]
            pieces.append("\n")
        return [*pieces, "\n", *glob]
