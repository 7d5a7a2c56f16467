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


def train_and_measure(start: str, data: list[str], batch: int, steps: int, lr: float, run: Path, tests: dict,
                      seed: int = 0) -> dict:
    """Train ``start`` on the ``data`` mix (every parameter, no LoRA) and measure the final model:
    VQA (exact match, answered without [SEG]), segmentation (cIoU, gIoU, N-acc, T-acc) and multi-object
    requests on the held-out ``tests`` ({"vqa", "seg", "multi"} -> samples)."""
    from self1e.eval.chat import evaluate_chat
    from self1e.eval.evaluate import PredictorSource, evaluate
    from self1e.inference import Self1ePredictor
    from self1e.train.config import load_config
    from self1e.train.loop import train

    cfg = load_config(None, [f"model={start}", "data=[" + ", ".join(data) + "]", f"batch_size={batch}",
                             f"max_steps={steps}", f"lr={lr}", "warmup_steps=100", "val=null",
                             "save_every=0", "eval_every=0", "lora.enabled=false", "cpu_threads=2",
                             "expressions_per_image=3", f"out={run}", f"seed={seed}"])
    began = time.time()
    final = train(cfg)
    minutes = (time.time() - began) / 60
    predictor = Self1ePredictor.from_pretrained(final, device="cpu")
    chat = evaluate_chat(predictor, vqa=tests["vqa"], progress=False)
    seg = evaluate(PredictorSource(predictor), tests["seg"], batch_size=16, progress=False).metrics
    multi = evaluate_chat(predictor, multi=tests["multi"], progress=False)["multi_object"]
    return {"start": start, "steps": steps, "minutes": round(minutes, 1), "vqa": chat["vqa"],
            "segmentation": {k: seg.get(k) for k in ("n", "cIoU", "gIoU", "N_acc", "T_acc")}, "multi_object": multi}


def mixed_data(n: int, size: int) -> list[str]:
    """The VQA + segmentation mix: half VQA, 35 % referring, 15 % multi-object requests (by ratio)."""
    return [f"{{spec: 'refshapes-vqa:train:{n}:1:{size}', ratio: 0.5}}",
            f"{{spec: 'refshapes:train:{n}:2:{size}', ratio: 0.35}}",
            f"{{spec: 'refshapes-multi:train:{n // 3}:3:{size}', ratio: 0.15}}"]


def held_out(n: int, size: int) -> dict:
    """The held-out samples every run is measured on (seed 7)."""
    from self1e.data.datasets import load_dataset

    return {"vqa": load_dataset(f"refshapes-vqa:test:{n}:7:{size}"),
            "seg": load_dataset(f"refshapes:test:{n}:7:{size}"),
            "multi": load_dataset(f"refshapes-multi:test:{n // 3}:7:{size}")}


def main(argv: list[str] | None = None) -> int:
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
        "vqa_and_segmentation": (mixed_data(n, s), 2 * args.batch),
    }
    tests = held_out(args.test, s)
    rows = []
    for name, (data, batch) in mixes.items():
        row = train_and_measure(args.start, data, batch, args.steps, args.lr, Path(args.out) / name, tests)
        rows.append({"run": name, **row})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
