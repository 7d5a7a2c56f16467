"""Does the model decide by itself to answer with [SEG]? With and without the causal LM-loss pass.

Under the bidirectional segmentation mask, the position that predicts [SEG] can see [SEG] (and the
answer prefix) through the image tokens, so an LM loss taken from that pass leaks the answer.
``causal_lm_loss`` takes the LM loss from a second, causal pass instead. This trains the same recipe
twice (only that switch differs) and measures, on held-out segmentation prompts, how often greedy
free-form generation emits [SEG] (emission accuracy) and the final LM loss.

    python benchmarks/seg_emission.py --steps 600
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def emission_rate(model_dir: Path, spec: str, max_new_tokens: int = 8) -> float:
    from self1e.data.datasets import load_dataset
    from self1e.inference.predictor import Self1ePredictor

    predictor = Self1ePredictor.from_pretrained(model_dir, device="cpu")
    samples = [s for s in load_dataset(spec) if s.text]
    hits = 0
    for s in samples:
        predictor.set_image(s.load_image())
        answer, _ = predictor.chat(predictor.processor.seg_question(s.text), max_new_tokens=max_new_tokens)
        hits += "[SEG]" in answer
    return hits / len(samples)


def main(argv: list[str] | None = None) -> int:
    from self1e.train.config import load_config
    from self1e.train.loop import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/refshapes_default.yaml")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--test", default="refshapes:test:100:99:112")
    p.add_argument("--out", default="runs/seg_emission")
    p.add_argument("--results", default="benchmarks/results/seg_emission.json")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    rows = []
    for causal in (False, True):
        run = Path(args.out) / f"causal_lm_loss-{str(causal).lower()}"
        cfg = load_config(args.config, [f"self1e.causal_lm_loss={str(causal).lower()}", f"max_steps={args.steps}",
                                        "val=null", "save_every=0", "max_minutes=null", f"out={run}", *args.overrides])
        final = train(cfg)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        lm = [x["lm_loss"] for x in lines if "lm_loss" in x][-5:]
        rows.append({"causal_lm_loss": causal, "steps": args.steps, "final_lm_loss": sum(lm) / len(lm),
                     "seg_emission": emission_rate(final, args.test)})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                              "test": args.test, "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
