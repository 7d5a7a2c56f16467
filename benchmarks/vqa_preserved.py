"""Does segmentation training cost VQA? Train the same start twice with the same VQA exposure: once on
RefShapes VQA only, once on VQA plus segmentation (referring and multi-object requests); compare VQA
exact-match accuracy, and give the segmentation numbers of the second run.

Both runs see the same number of VQA units per step: the VQA-only run takes ``--batch`` units of VQA,
the mixed run ``2 x --batch`` units of which half (by ratio) are VQA. Same start, steps, LR, seed.

    python benchmarks/vqa_preserved.py --start tiny:small112 --steps 2000
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from self1e.data.datasets import load_dataset
    from self1e.eval.chat import evaluate_chat
    from self1e.eval.evaluate import PredictorSource, evaluate
    from self1e.inference import Self1ePredictor
    from self1e.train.config import load_config
    from self1e.train.loop import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", default="tiny:small112", help="the common starting model (default: %(default)s)")
    p.add_argument("--size", type=int, default=112, help="RefShapes canvas size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--train-n", type=int, default=60000, help="samples per training dataset (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="VQA units per step in both runs")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--test", type=int, default=300, help="held-out samples per measure")
    p.add_argument("--out", default="runs/vqa_preserved")
    p.add_argument("--results", default="benchmarks/results/vqa_preserved.json")
    args = p.parse_args(argv)
    s, n = args.size, args.train_n
    mixes = {
        "vqa_only": ([f"{{spec: 'refshapes-vqa:train:{n}:1:{s}', ratio: 1.0}}"], args.batch),
        "vqa_and_segmentation": ([f"{{spec: 'refshapes-vqa:train:{n}:1:{s}', ratio: 0.5}}",
                                  f"{{spec: 'refshapes:train:{n}:2:{s}', ratio: 0.35}}",
                                  f"{{spec: 'refshapes-multi:train:{n // 3}:3:{s}', ratio: 0.15}}"],
                                 2 * args.batch),
    }
    vqa_test = load_dataset(f"refshapes-vqa:test:{args.test}:7:{s}")
    seg_test = load_dataset(f"refshapes:test:{args.test}:7:{s}")
    multi_test = load_dataset(f"refshapes-multi:test:{args.test // 3}:7:{s}")
    rows = []
    for name, (data, batch) in mixes.items():
        run = Path(args.out) / name
        cfg = load_config(None, [f"model={args.start}", "data=[" + ", ".join(data) + "]", f"batch_size={batch}",
                                 f"max_steps={args.steps}", f"lr={args.lr}", "warmup_steps=100", "val=null",
                                 "save_every=0", "eval_every=0", "lora.enabled=false", "cpu_threads=2",
                                 "expressions_per_image=3", f"out={run}", "seed=0"])
        start = time.time()
        final = train(cfg)
        minutes = (time.time() - start) / 60
        predictor = Self1ePredictor.from_pretrained(final, device="cpu")
        chat = evaluate_chat(predictor, vqa=vqa_test, progress=False)
        seg = evaluate(PredictorSource(predictor), seg_test, batch_size=16, progress=False).metrics
        multi = evaluate_chat(predictor, multi=multi_test, progress=False)["multi_object"]
        rows.append({"run": name, "steps": args.steps, "minutes": round(minutes, 1), "vqa": chat["vqa"],
                     "segmentation": {k: seg.get(k) for k in ("n", "cIoU", "gIoU", "N_acc", "T_acc")},
                     "multi_object": multi})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
