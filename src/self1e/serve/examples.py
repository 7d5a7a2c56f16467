"""The web page's example gallery: RefShapes test scenes with expressions and questions, bundled
with the package (``src/self1e/assets/examples``). Regenerate them with

    python -m self1e.serve.examples
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from self1e.data.datasets import load_dataset

OUT = Path(__file__).resolve().parent.parent / "assets" / "examples"
SEED = 4242


def write_examples(out: Path = OUT, n: int = 6, seed: int = SEED) -> list[dict]:
    """``n`` scenes (every other one styled), each with up to three of its referring expressions,
    a multi-object request and up to two questions about it; writes ``out/examples.json`` and one
    PNG per scene."""
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n):
        spec = f"test:12:{seed + k}" + (":224:styled" if k % 2 else "")
        refer = load_dataset(f"refshapes:{spec}")
        image = refer[0].load_image()
        pixels = np.asarray(image)

        def same_scene(sample, pixels=pixels) -> bool:
            return np.array_equal(np.asarray(sample.load_image()), pixels)

        texts = list(dict.fromkeys(s.text for s in refer if s.image is refer[0].image))[:3]
        questions = [s.question for s in load_dataset(f"refshapes-vqa:{spec}") if same_scene(s)][:2]
        multi = [s.text for s in load_dataset(f"refshapes-multi:{spec}")[:1] if same_scene(s)]
        name = f"scene{k + 1}.png"
        image.save(out / name)
        items.append({"image": f"/examples/{name}", "expressions": texts + multi, "questions": questions})
    (out / "examples.json").write_text(json.dumps(items, indent=1) + "\n")
    return items


if __name__ == "__main__":
    for item in write_examples():
        print(item["image"], item["expressions"], item["questions"])
