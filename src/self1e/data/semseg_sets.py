"""The semantic and part segmentation sets of the SELF1E authors' training mix, in LISA's on-disk layout.

Every reader gives one Sample per (image, class present), with id ``<image stem>_<class index>``,
text ``TEMPLATE.format(class)`` ("segment the {class}", the ADE20K reader's template), ``kind`` None
(as the ADE20K reader) and lazily decoded masks. Layouts under ``ROOT`` (docs/data.md):

- ``ade20k`` (alias ``semseg``): :func:`self1e.data.semseg.load_semseg`.
- ``cocostuff``: label maps ``ROOT/cocostuff/<split>/<stem>.png`` (uint8; value k = class k of
  COCO-Stuff's 182-entry list, ``classes/cocostuff.txt``; 255 = unlabelled), images
  ``ROOT/coco/<split>/<stem>.jpg``. 255 and every class whose name holds a "-" (the "-other",
  "-stuff", "wall-brick", ... stuff classes, as the authors do) form the ``ignore`` mask and never
  become a sample.
- ``pascal_part``: VLPart's COCO-format ``ROOT/vlpart/pascal_part/<split>.json`` (categories
  ``object:part``), images ``ROOT/vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/<file_name>``.
- ``paco_lvis``: ``ROOT/vlpart/paco/annotations/paco_lvis_v1_<split>.json`` (categories ``object:part``
  or plain LVIS object names), images ``ROOT/coco/<file_name>`` (``train2017/...jpg``).
- ``mapillary``: Mapillary Vistas v2.0, ``ROOT/mapillary/config_v2.0.json`` (label k = ``labels[k]``,
  named by its ``readable`` name lower-cased; the "unlabeled" label is the ignore region), label maps
  ``ROOT/mapillary/<split>/v2.0/labels/<stem>.png``, images ``ROOT/mapillary/<split>/images/<stem>.jpg``.

Class names of the COCO-format part sets (:func:`part_class_name`): underscores become spaces,
parenthesised qualifiers are removed ("bow_(weapon)" -> "bow"), and ``object:part`` reads
"{part} of the {object}" ("dog:head" -> "head of the dog", so the text is "segment the head of the
dog"). A sample's mask is the union of every annotation (crowd or not) of its category on its image.
"""
from __future__ import annotations

import functools
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from self1e.common.errors import DataError
from self1e.data.refer import _merged_mask, check_segmentation
from self1e.data.sample import Sample, read_json
from self1e.data.semseg import TEMPLATE, label_map_samples, load_semseg

log = logging.getLogger(__name__)

COCOSTUFF_IGNORE_LABEL = 255
N_COCOSTUFF_CLASSES = 182
MAPILLARY_IGNORE_CLASS = "unlabeled"


@functools.cache
def cocostuff_classes() -> tuple[str, ...]:
    """COCO-Stuff's 182 class names (index k = label k), from the package's ``classes/cocostuff.txt``."""
    source = resources.files("self1e.data").joinpath("classes/cocostuff.txt")
    try:
        names = tuple(line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError as e:
        raise DataError(f"cannot read the COCO-Stuff class list {source}: {e}") from None
    if len(names) != N_COCOSTUFF_CLASSES:
        raise DataError(f"{source}: expected {N_COCOSTUFF_CLASSES} COCO-Stuff class names, found {len(names)}")
    return names


def load_cocostuff(root: str | Path, split: str) -> list[Sample]:
    classes = cocostuff_classes()
    ignore = [COCOSTUFF_IGNORE_LABEL, *(k for k, c in enumerate(classes) if "-" in c)]
    root = Path(root)
    return label_map_samples(root / "cocostuff" / split, root / "coco" / split, classes, f"COCO-Stuff {split}",
                             ignore_labels=ignore)


def mapillary_classes(config: Path) -> list[str]:
    """The lower-cased ``readable`` name of every entry of ``config``'s ``labels`` list (label k = entry k)."""
    data = read_json(config, "Mapillary Vistas config")
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, list) or not labels:
        raise DataError(f"{config}: expected an object with a non-empty 'labels' list")
    names = []
    for k, entry in enumerate(labels):
        readable = entry.get("readable") if isinstance(entry, dict) else None
        if not isinstance(readable, str) or not readable.strip():
            raise DataError(f"{config}: labels[{k}]: expected an object with a non-empty 'readable' name, "
                            f"got {str(entry)[:80]}")
        names.append(readable.strip().lower())
    return names


def load_mapillary(root: str | Path, split: str) -> list[Sample]:
    base = Path(root) / "mapillary"
    classes = mapillary_classes(base / "config_v2.0.json")
    ignore = [k for k, c in enumerate(classes) if c == MAPILLARY_IGNORE_CLASS]
    return label_map_samples(base / split / "v2.0" / "labels", base / split / "images", classes,
                             f"Mapillary Vistas {split}", ignore_labels=ignore)


def _clean(name: str) -> str:
    return " ".join(re.sub(r"\([^()]*\)", " ", name.replace("_", " ")).split())


def part_class_name(name: str) -> str:
    """The class text of a category name: ``"dog:head"`` -> ``"head of the dog"``,
    ``"car_(automobile):wheel"`` -> ``"wheel of the car"``, ``"trash_can"`` -> ``"trash can"``."""
    pieces = [_clean(p) for p in name.split(":")]
    if len(pieces) > 2 or not all(pieces):
        raise DataError(f"category name {name!r}: expected 'object' or 'object:part' with non-empty names")
    return pieces[0] if len(pieces) == 1 else f"{pieces[1]} of the {pieces[0]}"


