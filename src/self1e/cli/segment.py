"""`self1e segment`: masks for one image and one or more expressions, as PNG / overlay / JSON."""
from __future__ import annotations

import json
from pathlib import Path

from self1e.cli.options import add_device, add_model, add_quantize, add_settings, quantize_from, settings_from


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment an image with one or more referring expressions")
    add_model(p)
    p.add_argument("--image", required=True, metavar="PATH", help="any image file Pillow reads")
    p.add_argument("--text", action="append", required=True, metavar="TEXT",
                   help="a referring expression (repeat for several)")
    p.add_argument("--out", metavar="PATH",
                   help="mask PNG (0/255, a .png name); with several --text, a folder of 0.png, 1.png, ...")
    p.add_argument("--overlay", metavar="PATH",
                   help="a picture of every mask on the image with a legend (as the web page draws it), any "
                        "format Pillow writes")
    p.add_argument("--json", metavar="PATH", help="the masks as COCO RLE with scores")
    add_device(p)
    add_quantize(p)
    add_settings(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import numpy as np
    from pycocotools import mask as mask_utils

    from self1e.common.files import check_outputs, write_text_atomic
    from self1e.common.images import check_mask_path, image_format, save_image, to_rgb, write_mask_png
    from self1e.common.overlay import draw_masks, legend, pick_colours
    from self1e.inference import Self1ePredictor
    from self1e.inference.predictor import check_texts, pick_device

    texts = [t.strip() for t in args.text]
    for i, t in enumerate(texts):
        if not t:
            raise ValueError(f"--text number {i + 1} is empty")
    check_texts(texts)

    def paths(arg: str) -> list[Path]:
        return [Path(arg) / f"{i}.png" for i in range(len(texts))] if len(texts) > 1 else [Path(arg)]

    # every check that needs no model first: a bad path or option fails before the model loads
    if not (args.out or args.overlay or args.json):
        raise ValueError("nothing to write: give --out (mask PNGs), --overlay (a picture) and/or --json (RLE)")
    outs = [check_mask_path(p) for p in paths(args.out)] if args.out else []
    overlays = [Path(args.overlay)] if args.overlay else []
    for p in overlays:
        image_format(p)
    check_outputs({"--out": outs, "--overlay": overlays, "--json": [args.json]}, {"--image": [args.image]})
    pick_device(args.device)
    image = to_rgb(args.image)  # fails early, naming the file
    predictor = Self1ePredictor.from_pretrained(args.model, device=args.device, config=settings_from(args),
                                                threads=args.threads, quantize=quantize_from(args))
    predictor.set_image(image)
    results = predictor.predict_batch(texts)

    for i, r in enumerate(results):
        if outs:
            write_mask_png(r.mask, outs[i])
        where = f" -> {outs[i]}" if outs else ""
        print(f"{r.text!r}: {int(r.mask.sum())} px, score {r.score:.3f}{' (no target)' if r.empty else ''}{where}")
    if overlays:
        colours = pick_colours(image, [r.mask for r in results])
        picture = draw_masks(image, [r.mask for r in results], colours)
        entries = [(c, f"{r.text}: {'no target' if r.empty else f'{int(r.mask.sum())} px'}, score {r.score:.2f}")
                   for c, r in zip(colours, results)]
        save_image(legend(picture, entries), overlays[0])
        print(f"overlay -> {overlays[0]}")
    if args.json:
        items = []
        for r in results:
            rle = mask_utils.encode(np.asfortranarray(r.mask.astype(np.uint8)))
            items.append({"text": r.text, "score": r.score, "area": int(r.mask.sum()),
                          "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}})
        write_text_atomic(args.json, json.dumps({"image": str(args.image), "width": image.width,
                                                 "height": image.height, "results": items}, indent=2) + "\n")
    return 0
