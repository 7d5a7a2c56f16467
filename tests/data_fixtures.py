"""Tiny datasets written in the official on-disk formats, with masks known pixel for pixel.

Every region is an axis-aligned rectangle so the expected masks are numpy slices:
- COCO polygons ``[x0,y0, x1,y0, x1,y1, x0,y1]`` rasterise (pycocotools) to rows y0:y1, cols x0:x1;
- labelme polygons drawn by Pillow include their boundary: rows y0:y1+1, cols x0:x1+1.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

W, H = 40, 30
COCO_NAME = "COCO_train2014_000000000007.jpg"
POLY = (2, 12, 3, 20)      # rows y0:y1, cols x0:x1 (ann 101, polygon)
RLE_STR = (15, 25, 22, 35)  # ann 102, compressed RLE string
RLE_LIST = (5, 9, 30, 38)   # ann 103, uncompressed RLE counts


def rect(r: tuple[int, int, int, int] | None, w: int = W, h: int = H) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    if r is not None:
        m[r[0]:r[1], r[2]:r[3]] = True
    return m


def _image(path: Path, w: int = W, h: int = H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.arange(w * h * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    Image.fromarray(arr).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


def _uncompressed_counts(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    return ([0] + counts) if flat[0] == 1 else counts


def _instances(folder: Path, file_name: str) -> None:
    y0, y1, x0, x1 = POLY
    rle = mask_utils.encode(np.asfortranarray(rect(RLE_STR).astype(np.uint8)))
    data = {
        "images": [{"id": 7, "file_name": file_name, "height": H, "width": W}],
        "annotations": [
            {"id": 101, "image_id": 7, "category_id": 1, "iscrowd": 0,
             "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]},
            {"id": 102, "image_id": 7, "category_id": 2, "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": rle["counts"].decode("ascii")}},
            {"id": 103, "image_id": 7, "category_id": 3, "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": _uncompressed_counts(rect(RLE_LIST))}},
        ],
        "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(data))


def _ref(ref_id: int, ann_id, split: str, sents: list[str], **extra) -> dict:
    sent_ids = [ref_id * 10 + i for i in range(len(sents))]
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": 7, "category_id": 1, "split": split,
            "file_name": COCO_NAME.replace(".jpg", f"_{ref_id}.jpg"), "sent_ids": sent_ids,
            "sentences": [{"sent_id": i, "sent": s, "raw": s.capitalize(), "tokens": s.split()}
                          for i, s in zip(sent_ids, sents)], **extra}


REFS = [_ref(1, 101, "val", ["left thing", "the small one"]), _ref(2, 102, "val", ["middle"]),
        _ref(3, 103, "val", ["right box"]), _ref(4, 101, "train", ["train only"])]
EXPECTED = {"1_10": POLY, "1_11": POLY, "2_20": RLE_STR, "3_30": RLE_LIST}


def write_refcoco(root: Path, dataset: str = "refcoco", split_by: str = "unc") -> Path:
    """ROOT/<dataset>/refs(<split_by>).p (protocol 2, as the official files) + instances + image."""
    if dataset == "refclef":
        _image(root / "images" / "saiapr_tc-12" / "00" / "images" / "7.jpg")
        _instances(root / dataset, "00/images/7.jpg")
    else:
        _image(root / "images/mscoco/images/train2014" / COCO_NAME)
        _instances(root / dataset, COCO_NAME)
    (root / dataset / f"refs({split_by}).p").write_bytes(pickle.dumps(REFS, protocol=2))
    return root


GREFS = [_ref(11, [-1], "val", ["nothing here"], no_target=True),
         _ref(12, [101, 102], "val", ["both things"], no_target=False),
         _ref(13, [103], "val", ["right box"], no_target=False)]
GEXPECTED = {"11_110": None, "12_120": rect(POLY) | rect(RLE_STR), "13_130": rect(RLE_LIST)}


def write_grefcoco(root: Path) -> Path:
    _image(root / "images/mscoco/images/train2014" / COCO_NAME)
    _instances(root / "grefcoco", COCO_NAME)
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(GREFS))
    return root


RS_W, RS_H = 50, 40
RS_TARGET = (5, 20, 5, 15)   # x0, x1, y0, y1 polygon corners (boundary included)
RS_IGNORE = (8, 12, 8, 10)


def write_reasonseg(root: Path, texts: list[str] | None = None) -> Path:
    folder = root / "reason_seg" / "ReasonSeg" / "val"
    _image(folder / "img1.jpg", RS_W, RS_H)

    def poly(x0, x1, y0, y1):
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    anno = {"text": texts if texts is not None else ["what holds the coffee?", "second text"],
            "is_sentence": True,
            "shapes": [{"label": "target", "points": poly(*RS_TARGET), "shape_type": "polygon"},
                       {"label": "ignore", "points": poly(*RS_IGNORE), "shape_type": "polygon"},
                       {"label": "flag", "points": poly(0, 49, 0, 39), "shape_type": "polygon"}]}
    (folder / "img1.json").write_text(json.dumps(anno))
    return root


def reasonseg_expected() -> tuple[np.ndarray, np.ndarray]:
    """(target, ignore) masks: the smaller ignore polygon is painted over the target."""
    x0, x1, y0, y1 = RS_TARGET
    target = rect((y0, y1 + 1, x0, x1 + 1), RS_W, RS_H)
    x0, x1, y0, y1 = RS_IGNORE
    ignore = rect((y0, y1 + 1, x0, x1 + 1), RS_W, RS_H)
    return target & ~ignore, ignore


ADE_LABELS = np.zeros((H, W), dtype=np.uint8)
ADE_LABELS[0:10, :] = 3    # sky
ADE_LABELS[20:30, 5:25] = 7  # road


def write_ade20k(root: Path) -> Path:
    base = root / "ade20k"
    _image(base / "images" / "validation" / "ADE_val_00000001.jpg")
    (base / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
    Image.fromarray(ADE_LABELS).save(base / "annotations" / "validation" / "ADE_val_00000001.png")
    return root