def _positive_int(v) -> bool:
    return type(v) is int and v > 0


def load_coco_parts(path: Path, image_dir: Path, what: str,
                    class_name: Callable[[str], str] = part_class_name) -> list[Sample]:
    """One Sample per (image, category present) of a COCO-format file; ids ``<file stem>_<category id>``.

    Every image, category and annotation is checked when the file loads (a DataError names the file and
    the entry): ids are whole numbers, unique; an annotation's image and category are in the file, its
    segmentation passes :func:`self1e.data.refer.check_segmentation`; an annotated image exists under
    ``image_dir``; no two annotated images share a file stem. Images without annotations are counted
    and logged.
    """
    data = read_json(path, f"{what} annotation file")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO-format file: expected an object with 'images', 'annotations' "
                        "and 'categories' lists")
    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or type(im.get("id")) is not int:
            raise DataError(f"{path}: images[{i}]: expected an object with a whole-number 'id'")
        iid, file_name = im["id"], im.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise DataError(f"{path}: image {iid}: expected a non-empty 'file_name', got {file_name!r:.80}")
        if not (_positive_int(im.get("height")) and _positive_int(im.get("width"))):
            raise DataError(f"{path}: image {iid}: height {im.get('height')!r} and width {im.get('width')!r}; "
                            "expected positive whole numbers")
        if iid in images:
            raise DataError(f"{path}: image id {iid} occurs twice")
        images[iid] = im
    names: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or type(cat.get("id")) is not int or not isinstance(cat.get("name"), str):
            raise DataError(f"{path}: categories[{i}]: expected an object with a whole-number 'id' and a 'name'")
        if cat["id"] in names:
            raise DataError(f"{path}: category id {cat['id']} occurs twice")
        try:
            names[cat["id"]] = class_name(cat["name"])
        except DataError as e:
            raise DataError(f"{path}: category {cat['id']}: {e}") from None
    groups: dict[int, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotations[{i}]: expected an object, got {type(ann).__name__}")
        aid, iid, cid = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        where = f"{path}: annotation {aid if aid is not None else f'[{i}]'}"
        if type(iid) is not int or iid not in images:
            raise DataError(f"{where}: image_id {iid!r} is not among the file's images")
        if type(cid) is not int or cid not in names:
            raise DataError(f"{where}: category_id {cid!r} is not among the file's categories")
        try:
            check_segmentation(ann.get("segmentation"), images[iid]["height"], images[iid]["width"])
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        groups[iid][cid].append(ann)
    samples: list[Sample] = []
    stems: dict[str, int] = {}
    for iid, im in images.items():
        if iid not in groups:
            continue
        image = image_dir / im["file_name"]
        if not image.is_file():
            raise DataError(f"{path}: image {iid}: image file not found: {image}")
        stem = Path(im["file_name"]).stem
        if stem in stems:
            raise DataError(f"{path}: images {stems[stem]} and {iid} share the file stem {stem!r}, so their "
                            "sample ids would collide")
        stems[stem] = iid
        for cid in sorted(groups[iid]):
            samples.append(Sample(exif=False, id=f"{stem}_{cid}", image=image, text=TEMPLATE.format(names[cid]),
                                  mask=_merged_mask(groups[iid][cid], im["height"], im["width"]),
                                  where=f"{path}: image {iid} ({im['file_name']}) category {cid}"))
    if not samples:
        raise DataError(f"{path}: no annotations")
    texts: dict[str, list[int]] = defaultdict(list)
    for cid, text in names.items():
        texts[text].append(cid)
    shared = {t: c for t, c in texts.items() if len(c) > 1}
    if shared:
        log.warning("%s: %d class names are shared by several categories (%s)", what, len(shared),
                    "; ".join(f"{t!r}: {c}" for t, c in sorted(shared.items())[:10]))
    log.info("%s: %d images, %d samples; %d images without annotations skipped", what, len(images),
             len(samples), len(images) - len(groups))
    return samples


def load_pascal_part(root: str | Path, split: str) -> list[Sample]:
    base = Path(root) / "vlpart" / "pascal_part"
    return load_coco_parts(base / f"{split}.json", base / "VOCdevkit" / "VOC2010" / "JPEGImages",
                           f"Pascal-Part {split}")


def load_paco_lvis(root: str | Path, split: str) -> list[Sample]:
    root = Path(root)
    return load_coco_parts(root / "vlpart" / "paco" / "annotations" / f"paco_lvis_v1_{split}.json", root / "coco",
                           f"PACO-LVIS {split}")


READERS: dict[str, Callable[[str | Path, str], list[Sample]]] = {
    "ade20k": load_semseg, "semseg": load_semseg, "cocostuff": load_cocostuff, "pascal_part": load_pascal_part,
    "paco_lvis": load_paco_lvis, "mapillary": load_mapillary,
}
"""Spec name -> reader(root, split); ``semseg`` is the older name of ``ade20k``."""


def load_semseg_set(name: str, root: str | Path, split: str) -> list[Sample]:
    if name not in READERS:
        raise DataError(f"unknown segmentation set {name!r}; known: {', '.join(READERS)}")
    return READERS[name](root, split)
