"""ADE20K-style semantic segmentation as referring samples ("segment the {class}").

Layout: ``ROOT/ade20k/images/<split>/<name>.jpg`` and ``ROOT/ade20k/annotations/<split>/<name>.png``
(uint8 or uint16 label maps). Label 0 is "other/unlabelled" in ADE20K: it is never a class, and its
pixels form each sample's ``ignore`` mask (left out of the metric, as the ADE20K benchmark does).
Label k >= 1 is ``classes[k - 1]``: the 150 ADE20K (SceneParsing) class names by default, or one name
per line from ``ROOT/ade20k/classes.txt`` when that file exists. One Sample per class present.

:func:`label_map_samples` is the one reader of label-map folders: ADE20K here, COCO-Stuff and Mapillary
Vistas in :mod:`self1e.data.semseg_sets` (each with its own class list and ignore labels).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from self1e.common.errors import DataError
from self1e.data.sample import Sample

log = logging.getLogger(__name__)

ADE20K_CLASSES = tuple("""wall|building|sky|floor|tree|ceiling|road|bed|windowpane|grass|cabinet|
sidewalk|person|earth|door|table|mountain|plant|curtain|chair|car|water|painting|sofa|shelf|house|
sea|mirror|rug|field|armchair|seat|fence|desk|rock|wardrobe|lamp|bathtub|railing|cushion|base|box|
column|signboard|chest of drawers|counter|sand|sink|skyscraper|fireplace|refrigerator|grandstand|
path|stairs|runway|case|pool table|pillow|screen door|stairway|river|bridge|bookcase|blind|
coffee table|toilet|flower|book|hill|bench|countertop|stove|palm|kitchen island|computer|
swivel chair|boat|bar|arcade machine|hovel|bus|towel|light|truck|tower|chandelier|awning|
streetlight|booth|television receiver|airplane|dirt track|apparel|pole|land|bannister|escalator|
ottoman|bottle|buffet|poster|stage|van|ship|fountain|conveyer belt|canopy|washer|plaything|
swimming pool|stool|barrel|basket|waterfall|tent|bag|minibike|cradle|oven|ball|food|step|tank|
trade name|microwave|pot|animal|bicycle|lake|dishwasher|screen|blanket|sculpture|hood|sconce|vase|
traffic light|tray|ashcan|fan|pier|crt screen|plate|monitor|bulletin board|shower|radiator|glass|
clock|flag""".replace("\n", "").split("|"))
assert len(ADE20K_CLASSES) == 150
TEMPLATE = "segment the {}"


def read_label_map(path: Path) -> np.ndarray:
    """(H, W) integer label map from a uint8 or uint16 PNG."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L")).astype(
                np.int64)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read label map {path}: {e}") from None


def _lazy(path: Path, select: Callable[[np.ndarray], np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: select(read_label_map(path))


def label_map_samples(ann_dir: Path, image_dir: Path, classes: Sequence[str], what: str, *, offset: int = 0,
                      ignore_labels: Collection[int] = (), template: str = TEMPLATE) -> list[Sample]:
    """One Sample per (label map, class present) from the ``*.png`` label maps in ``ann_dir``; the
    readers of ADE20K, COCO-Stuff and Mapillary Vistas are this function with their own rules.

    Label ``offset + k`` is ``classes[k]``. Pixels of ``ignore_labels`` (which may include class
    labels, e.g. COCO-Stuff's "-" classes) form each sample's ``ignore`` mask and never become a
    sample; any other label outside the class list is a DataError naming the file. The image of
    ``<stem>.png`` is ``image_dir/<stem>`` + ``.jpg``/``.jpeg``/``.png`` (a DataError when none exists).
    Ids are ``<stem>_<label>``. Every label map is decoded once here to find the labels present;
    masks are decoded again lazily. Label maps with no class at all are counted and logged.
    """
    for d in (ann_dir, image_dir):
        if not d.is_dir():
            raise DataError(f"{what} folder not found: {d}")
    ignore = np.array(sorted(set(ignore_labels)), dtype=np.int64)
    samples: list[Sample] = []
    n_maps = n_unlabelled = n_ignored_pairs = 0
    for ann in sorted(ann_dir.glob("*.png")):
        image = next((p for p in (image_dir / f"{ann.stem}{e}" for e in (".jpg", ".jpeg", ".png"))
                      if p.is_file()), None)
        if image is None:
            raise DataError(f"{ann}: no image {ann.stem}.jpg in {image_dir}")
        labels = read_label_map(ann)
        n_maps += 1
        values = np.unique(labels)
        ignored = np.isin(values, ignore)
        n_ignored_pairs += int(np.isin(values[ignored], np.arange(offset, offset + len(classes))).sum())
        present = [int(v) for v in values[~ignored]]
        for k in present:
            if not offset <= k < offset + len(classes):
                raise DataError(f"{ann}: label {k} but only {len(classes)} class names are known "
                                f"(labels {offset}..{offset + len(classes) - 1} of {what})")
        if not present:
            n_unlabelled += 1
        mask_ignore = _lazy(ann, lambda m: np.isin(m, ignore)) if ignored.any() else None
        for k in present:
            samples.append(Sample(exif=False, id=f"{ann.stem}_{k}", image=image,
                                  text=template.format(classes[k - offset]),
                                  mask=_lazy(ann, lambda m, k=k: m == k), ignore=mask_ignore,
                                  where=f"{ann}: label {k}"))
    if not samples:
        raise DataError(f"{ann_dir}: no labelled .png annotation files")
    log.info("%s: %d label maps, %d samples; %d label maps with no class skipped, %d (image, class) pairs of "
             "ignored classes left to the ignore mask", what, n_maps, len(samples), n_unlabelled, n_ignored_pairs)
    return samples


def load_semseg(root: str | Path, split: str, classes: Sequence[str] | None = None,
                template: str = TEMPLATE) -> list[Sample]:
    """One Sample per (image, class present); ids are ``<name>_<label>`` (:func:`label_map_samples`)."""
    base = Path(root) / "ade20k"
    if classes is None:
        names_file = base / "classes.txt"
        classes = ([c.strip() for c in names_file.read_text(encoding="utf-8").splitlines() if c.strip()]
                   if names_file.is_file() else ADE20K_CLASSES)
    return label_map_samples(base / "annotations" / split, base / "images" / split, classes, f"ADE20K {split}",
                             offset=1, ignore_labels=(0,), template=template)
