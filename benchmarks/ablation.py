"""The paper's ablation ladder on RefShapes: every rung trained with the same recipe and budget.

    python benchmarks/ablation.py --config configs/refshapes_default.yaml --steps 500 --seeds 0 1 2 \\
        --set warmup_steps=50 --set 'data=[refshapes:train:20000:0]'

Rungs: compressed, hq, rfr, rfa (causal attention) and rfa with the bidirectional segmentation
mask. Each (rung, seed) is trained from scratch by ``self1e.train`` with only ``self1e.mask_head``,
``self1e.seg_attention`` and ``seed`` changed, then evaluated by ``self1e.eval`` on freshly generated
RefShapes test samples. Writes per-run JSON, and a markdown table of mean and spread.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RUNGS = (("compressed", "causal"), ("hq", "causal"), ("rfr", "causal"), ("rfa", "causal"), ("rfa", "bidirectional"))
METRICS = ("cIoU", "gIoU", "N_acc", "T_acc")


def run_one(config: str, rung: str, attention: str, seed: int, steps: int, out: Path, test: str,
            overrides: list[str]) -> dict:
    from self1e.data.datasets import load_dataset
    from self1e.eval.evaluate import PredictorSource, evaluate
    from self1e.inference.predictor import Self1ePredictor
    from self1e.train.config import load_config
    from self1e.train.loop import train

    run_dir = out / f"{rung}-{attention}-seed{seed}"
    cfg = load_config(config, [f"self1e.mask_head={rung}", f"self1e.seg_attention={attention}", f"seed={seed}",
                               f"max_steps={steps}", "val=null", "save_every=0", "max_minutes=null", f"out={run_dir}",
                               *overrides])
    start = time.time()
    final = train(cfg)
    minutes = (time.time() - start) / 60
    result = evaluate(PredictorSource(Self1ePredictor.from_pretrained(final, device="cpu")), load_dataset(test),
                      batch_size=16, progress=False, desc=run_dir.name)
    record = {"rung": rung, "attention": attention, "seed": seed, "steps": steps, "train_minutes": round(minutes, 2),
              **{k: result.metrics.get(k) for k in METRICS}}
    (run_dir / "ablation.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def table(records: list[dict]) -> str:
    lines = ["| rung | attention | runs | " + " | ".join(METRICS) + " |", "|---|---|---:|" + "---:|" * len(METRICS)]
    for rung, attention in RUNGS:
        rs = [r for r in records if r["rung"] == rung and r["attention"] == attention]
        if not rs:
            continue
        cells = []
        for m in METRICS:
            vals = [100 * r[m] for r in rs if r[m] is not None]
            spread = f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.mean(vals):.1f}{spread}" if vals else "-")
        lines.append(f"| {rung} | {attention} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/refshapes_default.yaml")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps per run (the same budget for all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--test", default="refshapes:test:400:2026", help="evaluation dataset spec")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--results", default="benchmarks/results/ablation.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override key=value")
    p.add_argument("--rungs", default=None, help="comma-separated subset, e.g. rfa-causal,rfa-bidirectional")
    args = p.parse_args(argv)
    rungs = RUNGS if not args.rungs else tuple(tuple(r.split("-")) for r in args.rungs.split(","))
    out, records = Path(args.out), []
    for seed in args.seeds:
        for rung, attention in rungs:
            records.append(run_one(args.config, rung, attention, seed, args.steps, out, args.test, args.overrides))
            print(json.dumps(records[-1]), flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"config": args.config, "steps": args.steps, "seeds": args.seeds,
                                              "test": args.test, "runs": records}, indent=2) + "\n")
    md = table(records)
    Path(args.results).with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
