"""Tiny trees of the semantic and part segmentation sets, in the real on-disk formats (LISA's layout).

One writer per source; each returns what it wrote (label maps, annotations, file names) so that tests
can compare every reader pixel for pixel. Regions are rectangles: a COCO polygon
``[x0,y0, x1,y0, x1,y1, x0,y1]`` rasterises (pycocotools) to rows y0:y1, cols x0:x1 (``rect``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from data_fixtures import H, W, _image, _uncompressed_counts, rect


def _png(path: Path, labels: np.ndarray, palette: bool = False) -> None:
    """A uint8 label map: grey ("L", as COCO-Stuff) or palette-indexed ("P", as Mapillary Vistas)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        im = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.astype(np.uint8).tobytes())
        im.putpalette([(37 * i) % 256 for i in range(768)])
    else:
        im = Image.fromarray(labels.astype(np.uint8))
    im.save(path)


def _poly(r: tuple[int, int, int, int]) -> list[list[int]]:
    y0, y1, x0, x1 = r
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle_string(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [m.shape[0], m.shape[1]], "counts": rle["counts"].decode("ascii")}


def _rle_list(m: np.ndarray) -> dict:
    return {"size": [m.shape[0], m.shape[1]], "counts": _uncompressed_counts(m)}


# COCO-Stuff: 0 person, 90 hair brush, 95 building-other ("-": ignored), 148 road, 170 wall-brick
# ("-": ignored), 181 wood, 255 unlabelled.
def cocostuff_labels() -> dict[str, np.ndarray]:
    a = np.full((H, W), 255, dtype=np.uint8)
    a[0:10, :] = 0
    a[10:20, 0:20] = 95
    a[10:20, 20:40] = 181
    a[20:30, 5:25] = 148
    b = np.full((H, W), 170, dtype=np.uint8)
    b[3:9, 4:30] = 90
    return {"000000000009": a, "000000000025": b, "000000000030": np.full((H, W), 255, dtype=np.uint8)}


def write_cocostuff(root: Path, split: str = "train2017") -> dict[str, np.ndarray]:
    """ROOT/cocostuff/<split>/<stem>.png + ROOT/coco/<split>/<stem>.jpg; returns stem -> label map.
    The third map is all 255 (no class: it yields no sample)."""
    labels = cocostuff_labels()
    for stem, lab in labels.items():
        _png(root / "cocostuff" / split / f"{stem}.png", lab)
        _image(root / "coco" / split / f"{stem}.jpg")
    return labels


PASCAL_HEAD_POLY = (2, 12, 3, 20)     # rows y0:y1, cols x0:x1
PASCAL_HEAD_RLE = (8, 16, 15, 30)     # a second "dog:head" annotation (overlapping): the union counts
PASCAL_HAIR_RLE = (20, 28, 1, 9)
PASCAL_POT_POLY = (5, 25, 10, 22)


