"""A segmentation result as JSON, the one form every output uses (the HTTP API, ``self1e batch``):
COCO RLE, the box, the pixel count, the score."""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool (H, W) mask, as pycocotools writes it: ``{"size": [H, W], "counts": str}``."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def bbox(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of the mask's foreground (COCO's box convention), [0, 0, 0, 0] when empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def result_json(text: str, mask: np.ndarray, score: float) -> dict:
    """One result: the text, score, emptiness, box, pixel count and COCO RLE."""
    return {"text": text, "score": round(float(score), 4), "empty": not mask.any(), "pixels": int(mask.sum()),
            "bbox": bbox(mask), "rle": rle(mask)}
