"""Readers for RefCOCO, RefCOCO+, RefCOCOg, RefCLEF and gRefCOCO from their official files.

Layout (docs/data.md): ``ROOT/<dataset>/refs(<splitBy>).p`` (``grefs(<splitBy>).json`` for
gRefCOCO) and ``instances.json`` beside it; images under ``ROOT/images/mscoco/images/train2014``
(RefCLEF: ``ROOT/images/saiapr_tc-12``). Every sentence of every ref is one Sample whose mask is
decoded lazily with pycocotools. The image file is the one named in ``instances.json`` (a ref's
``file_name`` carries an extra ``_<n>`` suffix). gRefCOCO: ``ann_id`` is a list; ``[-1]`` or
``no_target`` means no target (mask None); several annotations are merged into one mask.
"""
from __future__ import annotations

import json
import logging
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


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a bool (H, W) array."""
    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]  # fewer than 3 points draws nothing
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
        rle = seg
    else:
        raise DataError(f"unknown segmentation format: {str(seg)[:80]}")
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
    chosen = [r for r in refs if isinstance(r, dict) and r.get("split") == split]
    if not chosen:
        found = sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})
        raise DataError(f"{refs_path}: no refs in split {split!r}; splits present: {', '.join(found)}")
    samples: list[Sample] = []
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
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: bad or unknown field/id {e}") from None
        h, w = int(image["height"]), int(image["width"])
        mask = _merged_mask(ref_anns, h, w) if ref_anns else None
        instances = (tuple(_merged_mask([a], h, w) for a in ref_anns)
                     if len(ref_anns) > 1 else None)
        kind = None
        if dataset == "grefcoco":
            kind = "none" if not ref_anns else "multi" if len(ref_anns) > 1 else "single"
        for s in sentences:
            text = s.get("sent") or s.get("raw") or ""
            if not text.strip():
                raise DataError(f"{where}: sentence {s.get('sent_id')} has an empty 'sent'")
            samples.append(Sample(exif=False,
                id=f"{r['ref_id']}_{s.get('sent_id')}", image=image_dir / image["file_name"],
                text=text, mask=mask, kind=kind, where=f"{where} sent_id {s.get('sent_id')}",
                instances=instances))
    log.info("%s(%s) %s: %d refs, %d sentences", dataset, split_by, split, len(chosen), len(samples))
    return samples