def write_pascal_part(root: Path) -> dict:
    """VLPart's ROOT/vlpart/pascal_part/train.json (object:part categories; polygon, compressed and
    uncompressed RLE) and its VOC2010 JPEGs; returns the JSON and the expected masks by sample id."""
    base = root / "vlpart" / "pascal_part"
    data = {
        "images": [{"id": 1, "file_name": "2008_000002.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "2008_000003.jpg", "height": H, "width": W},
                   {"id": 3, "file_name": "2008_000004.jpg", "height": H, "width": W}],  # no annotation
        "categories": [{"id": 1, "name": "dog:head"}, {"id": 5, "name": "pottedplant:pot"},
                       {"id": 7, "name": "person:hair"}, {"id": 9, "name": "aeroplane:left_wing"}],
        "annotations": [
            {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": _poly(PASCAL_HEAD_POLY)},
            {"id": 102, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": _rle_string(rect(PASCAL_HEAD_RLE))},
            {"id": 103, "image_id": 1, "category_id": 7, "iscrowd": 0,
             "segmentation": _rle_list(rect(PASCAL_HAIR_RLE))},
            {"id": 104, "image_id": 2, "category_id": 5, "iscrowd": 0, "segmentation": _poly(PASCAL_POT_POLY)},
        ],
    }
    base.mkdir(parents=True, exist_ok=True)
    (base / "train.json").write_text(json.dumps(data))
    for im in data["images"]:
        _image(base / "VOCdevkit" / "VOC2010" / "JPEGImages" / im["file_name"])
    expected = {"2008_000002_1": rect(PASCAL_HEAD_POLY) | rect(PASCAL_HEAD_RLE),
                "2008_000002_7": rect(PASCAL_HAIR_RLE), "2008_000003_5": rect(PASCAL_POT_POLY)}
    return {"json": data, "masks": expected}


PACO_CAN = (1, 20, 2, 14)
PACO_LID = (1, 5, 2, 14)
PACO_WHEEL = (18, 27, 20, 30)
PACO_BOW = (4, 12, 25, 38)


def write_paco_lvis(root: Path) -> dict:
    """ROOT/vlpart/paco/annotations/paco_lvis_v1_train.json (LVIS-style names, object and object:part
    categories) and its COCO images under ROOT/coco/<file_name>; returns the JSON and the masks by id."""
    data = {
        "images": [{"id": 9, "file_name": "train2017/000000000009.jpg", "height": H, "width": W},
                   {"id": 139, "file_name": "val2017/000000000139.jpg", "height": H, "width": W}],
        "categories": [{"id": 3, "name": "trash_can"}, {"id": 11, "name": "bow_(weapon)"},
                       {"id": 20, "name": "car_(automobile):wheel"}, {"id": 21, "name": "trash_can:lid"},
                       {"id": 22, "name": "mug:handle"}],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 3, "segmentation": _poly(PACO_CAN)},
            {"id": 2, "image_id": 9, "category_id": 21, "segmentation": _rle_string(rect(PACO_LID))},
            {"id": 3, "image_id": 139, "category_id": 20, "segmentation": _poly(PACO_WHEEL)},
            {"id": 4, "image_id": 139, "category_id": 11, "segmentation": _rle_list(rect(PACO_BOW))},
        ],
    }
    folder = root / "vlpart" / "paco" / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "paco_lvis_v1_train.json").write_text(json.dumps(data))
    for im in data["images"]:
        _image(root / "coco" / im["file_name"])
    expected = {"000000000009_3": rect(PACO_CAN), "000000000009_21": rect(PACO_LID),
                "000000000139_11": rect(PACO_BOW), "000000000139_20": rect(PACO_WHEEL)}
    return {"json": data, "masks": expected}


MAPILLARY_LABELS = [
    {"color": [165, 42, 42], "instances": True, "readable": "Bird", "name": "animal--bird", "evaluate": True},
    {"color": [128, 64, 128], "instances": False, "readable": "Road", "name": "construction--flat--road",
     "evaluate": True},
    {"color": [140, 140, 200], "instances": True, "readable": "Crosswalk - Plain",
     "name": "construction--flat--crosswalk-plain", "evaluate": True},
    {"color": [70, 130, 180], "instances": False, "readable": "Sky", "name": "nature--sky", "evaluate": True},
    {"color": [0, 0, 0], "instances": False, "readable": "Unlabeled", "name": "void--unlabeled", "evaluate": False},
]


def mapillary_labels() -> dict[str, np.ndarray]:
    a = np.full((H, W), 4, dtype=np.uint8)  # unlabeled
    a[0:12, :] = 3
    a[12:30, 0:30] = 1
    a[20:26, 8:20] = 2
    b = np.ones((H, W), dtype=np.uint8)     # road only, no unlabeled pixel
    b[0:3, 0:3] = 0
    return {"--abc123XYZ": a, "_Zq9-Pw0": b}


def write_mapillary(root: Path, split: str = "training") -> dict:
    """ROOT/mapillary/config_v2.0.json + <split>/v2.0/labels/<stem>.png (palette PNGs, index = label)
    + <split>/images/<stem>.jpg; returns the config and stem -> label map."""
    base = root / "mapillary"
    base.mkdir(parents=True, exist_ok=True)
    config = {"labels": MAPILLARY_LABELS, "version": "2.0", "mapping": "public", "folder_structure": ""}
    (base / "config_v2.0.json").write_text(json.dumps(config))
    labels = mapillary_labels()
    for stem, lab in labels.items():
        _png(base / split / "v2.0" / "labels" / f"{stem}.png", lab, palette=True)
        _image(base / split / "images" / f"{stem}.jpg")
    return {"config": config, "labels": labels}
