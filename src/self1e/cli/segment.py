"""`self1e segment`: masks for one image and one or more expressions, as PNG / overlay / JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment an image with one or more referring expressions")
    p.add_argument("--model", default="default", help="self1e checkpoint folder, or 'default'")
    p.add_argument("--image", required=True, help="any image file Pillow reads")
    p.add_argument("--text", action="append", required=True, help="expression (repeat for several)")
    p.add_argument("--out", required=True, help="mask PNG (0/255); with several --text, a folder of 0.png, 1.png, ...")
    p.add_argument("--overlay", help="also write an overlay picture (a folder with several --text)")
    p.add_argument("--json", help="also write masks as COCO RLE with scores")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(run=run)


def run(args) -> int:
    from pycocotools import mask as mask_utils

    from ..predictor import Self1ePredictor
    from ..processing import to_rgb

    texts = [t.strip() for t in args.text]
    for i, t in enumerate(texts):
        if not t:
            raise ValueError(f"--text number {i + 1} is empty")
    image = to_rgb(args.image)  # fails early, naming the file, before the model loads
    predictor = Self1ePredictor.from_pretrained(args.model, device=args.device)
    predictor.set_image(image)
    results = predictor.predict_batch(texts)

    several = len(texts) > 1
    outs = [Path(args.out) / f"{i}.png" for i in range(len(texts))] if several else [Path(args.out)]
    overlays = None
    if args.overlay:
        overlays = [Path(args.overlay) / f"{i}.png" for i in range(len(texts))] if several else [Path(args.overlay)]
    from ..eval.overlay import overlay

    for i, r in enumerate(results):
        outs[i].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(r.mask.astype(np.uint8) * 255).save(outs[i])
        if overlays:
            overlays[i].parent.mkdir(parents=True, exist_ok=True)
            overlay(image, r.mask, r.text).save(overlays[i])
        print(f"{r.text!r}: {int(r.mask.sum())} px, score {r.score:.3f} -> {outs[i]}")
    if args.json:
        items = []
        for r in results:
            rle = mask_utils.encode(np.asfortranarray(r.mask.astype(np.uint8)))
            items.append({"text": r.text, "score": r.score, "area": int(r.mask.sum()),
                          "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}})
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"image": str(args.image), "width": image.width,
                                               "height": image.height, "results": items}, indent=2) + "\n")
    return 0
