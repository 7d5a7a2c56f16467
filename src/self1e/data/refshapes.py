"""RefShapes: the built-in synthetic referring-segmentation benchmark (docs/data.md).

A scene is 1-6 coloured shapes on a light background. Objects are rasterised with Pillow into an
"id map" (later objects on top), so every mask is exactly the visible part of its object and the
RGB image is painted from the same id map. Each scene image is shared by up to ``per_image``
referring samples (default 4), which keeps generation fast; the language side (expressions, the
resolver that guarantees each one is true and unambiguous) lives in ``refshapes_text``.
Every object keeps at least 35 % of its area visible; only objects at least half visible are
referred to by themselves (groups, counts and "no target" checks include every object).

Files: ``generate`` writes ``OUT/<split>.jsonl`` plus ``OUT/<split>/images/<scene>.png`` and
``OUT/<split>/masks/<scene>_<object ids>.png`` (one mask file per distinct target set of a scene).
Same generator version + same seed, split, n, size and options -> byte-identical files.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from self1e.common.images import write_mask_png
from self1e.data.refshapes_text import COLOURS, SHAPES, Obj, Phrase, propose, propose_vqa
from self1e.data.sample import Sample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "test-compositional")
# Colour-shape pairs that never appear in train/val/test (neither drawn nor mentioned); the
# test-compositional split is made of them only. One per colour, every shape at least once.
HELD_OUT_PAIRS = frozenset({("purple", "star"), ("orange", "cross"), ("white", "triangle"),
                            ("red", "diamond"), ("blue", "circle"), ("yellow", "square"),
                            ("green", "cross"), ("black", "triangle")})
TRAIN_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS)
RGB = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
       "yellow": (240, 210, 40), "purple": (140, 60, 180), "orange": (250, 140, 30),
       "white": (252, 252, 252), "black": (30, 30, 30)}
JITTER = (10, 6)                   # +- shared brightness, +- per channel (keeps black grey, not green)
RADIUS = {"small": (0.06, 0.09), "large": (0.14, 0.20)}  # fraction of the canvas
MIN_VISIBLE = 0.35                 # placement retries until every object keeps this much visible
KIND_WEIGHTS = {"attribute": 0.2, "size": 0.2, "position": 0.2, "relation": 0.2,
                "multi": 0.1, "none": 0.1}
N_OBJECT_WEIGHTS = (0.05, 0.15, 0.2, 0.25, 0.2, 0.15)  # for 1..6 objects
GRADIENT_DIRECTIONS = 16          # background gradients point in one of 16 directions
PNG_OPTIONS = {"format": "PNG", "compress_level": 1, "optimize": False}


def _star() -> np.ndarray:
    ang = -math.pi / 2 + np.arange(10) * math.pi / 5
    rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)


# Unit outlines (radius 1, y down); the circle is drawn as an ellipse instead.
_OUTLINES = {
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "diamond": np.array([(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]),
    "triangle": np.array([(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6,
                                                                5 * math.pi / 6)]),
    "star": _star(),
    "cross": np.array([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3),
                       (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]),
}


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered-to-ids scene. ``ids`` is (H, W) uint8: 0 background, 2*(i+1) the fill and
    2*(i+1)+1 the outline of object i, so ``ids >> 1`` is the visible-object label map."""

    size: int
    objects: tuple[Obj, ...]
    fills: tuple[tuple[int, int, int], ...]
    background: tuple[int, int, int]
    gradient: tuple[int, int]  # (direction 0..15, amplitude in grey levels; 0 = flat background)
    ids: np.ndarray

    def mask(self, indices: frozenset[int] | set[int] | list[int]) -> np.ndarray:
        """Visible mask (H, W) bool of the union of the given objects."""
        labels = self.ids >> 1
        out = np.zeros(labels.shape, dtype=bool)
        for i in indices:
            out |= labels == i + 1
        return out


def _jitter_outline(shape: str, rng: np.random.Generator) -> np.ndarray | None:
    """Another drawing of ``shape``'s outline (styled scenes): other proportions and a small rotation
    that keep the shape's name true (a square stays axis-aligned enough not to read as a diamond)."""
    if shape == "circle":
        return None
    if shape == "star":
        ang = -math.pi / 2 + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, float(rng.uniform(0.35, 0.55)))
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    elif shape == "cross":
        w = float(rng.uniform(0.22, 0.4))
        pts = np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
                        (-1, -w), (-w, -w)])
    elif shape == "square":
        pts = _OUTLINES["square"] * float(rng.uniform(0.85, 1.1))
    elif shape == "diamond":
        w = float(rng.uniform(0.6, 0.85))
        pts = np.array([(0.0, -1.0), (w, 0.0), (0.0, 1.0), (-w, 0.0)])
    else:
        pts = _OUTLINES[shape]
    a = math.radians(float(rng.uniform(-8, 8)))
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ rot.T


