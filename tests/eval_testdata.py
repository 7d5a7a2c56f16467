"""Helpers for the eval tests: tiny JSONL datasets of rectangles, and prediction folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

Rect = tuple[int, int, int, int]  # rows y0:y1, columns x0:x1


def rect_mask(size: tuple[int, int], r: Rect | None) -> np.ndarray:
    """Bool (H, W) mask for ``size`` = (width, height) with rectangle ``r`` set (None: empty)."""
    m = np.zeros((size[1], size[0]), dtype=bool)
    if r is not None:
        m[r[0] : r[1], r[2] : r[3]] = True
    return m


def save_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path)


def write_dataset(root: Path, rows: list[dict], size: tuple[int, int] = (20, 10), name: str = "val") -> Path:
    """Write ``root/<name>.jsonl`` plus images and masks. Each row: ``id``, ``text``, ``gt`` (Rect or
    None), optional ``ignore`` (Rect), ``kind``, ``size`` (default ``size``). Returns the JSONL path."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        sid = row["id"]
        size = row.get("size", size)
        img = Image.new("RGB", size, (10 * i % 256, 120, 200))
        img.save(root / f"{sid}.png")
        rec = {"id": sid, "image": f"{sid}.png", "text": row["text"], "mask": None}
        if row.get("gt") is not None:
            save_mask(root / f"{sid}_gt.png", rect_mask(size, row["gt"]))
            rec["mask"] = f"{sid}_gt.png"
        if row.get("ignore") is not None:
            save_mask(root / f"{sid}_ign.png", rect_mask(size, row["ignore"]))
            rec["ignore"] = f"{sid}_ign.png"
        if row.get("kind"):
            rec["kind"] = row["kind"]
        lines.append(json.dumps(rec))
    path = root / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_predictions(folder: Path, preds: dict[str, Rect | None], size=(20, 10)) -> None:
    """``folder/<id>.png`` for each id whose prediction is a Rect (None: an empty mask file).
    ``size`` is one (width, height) or a dict id -> (width, height)."""
    for sid, r in preds.items():
        save_mask(folder / f"{sid}.png", rect_mask(size[sid] if isinstance(size, dict) else size, r))


def samples_of(root: Path, rows: list[dict]) -> list:
    """The Samples of a dataset written by :func:`write_dataset` (without going through a loader)."""
    from self1e.data.sample import Sample

    return [
        Sample(
            id=row["id"],
            image=root / f"{row['id']}.png",
            text=row["text"],
            mask=root / f"{row['id']}_gt.png" if row.get("gt") is not None else None,
            ignore=root / f"{row['id']}_ign.png" if row.get("ignore") is not None else None,
            kind=row.get("kind"),
            where=f"{root}:{i + 1}",
        )
        for i, row in enumerate(rows)
    ]
