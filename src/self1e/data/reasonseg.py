"""ReasonSeg reader: ``ROOT/reason_seg/ReasonSeg/<split>/<name>.jpg`` + ``<name>.json``.

Each JSON (labelme-like) has ``text`` (a list of queries), ``is_sentence`` and ``shapes``, each with a
``label`` (``target``, ``ignore``; ``flag`` is a deprecated annotation and skipped) and ``points``
(one polygon). Polygons are painted largest first, so a smaller polygon inside a larger one wins
(the evaluation protocol of the dataset's authors); ``ignore`` pixels become the Sample's ignore mask.
Polygons are rasterised with Pillow (vertices rounded, boundary included).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from self1e.common.errors import DataError
from self1e.data.sample import Sample

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _polygon_area(points: list[list[float]]) -> float:
    p = np.asarray(points, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def label_map(shapes: list[dict], size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8: 0 background, 1 target, 2 ignore; ``size`` is (width, height)."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for shape in sorted(shapes, key=lambda s: -_polygon_area(s["points"])):
        value = 2 if "ignore" in shape["label"].lower() else 1
        pts = [(float(x), float(y)) for x, y in shape["points"]]
        draw.polygon(pts, fill=value, outline=value)
    return np.asarray(canvas)


def _lazy(image: Path, shapes: list[dict], value: int) -> Callable[[], np.ndarray]:
    def draw() -> np.ndarray:
        with Image.open(image) as im:
            size = im.size
        return label_map(shapes, size) == value
    return draw


def _find_image(json_path: Path) -> Path:
    for ext in IMAGE_EXTS:
        p = json_path.with_suffix(ext)
        if p.is_file():
            return p
    raise DataError(f"{json_path}: no image next to it (looked for {', '.join(IMAGE_EXTS)})")


def read_reasonseg_json(json_path: Path, all_texts: bool = False) -> list[Sample]:
    """The Samples of one annotation file (first text only unless ``all_texts``)."""
    try:
        anno = json.loads(json_path.read_text(encoding="utf-8"))
        texts = anno["text"]
        shapes = [s for s in anno["shapes"] if s["label"].lower() != "flag"]
        for s in shapes:
            if len(s["points"]) < 3:
                raise DataError(f"{json_path}: field 'shapes': a polygon has fewer than 3 points")
    except json.JSONDecodeError as e:
        raise DataError(f"{json_path}: invalid JSON: {e}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{json_path}: missing or bad field {e}") from None
    if isinstance(texts, str):
        texts = [texts]
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataError(f"{json_path}: field 'text': expected a non-empty list of non-empty strings")
    image = _find_image(json_path)
    targets = [s for s in shapes if "ignore" not in s["label"].lower()]
    has_ignore = len(targets) < len(shapes)
    kind = "long" if anno.get("is_sentence") else "short"
    mask = _lazy(image, shapes, 1) if targets else None
    ignore = _lazy(image, shapes, 2) if has_ignore else None
    chosen = texts if all_texts else texts[:1]
    return [Sample(exif=False, id=f"{json_path.stem}_{i}" if all_texts else json_path.stem, image=image,
                   text=t, mask=mask, ignore=ignore, kind=kind, where=f"{json_path}: text {i}")
            for i, t in enumerate(chosen)]


def load_reasonseg(root: str | Path, split: str, all_texts: bool = False) -> list[Sample]:
    """ReasonSeg split from ``ROOT/reason_seg/ReasonSeg/<split>``; ``kind`` is ``short``/``long``."""
    folder = Path(root) / "reason_seg" / "ReasonSeg" / split
    if not folder.is_dir():
        raise DataError(f"ReasonSeg folder not found: {folder}")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder}: no .json annotation files")
    samples = [s for f in files for s in read_reasonseg_json(f, all_texts)]
    log.info("ReasonSeg %s: %d images, %d samples", split, len(files), len(samples))
    return samples
