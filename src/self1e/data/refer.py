"""Readers for RefCOCO, RefCOCO+, RefCOCOg, RefCLEF and gRefCOCO from their official files.

Layout (docs/data.md): ``ROOT/<dataset>/refs(<splitBy>).p`` (``grefs(<splitBy>).json`` for
gRefCOCO) and ``instances.json`` beside it; images under ``ROOT/images/mscoco/images/train2014``
(RefCLEF: ``ROOT/images/saiapr_tc-12``). Every sentence of every ref is one Sample whose mask is
decoded lazily with pycocotools, after :func:`check_segmentation` has checked every annotation a ref
uses when the split is loaded (a bad polygon or RLE is a DataError naming the ref and annotation id,
never an empty mask). The image file is the one named in ``instances.json`` (a ref's
``file_name`` carries an extra ``_<n>`` suffix). gRefCOCO: ``ann_id`` is a list; ``[-1]`` or
``no_target`` means no target (mask None); several annotations are merged into one mask.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from self1e.common.errors import DataError
from self1e.data import safe_pickle
from self1e.data.sample import Sample, read_json

log = logging.getLogger(__name__)

DATASETS = ("refcoco", "refcoco+", "refcocog", "refclef", "grefcoco")
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc",
                    "grefcoco": "unc"}
IMAGE_DIRS = {"refclef": "images/saiapr_tc-12"}
COCO_IMAGE_DIR = "images/mscoco/images/train2014"


MAX_COORD_FACTOR = 4
"""Polygon coordinates must satisfy ``|v| <= MAX_COORD_FACTOR * max(width, height)`` of their image."""


def _rle_string_counts(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (each number: 5-bit groups as characters
    ``'0'`` + value, bit 0x20 = more groups follow, bit 0x10 of the last group = negative; from
    the third number on, a delta to the number two places before). Malformed strings raise DataError."""
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise DataError("compressed RLE 'counts' ends in the middle of a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise DataError(f"compressed RLE 'counts' holds the character {counts[p]!r} at {p} "
                                "(allowed: '0' to 'o')")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        out.append(x + out[-2] if len(out) > 2 else x)
    return out


def _check_polygons(seg: list, height: int, width: int) -> None:
    if not seg:
        raise DataError("segmentation: an empty list of polygons")
    bound = MAX_COORD_FACTOR * max(height, width)
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or not all(type(v) in (int, float) for v in poly):
            raise DataError(f"segmentation polygon {k}: expected a list of numbers, got {str(poly)[:80]}")
        if len(poly) % 2:
            raise DataError(f"segmentation polygon {k} has {len(poly)} coordinates; a polygon needs an even "
                            "number of them, at least 6 (3 points)")
        if not all(math.isfinite(v) for v in poly):
            raise DataError(f"segmentation polygon {k} has a non-finite coordinate (NaN or inf)")
        worst = max((abs(v) for v in poly), default=0)
        if worst > bound:
            raise DataError(f"segmentation polygon {k} has the coordinate {worst:g}, far outside the "
                            f"{width}x{height} image (|v| <= {MAX_COORD_FACTOR} x max(width, height) = {bound})")
    if not any(len(poly) >= 6 for poly in seg):  # a part of 1-2 points has no area: fine beside real ones
        raise DataError(f"segmentation has no polygon of at least 3 points (parts of {[len(p) for p in seg]} "
                        "coordinates): its mask would be empty")


def _check_rle(seg: dict, height: int, width: int) -> None:
    size, counts = seg.get("size"), seg.get("counts")
    if not isinstance(size, (list, tuple)) or [type(v) for v in size] != [int, int] or list(size) != [height, width]:
        raise DataError(f"RLE 'size' is {str(size)[:40]}, expected the image's [height, width] = [{height}, {width}]")
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise DataError("compressed RLE 'counts' is not ASCII") from None
    if isinstance(counts, str):
        if len(counts) > 8 * (height * width + 1):
            raise DataError(f"compressed RLE 'counts' is {len(counts):,} characters long, too long for a "
                            f"{width}x{height} image")
        runs = _rle_string_counts(counts)
        kind = "compressed RLE"
    elif isinstance(counts, list):
        if not all(type(v) is int for v in counts):
            raise DataError(f"uncompressed RLE 'counts' must be whole numbers, got {str(counts)[:80]}")
        runs, kind = counts, "uncompressed RLE"
    else:
        raise DataError(f"RLE 'counts' must be a string or a list of whole numbers, got {type(counts).__name__}")
    if any(v < 0 for v in runs):
        raise DataError(f"{kind} 'counts' holds a negative run length ({min(runs)})")
    if sum(runs) != height * width:
        raise DataError(f"{kind} 'counts' sum to {sum(runs):,} pixels, but the {width}x{height} image has "
                        f"{height * width:,}")


