"""Shared by the training tests: a tiny JSONL split whose masks depend on the text, the tiny training
config, and the losses a run logged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from self1e.train.config import TrainConfig, load_config

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 160, 60), "yellow": (240, 210, 40)}


def make_boxes(root: Path, n_images: int = 2, size: int = 56, seed: int = 0) -> Path:
    """A JSONL split of images with two coloured boxes each (left and right half) and one
    referring expression per box ("the red box"): the mask depends on the text."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines, half = [], size // 2
    for i in range(n_images):
        image = np.full((size, size, 3), 235, np.uint8)
        names = list(COLOURS)
        rng.shuffle(names)
        for j, colour in enumerate(names[:2]):
            x0, y0 = j * half + int(rng.integers(2, 6)), int(rng.integers(2, half // 2))
            w, h = int(rng.integers(half // 2, half - 6)), int(rng.integers(half // 2, size - y0 - 4))
            mask = np.zeros((size, size), bool)
            mask[y0:y0 + h, x0:x0 + w] = True
            image[mask] = COLOURS[colour]
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "img" / f"{i}_{j}.png")
            lines.append({"image": f"img/{i}.png", "text": f"the {colour} box", "mask": f"img/{i}_{j}.png"})
        Image.fromarray(image).save(root / "img" / f"{i}.png")
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def tiny_cfg(data: Path, out: Path, *overrides: str) -> TrainConfig:
    base = ["model=tiny:tiny", f"data=[{data}]", "lora.enabled=false", "lr=3e-3", "warmup_steps=2",
            "log_every=1", "save_every=0", "batch_size=1"]
    return load_config(None, base + list(overrides), out=str(out))


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
