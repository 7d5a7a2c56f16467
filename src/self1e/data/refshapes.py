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


def _rasterise(shape: str, cx: float, cy: float, r: float, size: int
               ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw one object in a small crop: returns (crop uint8: 1 fill, 2 outline; (y0, y1, x0, x1))."""
    x0, y0 = max(int(cx - r) - 1, 0), max(int(cy - r) - 1, 0)
    x1, y1 = min(int(math.ceil(cx + r)) + 2, size), min(int(math.ceil(cy + r)) + 2, size)
    crop = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(crop)
    lx, ly = cx - x0, cy - y0
    if shape == "circle":
        draw.ellipse((lx - r, ly - r, lx + r, ly + r), fill=1, outline=2)
    else:
        pts = _OUTLINES[shape] * r + (lx, ly)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=1, outline=2)
    return np.asarray(crop), (y0, y1, x0, x1)


def make_scene(rng: np.random.Generator, size: int = 224,
               pairs: tuple[tuple[str, str], ...] = TRAIN_PAIRS,
               n_objects: int | None = None) -> Scene:
    """Sample a scene of 1-6 objects whose colour-shape pairs come from ``pairs``.

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
        for _try in range(20):
            cx, cy = rng.uniform(r + 1, size - r - 1, 2).tolist()
            crop, (y0, y1, x0, x1) = _rasterise(shape, cx, cy, r, size)
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


def render(scene: Scene) -> Image.Image:
    """The RGB image of a scene."""
    index, palette = _paint(scene)
    return Image.fromarray(palette[index], "RGB")


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


def iter_scenes(split: str, seed: int, n: int, size: int = 224, per_image: int = 4,
                vqa: bool = False) -> Iterator[SceneSamples]:
    """Scenes with, in all, exactly ``n`` referring phrases (``per_image`` at most per scene).

    Kinds are drawn with KIND_WEIGHTS; a kind the scene cannot express is carried over to the next
    scenes so that the mix stays close to the weights. With ``vqa`` each scene adds one VQA item.
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
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        scene = make_scene(rng, size, pairs)
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
def scene_at(split: str, seed: int, index: int, size: int) -> Scene:
    """Scene number ``index`` of a split, regenerated from its seed (as ``iter_scenes`` makes it)."""
    return make_scene(np.random.default_rng([seed, SPLITS.index(split), index]), size, _pairs_for(split))


@dataclass(frozen=True)
class LazyImage:
    """Draws one scene's image on demand, so a dataset of millions of samples costs only metadata.
    All samples of a scene share one LazyImage (training groups expressions of an image by it)."""

    split: str
    seed: int
    index: int
    size: int

    def scene(self) -> Scene:
        return scene_at(self.split, self.seed, self.index, self.size)

    def __call__(self) -> Image.Image:
        return render(self.scene())


@dataclass(frozen=True)
class LazyMask:
    """The visible mask of ``target`` objects in a lazily drawn scene."""

    image: LazyImage
    target: frozenset[int]

    def __call__(self) -> np.ndarray:
        return self.image.scene().mask(self.target)


def iter_samples(split: str, seed: int, n: int, size: int = 224, per_image: int = 4,
                 vqa: bool = False) -> Iterator[Sample]:
    """In-memory Samples (image and masks drawn on demand), for tests, the demo and training."""
    k = 0
    for item in iter_scenes(split, seed, n, size, per_image, vqa):
        image = LazyImage(split, seed, item.index, size)
        for ph in item.phrases:
            multi = ph.expr.kind == "multi"
            yield Sample(
                id=f"{k:06d}", image=image, text=ph.text, kind=ph.expr.kind,
                mask=LazyMask(image, ph.target) if ph.target else None,
                instances=tuple(LazyMask(image, frozenset({i})) for i in sorted(ph.target)) if multi else None,
                where=f"refshapes:{split}:{seed}:{k}")
            k += 1
        for q, a, _ in item.vqa:
            yield Sample(id=f"{k:06d}", image=image, question=q, answer=a,
                         kind="vqa", where=f"refshapes:{split}:{seed}:{k}")
            k += 1


def generate(out_dir: str | Path, split: str, n: int, seed: int, size: int = 224,
             vqa: bool = False, progress: bool = True, per_image: int = 4) -> Path:
    """Write ``out_dir/<split>.jsonl`` with ``n`` referring samples (+ VQA lines with ``vqa``).

    Returns the path of the JSONL file. Each line has ``id``, ``image``, ``text``, ``mask`` (null for
    no target), ``kind`` and, for multi-target lines, ``instances``; VQA lines have ``question``,
    ``answer`` and ``kind`` "vqa" and follow the referring lines of their scene.
    """
    out = Path(out_dir)
    _pairs_for(split)
    (out / split / "images").mkdir(parents=True, exist_ok=True)
    (out / split / "masks").mkdir(parents=True, exist_ok=True)
    path = out / f"{split}.jsonl"
    k = 0
    with path.open("w", encoding="utf-8", newline="\n") as f, \
            tqdm(total=n, desc=f"RefShapes {split}", unit="sample", disable=not progress) as bar:
        for item in iter_scenes(split, seed, n, size, per_image, vqa):
            image_rel = f"{split}/images/{item.index:06d}.png"
            render_palette(item.scene).save(out / image_rel, **PNG_OPTIONS)
            saved: set[str] = set()

            def mask_file(target: frozenset[int], item=item, saved=saved) -> str:
                rel = f"{split}/masks/{item.index:06d}_{'-'.join(map(str, sorted(target)))}.png"
                if rel not in saved:
                    write_mask_png(item.scene.mask(target), out / rel)
                    saved.add(rel)
                return rel

            for ph in item.phrases:
                rec = {"id": f"{k:06d}", "image": image_rel, "text": ph.text,
                       "mask": mask_file(ph.target) if ph.target else None, "kind": ph.expr.kind}
                if ph.expr.kind == "multi":
                    rec["instances"] = [mask_file(frozenset({i})) for i in sorted(ph.target)]
                f.write(json.dumps(rec) + "\n")
                k += 1
            for q, a, _ in item.vqa:
                f.write(json.dumps({"id": f"{k:06d}", "image": image_rel, "question": q,
                                    "answer": a, "kind": "vqa"}) + "\n")
                k += 1
            bar.update(len(item.phrases))
    log.info("RefShapes %s: wrote %d lines to %s", split, k, path)
    return path