def check_segmentation(seg: Any, height: int, width: int) -> None:
    """Check a COCO ``segmentation`` for an image of ``height`` x ``width`` before pycocotools sees
    it (which hangs, crashes or returns garbage on bad input); DataError says what is wrong.

    Polygons: a non-empty list of lists of an even number (at least 6: 3 points) of finite numbers
    with ``|v| <= MAX_COORD_FACTOR * max(width, height)``. RLE: ``size`` = ``[height, width]``;
    ``counts`` non-negative run lengths summing to exactly ``height * width``, as a list
    (uncompressed) or a well-formed COCO string (compressed)."""
    if isinstance(seg, list):
        _check_polygons(seg, height, width)
    elif isinstance(seg, dict):
        _check_rle(seg, height, width)
    else:
        raise DataError(f"unknown segmentation format: {str(seg)[:80]} (expected polygons or an RLE object)")


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a bool (H, W) array;
    checked first by :func:`check_segmentation`."""
    check_segmentation(seg, height, width)
    if isinstance(seg, list):  # parts under 3 points have no area (and 4 numbers would read as a box)
        rle = mask_utils.merge(mask_utils.frPyObjects([p for p in seg if len(p) >= 6], height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mask_utils.decode(rle)
    return (m.reshape(m.shape[0], m.shape[1], -1).max(axis=2) if m.ndim == 3 else m) > 0


def _merged_mask(anns: Sequence[dict], height: int, width: int) -> Callable[[], np.ndarray]:
    def draw() -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        for ann in anns:
            out |= decode_segmentation(ann["segmentation"], height, width)
        return out
    return draw


def _load_instances(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    if not path.is_file():
        raise DataError(f"instances file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(im["id"]): im for im in data["images"]}
        anns = {int(a["id"]): a for a in data["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a COCO-style instances file ({type(e).__name__}: {e})") from None
    return images, anns


def _load_refs(folder: Path, dataset: str, split_by: str) -> tuple[Path, list[dict]]:
    if dataset == "grefcoco":
        path = folder / f"grefs({split_by}).json"
        refs = read_json(path, "gRefCOCO refs file")
    else:
        path = folder / f"refs({split_by}).p"
        if not path.is_file():
            raise DataError(f"{dataset} refs file not found: {path}")
        refs = safe_pickle.load(path)
    if not isinstance(refs, list):
        raise DataError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return path, refs


def load_refer(root: str | Path, dataset: str, split: str, split_by: str | None = None
               ) -> list[Sample]:
    """All (ref, sentence) Samples of one split; ids are ``<ref_id>_<sent_id>``.

    Samples of one ref share one mask callable. ``kind`` is None except gRefCOCO, where it is
    ``single``, ``multi`` or ``none`` (number of targets).
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    root = Path(root)
    split_by = split_by or DEFAULT_SPLIT_BY[dataset]
    folder = root / dataset
    if not folder.is_dir():
        raise DataError(f"{dataset} folder not found: {folder} (expected ROOT/{dataset}/ under "
                        f"--root {root})")
    refs_path, refs = _load_refs(folder, dataset, split_by)
    images, anns = _load_instances(folder / "instances.json")
    image_dir = root / IMAGE_DIRS.get(dataset, COCO_IMAGE_DIR)
    for i, r in enumerate(refs):
        if not isinstance(r, dict):
            raise DataError(f"{refs_path}: entry {i}: expected a ref (a dict), got {type(r).__name__}")
    chosen = [r for r in refs if r.get("split") == split]
    if not chosen:
        found = sorted({str(r.get("split")) for r in refs})
        raise DataError(f"{refs_path}: no refs in split {split!r}; splits present: {', '.join(found)}")
    samples: list[Sample] = []
    checked: set[int] = set()  # annotations whose segmentation passed check_segmentation
    for r in chosen:
        where = f"{refs_path}: ref_id {r.get('ref_id')}"
        try:
            image = images[int(r["image_id"])]
            ann_ids = r["ann_id"] if isinstance(r["ann_id"], list) else [r["ann_id"]]
            ann_ids = [int(a) for a in ann_ids if int(a) >= 0]
            if r.get("no_target"):
                ann_ids = []
            ref_anns = [anns[a] for a in ann_ids]
            sentences = r["sentences"]
            h, w = image["height"], image["width"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: bad or unknown field/id {e}") from None
        if not all(type(v) is int and v > 0 for v in (h, w)):
            raise DataError(f"{where}: image {r['image_id']} in instances.json has height {h!r} and width {w!r}; "
                            "expected positive whole numbers")
        for a, ann in zip(ann_ids, ref_anns):
            if a in checked:
                continue
            try:
                same_image = int(ann["image_id"]) == int(r["image_id"])
            except (KeyError, TypeError, ValueError):
                same_image = False
            if not same_image:
                raise DataError(f"{where}: ann_id {a} belongs to image {ann.get('image_id')!r}, not to the ref's "
                                f"image {r['image_id']!r}")
            try:
                check_segmentation(ann.get("segmentation"), h, w)
            except DataError as e:
                raise DataError(f"{where}: ann_id {a}: {e}") from None
            checked.add(a)
        if not isinstance(sentences, list) or not sentences:
            raise DataError(f"{where}: field 'sentences': expected a non-empty list of sentence objects, "
                            f"got {str(sentences)[:80]}")
        mask = _merged_mask(ref_anns, h, w) if ref_anns else None
        instances = (tuple(_merged_mask([a], h, w) for a in ref_anns)
                     if len(ref_anns) > 1 else None)
        kind = None
        if dataset == "grefcoco":
            kind = "none" if not ref_anns else "multi" if len(ref_anns) > 1 else "single"
        for k, s in enumerate(sentences):
            if not isinstance(s, dict):
                raise DataError(f"{where}: field 'sentences': entry {k}: expected a sentence object, "
                                f"got {str(s)[:80]}")
            text = s.get("sent") or s.get("raw") or ""
            if not isinstance(text, str):
                raise DataError(f"{where}: sentence {s.get('sent_id')}: field 'sent': expected a string, "
                                f"got {text!r:.80}")
            if not text.strip():
                raise DataError(f"{where}: sentence {s.get('sent_id')} has an empty 'sent'")
            samples.append(Sample(exif=False,
                id=f"{r['ref_id']}_{s.get('sent_id')}", image=image_dir / image["file_name"],
                text=text, mask=mask, kind=kind, where=f"{where} sent_id {s.get('sent_id')}",
                instances=instances))
    log.info("%s(%s) %s: %d refs, %d sentences", dataset, split_by, split, len(chosen), len(samples))
    return samples