def _rasterise(shape: str, cx: float, cy: float, r: float, size: int, outline: np.ndarray | None = None
               ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw one object in a small crop: returns (crop uint8: 1 fill, 2 outline; (y0, y1, x0, x1)).
    ``outline``: unit polygon to draw instead of the shape's standard one."""
    x0, y0 = max(int(cx - r) - 1, 0), max(int(cy - r) - 1, 0)
    x1, y1 = min(int(math.ceil(cx + r)) + 2, size), min(int(math.ceil(cy + r)) + 2, size)
    crop = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(crop)
    lx, ly = cx - x0, cy - y0
    if shape == "circle":
        draw.ellipse((lx - r, ly - r, lx + r, ly + r), fill=1, outline=2)
    else:
        pts = (_OUTLINES[shape] if outline is None else outline) * r + (lx, ly)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=1, outline=2)
    return np.asarray(crop), (y0, y1, x0, x1)


def make_scene(rng: np.random.Generator, size: int = 224,
               pairs: tuple[tuple[str, str], ...] = TRAIN_PAIRS,
               n_objects: int | None = None, geometry: np.random.Generator | None = None) -> Scene:
    """Sample a scene of 1-6 objects whose colour-shape pairs come from ``pairs``.

    With ``geometry`` (styled scenes), every object's outline is drawn with other proportions and
    a small rotation from that generator (``rng``'s draws are unchanged by it).

    Each scene draws from a few colours and shapes so that repeats (needed for "the two circles",
    "the larger star", ...) are common. Objects are re-placed (up to 20 tries, then dropped) until
    every object keeps at least MIN_VISIBLE of its area visible.
    """
    if not 64 <= size <= 1024:
        raise ValueError(f"RefShapes size must be between 64 and 1024 pixels, got {size}")
    n = n_objects or int(rng.choice(6, p=N_OBJECT_WEIGHTS)) + 1
    colours = set(rng.choice(COLOURS, int(rng.integers(2, 5)), replace=False).tolist())
    shapes = set(rng.choice(SHAPES, int(rng.integers(2, 5)), replace=False).tolist())
    pool = [p for p in pairs if p[0] in colours and p[1] in shapes] or list(pairs)
    ids = np.zeros((size, size), dtype=np.uint8)
    area: list[int] = []
    visible: list[int] = []
    placed: list[tuple[str, str, str, float, float, float]] = []
    fills: list[tuple[int, int, int]] = []
    for _ in range(n):
        colour, shape = pool[int(rng.integers(len(pool)))]
        sz = "small" if rng.random() < 0.5 else "large"
        r = float(rng.uniform(*RADIUS[sz])) * size
        outline = None if geometry is None else _jitter_outline(shape, geometry)
        for _try in range(20):
            cx, cy = rng.uniform(r + 1, size - r - 1, 2).tolist()
            crop, (y0, y1, x0, x1) = _rasterise(shape, cx, cy, r, size, outline)
            on = crop > 0
            hidden = np.bincount(ids[y0:y1, x0:x1][on] >> 1, minlength=len(placed) + 1)[1:]
            if all(v - h >= MIN_VISIBLE * a for v, h, a in zip(visible, hidden, area)):
                break
        else:
            continue
        k = len(placed)
        region = ids[y0:y1, x0:x1]
        region[on] = (2 * (k + 1) + (crop[on] == 2)).astype(np.uint8)
        visible = [v - h for v, h in zip(visible, hidden)] + [int(on.sum())]
        area.append(int(on.sum()))
        placed.append((shape, colour, sz, cx, cy, r))
        jitter = rng.integers(-JITTER[0], JITTER[0] + 1) + rng.integers(-JITTER[1], JITTER[1] + 1, 3)
        fills.append(tuple(int(v) for v in np.clip(np.add(RGB[colour], jitter), 0, 255)))
    objects = tuple(Obj(shape, colour, sz, cx / size, cy / size, r / size, float(v / a))
                    for (shape, colour, sz, cx, cy, r), v, a in zip(placed, visible, area))
    background = tuple(int(v) for v in rng.integers(170, 236, 3))
    gradient = (int(rng.integers(GRADIENT_DIRECTIONS)), int(rng.integers(10, 31))) \
        if rng.random() < 0.5 else (0, 0)
    return Scene(size, objects, tuple(fills), background, gradient, ids)


