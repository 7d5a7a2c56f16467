"""Real outputs of a model in chat, for the README: a VQA question, a segmentation request and a
multi-object request on fresh RefShapes test scenes, each answer with its masks drawn.

    python benchmarks/chat_examples.py --model default --out docs/chat
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from self1e.common.overlay import draw_masks
    from self1e.data.datasets import load_dataset
    from self1e.inference import Self1ePredictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--out", default="docs/chat")
    args = p.parse_args(argv)
    predictor = Self1ePredictor.from_pretrained(args.model, device="cpu")
    q = predictor.processor.seg_question
    vqa = load_dataset(f"refshapes-vqa:test:1:{args.seed}")[0]
    seg = load_dataset(f"refshapes:test:1:{args.seed}")[0]
    multi = load_dataset(f"refshapes-multi:test:1:{args.seed}")[0]
    cases = [("vqa", vqa, vqa.question), ("segmentation", seg, q(seg.text)), ("multi-object", multi, q(multi.text))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, sample, message in cases:
        image = sample.load_image()
        predictor.set_image(image)
        response = predictor.chat(message)
        picture = out / f"{name}.png"
        draw_masks(image, response.masks).save(picture)
        rows.append({"case": name, "message": message, "answer": response.text,
                     "expected": sample.answer if sample.is_vqa else None,
                     "segments": [{"phrase": s.text, "pixels": int(s.mask.sum()), "score": round(s.score, 3)}
                                  for s in response.segments], "picture": str(picture)})
        print(f"| {name} | {message} | {response.text} | ![]({picture}) |")
    (out / "examples.json").write_text(json.dumps({"model": args.model, "seed": args.seed, "cases": rows},
                                                  indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