@lru_cache(maxsize=2 * GRADIENT_DIRECTIONS)
def _ramp(size: int, direction: int) -> np.ndarray:
    """(H, W) uint16 in 0..255: position along one of GRADIENT_DIRECTIONS directions."""
    angle = 2 * math.pi * direction / GRADIENT_DIRECTIONS
    t = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    ramp = t[None, :] * math.cos(angle) + t[:, None] * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    return np.round(ramp * 255).astype(np.uint16)


def _paint(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(index (H, W) uint8, palette (K, 3) uint8): the image is ``palette[index]``.

    Palette entries 2..2n+1 are the objects' fills and outlines (a darker shade), entries from 16
    on the background's gradient levels: at most 16 + 31 colours, so the PNG is palette-based.
    """
    direction, amp = scene.gradient
    lut = np.zeros((16 + amp + 1, 3), dtype=np.int32)
    for i, fill in enumerate(scene.fills):
        lut[2 * i + 2] = fill
        lut[2 * i + 3] = [int(v * 0.55) for v in fill]
    lut[16:] = np.asarray(scene.background)[None, :] + np.arange(amp + 1)[:, None] - amp // 2
    if amp:
        level = (_ramp(scene.size, direction) * amp + 128) >> 8
        index = np.where(scene.ids == 0, (level + 16).astype(np.uint8), scene.ids)
    else:
        index = np.where(scene.ids == 0, np.uint8(16), scene.ids)
    return index, np.clip(lut, 0, 255).astype(np.uint8)


def render(scene: Scene, style: np.random.Generator | None = None) -> Image.Image:
    """The RGB image of a scene; with ``style``, drawn in a look chosen by that generator."""
    if style is not None:
        return render_styled(scene, style)
    index, palette = _paint(scene)
    return Image.fromarray(palette[index], "RGB")


def _background(size: int, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A light background of a random kind: flat, linear gradient, two-tone, checker, stripes,
    smooth noise or grain. (H, W, 3) float32."""
    kind = int(rng.integers(7))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:
        field = np.zeros((size, size), np.float32)
    elif kind == 1:
        a = rng.uniform(0, 2 * math.pi)
        field = (xx * math.cos(a) + yy * math.sin(a)) * rng.uniform(20, 50)
    elif kind == 2:
        field = np.where(xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1) > rng.uniform(-0.5, 0.5), 1.0, -1.0)
        field = field.astype(np.float32) * rng.uniform(6, 18)
    elif kind == 3:
        cell = rng.uniform(0.04, 0.15)
        field = (((xx // cell) + (yy // cell)) % 2 * 2 - 1).astype(np.float32) * rng.uniform(4, 12)
    elif kind == 4:
        a, period = rng.uniform(0, math.pi), rng.uniform(0.03, 0.12)
        phase = (xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period
        field = np.sin(phase).astype(np.float32) * rng.uniform(4, 12)
    elif kind == 5:
        coarse = rng.normal(0, 1, (6, 6)).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BICUBIC)) * rng.uniform(6, 16)
    else:
        field = rng.normal(0, rng.uniform(3, 9), (size, size)).astype(np.float32)
    return base[None, None, :] + field[..., None]


def render_styled(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The scene in another look, so that a model trained on it does not depend on the exact
    drawing: background kind, shading across each object, outline kept / removed / of another
    shade, anti-aliased (smoothed) edges, grain, and JPEG-like blur. Masks are unchanged (the same
    id map); object colours stay well inside their colour names."""
    size, labels, ids = scene.size, scene.ids >> 1, scene.ids
    base = np.asarray(scene.background, np.float32) + rng.uniform(-15, 15)
    img = _background(size, base, rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    outline_kind = int(rng.integers(3))  # 0 dark outline, 1 none, 2 lighter outline
    for i, (fill, o) in enumerate(zip(scene.fills, scene.objects)):
        region = labels == i + 1
        if not region.any():
            continue
        colour = np.asarray(fill, np.float32)
        if rng.random() < 0.6:  # shading: a linear light ramp across the object
            a, amp = rng.uniform(0, 2 * math.pi), rng.uniform(0.05, 0.18)
            t = ((xx - o.x * size) * math.cos(a) + (yy - o.y * size) * math.sin(a)) / max(o.r * size, 1.0)
            shade = 1 + amp * np.clip(t, -1, 1)
        else:
            shade = np.ones_like(xx)
        img[region] = colour[None, :] * shade[region][:, None]
        edge = region & (ids & 1).astype(bool)
        if outline_kind == 0:
            img[edge] = colour * 0.55
        elif outline_kind == 2:
            img[edge] = colour * 0.8
    img = np.clip(img, 0, 255).astype(np.uint8)
    out = Image.fromarray(img, "RGB")
    if rng.random() < 0.6:  # anti-aliased look
        from PIL import ImageFilter

        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.0))))
    if rng.random() < 0.4:  # grain
        arr = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(2, 6), (size, size, 3))
        out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return out


def render_palette(scene: Scene) -> Image.Image:
    """The same image in Pillow's palette mode "P" (what ``generate`` saves: 3x less to encode)."""
    index, palette = _paint(scene)
    im = Image.fromarray(index, "L")
    im.putpalette(palette.tobytes(), "RGB")
    return im


@dataclass(frozen=True, eq=False)
class SceneSamples:
    """One scene with its referring phrases and (optionally) VQA (question, answer, template)."""

    index: int
    scene: Scene
    phrases: tuple[Phrase, ...]
    vqa: tuple[tuple[str, str, str], ...]


def _pairs_for(split: str) -> tuple[tuple[str, str], ...]:
    if split not in SPLITS:
        raise ValueError(f"unknown RefShapes split {split!r}; expected one of {', '.join(SPLITS)}")
    return tuple(sorted(HELD_OUT_PAIRS)) if split == "test-compositional" else TRAIN_PAIRS


def _stream(seed: int, split: str, index: int, *extra: int) -> np.random.Generator:
    """The random stream of one scene (``extra`` picks an independent sub-stream: 1 geometry,
    2 style, 3 VQA, 4 multi-object requests)."""
    return np.random.default_rng([seed, SPLITS.index(split), index, *extra])


def _scene(rng: np.random.Generator, split: str, seed: int, index: int, size: int, styled: bool) -> Scene:
    geometry = _stream(seed, split, index, 1) if styled else None
    return make_scene(rng, size, _pairs_for(split), geometry=geometry)


def iter_scenes(split: str, seed: int, n: int, size: int = 224, per_image: int = 4,
                vqa: bool = False, styled: bool = False) -> Iterator[SceneSamples]:
    """Scenes with, in all, exactly ``n`` referring phrases (``per_image`` at most per scene).

    Kinds are drawn with KIND_WEIGHTS; a kind the scene cannot express is carried over to the next
    scenes so that the mix stays close to the weights. With ``vqa`` each scene adds one VQA item.
    ``styled`` scenes draw their outlines with other geometry (see :func:`render_styled` for the look).
    """
    pairs = _pairs_for(split)
    if seed < 0 or n < 0 or per_image < 1:
        raise ValueError(f"need seed >= 0, n >= 0 and per_image >= 1 (got {seed}, {n}, {per_image})")
    allowed = set(pairs)

    def pair_ok(colour: str, shape: str) -> bool:
        return (colour, shape) in allowed
    kinds, weights = list(KIND_WEIGHTS), np.array(list(KIND_WEIGHTS.values()))
    carry: list[str] = []
    done, index = 0, 0
    while done < n:
        rng = _stream(seed, split, index)
        scene = _scene(rng, split, seed, index, size, styled)
        want = min(per_image, n - done)
        todo = carry[:want] + [kinds[int(i)] for i in rng.choice(len(kinds), want, p=weights)]
        carry = carry[want:]
        phrases: list[Phrase] = []
        objs = list(scene.objects)
        for kind in todo[:want]:
            ph = propose(objs, kind, rng, pair_ok)
            if ph is None or any(ph.text == p.text for p in phrases):
                carry.append(kind)
            else:
                phrases.append(ph)
        carry = carry[-50:]  # never let an unlucky run grow without bound
        items = ()
        if vqa:
            item = propose_vqa(objs, rng, pair_ok)
            items = (item,) if item else ()
        done += len(phrases)
        yield SceneSamples(index, scene, tuple(phrases), items)
        index += 1


@lru_cache(maxsize=64)
def scene_at(split: str, seed: int, index: int, size: int, styled: bool = False) -> Scene:
    """Scene number ``index`` of a split, regenerated from its seed (as ``iter_scenes`` makes it)."""
    return _scene(_stream(seed, split, index), split, seed, index, size, styled)


@dataclass(frozen=True)
class LazyImage:
    """Draws one scene's image on demand, so a dataset of millions of samples costs only metadata.
    All samples of a scene share one LazyImage (training groups expressions of an image by it)."""

    split: str
    seed: int
    index: int
    size: int
    styled: bool = False

    def scene(self) -> Scene:
        return scene_at(self.split, self.seed, self.index, self.size, self.styled)

    def __call__(self) -> Image.Image:
        style = _stream(self.seed, self.split, self.index, 2) if self.styled else None
        return render(self.scene(), style)


@dataclass(frozen=True)
class LazyMask:
    """The visible mask of ``target`` objects in a lazily drawn scene."""

    image: LazyImage
    target: frozenset[int]

    def __call__(self) -> np.ndarray:
        return self.image.scene().mask(self.target)


def iter_samples(split: str, seed: int, n: int, size: int = 224, per_image: int = 4,
                 vqa: bool = False, styled: bool = False) -> Iterator[Sample]:
    """In-memory Samples (image and masks drawn on demand), for tests, the demo and training."""
    k = 0
    for item in iter_scenes(split, seed, n, size, per_image, vqa, styled):
        image = LazyImage(split, seed, item.index, size, styled)
        for ph in item.phrases:
            multi = ph.expr.kind == "multi"
            yield Sample(
                id=f"{k:06d}", image=image, text=ph.text, kind=ph.expr.kind,
                mask=LazyMask(image, ph.target) if ph.target else None,
                instances=tuple(LazyMask(image, frozenset({i})) for i in sorted(ph.target)) if multi else None,
                where=f"refshapes:{split}:{seed}:{k}")
            k += 1
        for q, a, kind in item.vqa:
            yield Sample(id=f"{k:06d}", image=image, question=q, answer=a,
                         kind=kind, where=f"refshapes:{split}:{seed}:{k}")
            k += 1


def iter_vqa_samples(split: str, seed: int, n: int, size: int = 224, per_image: int = 3,
                     styled: bool = False) -> Iterator[Sample]:
    """``n`` RefShapes VQA samples (colour of a unique shape, counts, existence), up to ``per_image``
    distinct questions per scene, from a random stream of their own."""
    allowed = set(_pairs_for(split))
    k, index = 0, 0
    while k < n:
        image = LazyImage(split, seed, index, size, styled)
        objs = list(image.scene().objects)
        rng, asked = _stream(seed, split, index, 3), set()
        for _ in range(per_image):
            item = propose_vqa(objs, rng, lambda c, s: (c, s) in allowed)
            if item is None or item[0] in asked or k >= n:
                continue
            asked.add(item[0])
            yield Sample(id=f"{k:06d}", image=image, question=item[0], answer=item[1], kind=item[2],
                         where=f"refshapes-vqa:{split}:{seed}:{k}")
            k += 1
        index += 1


MULTI_KINDS = ("attribute", "size", "position", "relation", "none")
MULTI_KIND_WEIGHTS = (0.25, 0.2, 0.2, 0.2, 0.15)


def iter_multi_samples(split: str, seed: int, n: int, size: int = 224, styled: bool = False) -> Iterator[Sample]:
    """``n`` multi-object requests, one per scene: two or three single-object phrases (present
    objects, and now and then an absent one), each with its own mask (``phrases`` / ``instances``;
    an absent object's mask is None). The request text joins the phrases: "a and b", "a, b and c"."""
    allowed = set(_pairs_for(split))
    k, index = 0, 0
    while k < n:
        image = LazyImage(split, seed, index, size, styled)
        objs = list(image.scene().objects)
        rng = _stream(seed, split, index, 4)
        index += 1
        want = 2 if rng.random() < 0.6 else 3
        phrases: list[Phrase] = []
        for kind in rng.choice(MULTI_KINDS, 3 * want, p=MULTI_KIND_WEIGHTS):
            if len(phrases) == want:
                break
            ph = propose(objs, str(kind), rng, lambda c, s: (c, s) in allowed)
            if ph is None or any(ph.text == p.text or (ph.target and ph.target == p.target) for p in phrases):
                continue
            if not ph.target and sum(not p.target for p in phrases) >= want - 1:
                continue  # at least one present object per request
            phrases.append(ph)
        if len(phrases) < 2:
            continue
        texts = [p.text for p in phrases]
        union = frozenset().union(*(p.target for p in phrases))
        yield Sample(id=f"{k:06d}", image=image, text=join_phrases(texts), kind="multi-object",
                     mask=LazyMask(image, union) if union else None, phrases=tuple(texts),
                     instances=tuple(LazyMask(image, p.target) if p.target else None for p in phrases),
                     where=f"refshapes-multi:{split}:{seed}:{k}")
        k += 1


def join_phrases(texts: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]


def refshapes_samples(kind: str, split: str, seed: int, n: int, size: int = 224, styled: bool = False,
                      per_image: int = 4, vqa: bool = False) -> Iterator[Sample]:
    """The samples of one RefShapes dataset kind: ``refer`` (referring expressions, with ``vqa``
    also one VQA line per scene), ``vqa`` (VQA only) or ``multi`` (multi-object requests)."""
    if kind == "refer":
        return iter_samples(split, seed, n, size, per_image, vqa, styled)
    if kind == "vqa":
        return iter_vqa_samples(split, seed, n, size, styled=styled)
    if kind == "multi":
        return iter_multi_samples(split, seed, n, size, styled)
    raise ValueError(f"unknown RefShapes kind {kind!r}; expected refer, vqa or multi")


def generate(out_dir: str | Path, split: str, n: int, seed: int, size: int = 224,
             vqa: bool = False, progress: bool = True, per_image: int = 4, kind: str = "refer",
             styled: bool = False) -> Path:
    """Write ``out_dir/<name>.jsonl`` with ``n`` samples of ``kind`` (see :func:`refshapes_samples`),
    their images under ``out_dir/<name>/images/<scene>.png`` and masks under
    ``out_dir/<name>/masks/<scene>_<object ids>.png``; ``name`` is the split (``<split>-vqa``,
    ``<split>-multi`` for the other kinds, ``-styled`` appended for styled scenes).

    Returns the path of the JSONL file. Referring lines have ``id``, ``image``, ``text``, ``mask``
    (null for no target), ``kind`` and, for multi-target lines, ``instances``; VQA lines have
    ``question``, ``answer`` and ``kind`` (``vqa-colour``, ``vqa-count`` or ``vqa-exists``); multi-object
    lines add ``phrases`` and one ``instances`` entry per phrase (null for an absent object).
    """
    from self1e.data.jsonl import sample_to_record

    _pairs_for(split)
    name = split + ("" if kind == "refer" else f"-{kind}") + ("-styled" if styled else "")
    out = Path(out_dir)
    (out / name / "images").mkdir(parents=True, exist_ok=True)
    (out / name / "masks").mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.jsonl"
    images: set[int] = set()
    masks: set[str] = set()

    def image_file(image: LazyImage) -> Path:
        rel = out / name / "images" / f"{image.index:06d}.png"
        if image.index not in images:
            if styled:
                image().save(rel, **PNG_OPTIONS)
            else:
                render_palette(image.scene()).save(rel, **PNG_OPTIONS)
            images.add(image.index)
        return rel

    def mask_file(m: LazyMask | None) -> Path | None:
        if m is None:
            return None
        rel = out / name / "masks" / f"{m.image.index:06d}_{'-'.join(map(str, sorted(m.target)))}.png"
        if str(rel) not in masks:
            write_mask_png(m(), rel)
            masks.add(str(rel))
        return rel

    k = 0
    with path.open("w", encoding="utf-8", newline="\n") as f, \
            tqdm(total=n, desc=f"RefShapes {name}", unit="sample", disable=not progress) as bar:
        for sample in refshapes_samples(kind, split, seed, n, size, styled, per_image, vqa):
            on_disk = Sample(id=sample.id, image=image_file(sample.image), text=sample.text,
                             mask=mask_file(sample.mask), kind=sample.kind, question=sample.question,
                             answer=sample.answer, phrases=sample.phrases,
                             instances=None if sample.instances is None else tuple(map(mask_file, sample.instances)))
            f.write(json.dumps(sample_to_record(on_disk, out)) + "\n")
            k += 1
            bar.update(0 if sample.is_vqa and kind == "refer" else 1)
    log.info("RefShapes %s: wrote %d lines to %s", name, k, path)
    return path
