"""The paper's ablation ladder on RefShapes: every rung trained with the same recipe and budget.

    python benchmarks/ablation.py --config configs/refshapes_default.yaml --steps 500 --seeds 0 1 2 \\
        --set warmup_steps=50 --set 'data=[refshapes:train:20000:0]' [--warm-start CKPT]

Rungs: compressed, hq, rfr, rfa (causal attention) and rfa with the bidirectional segmentation
mask. Each (rung, seed) is trained by ``self1e.train`` with only ``self1e.mask_head``,
``self1e.seg_attention`` and ``seed`` changed: from scratch, or with ``--warm-start CKPT`` from the
same trained backbone with a fresh head of the rung (``new_head``); with ``--head-only`` as well, the
backbone and LLM stay frozen and only the head trains, so the rungs differ in nothing but the head. It
is then evaluated by
``self1e.eval`` on freshly generated RefShapes test samples (overall and per expression kind), and
next to the mask-grid ceiling of its output size (``mask_ceiling.py``: how much of a rung's gain is
resolution). Validation cIoU every ``--curve-every`` steps gives the learning curves. Writes
per-run JSON, a markdown table of mean and spread, and an SVG plot of cIoU against steps per rung.
A run whose folder already holds its record (same steps, start and head-only setting) is not trained
again, so an interrupted ladder continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RUNGS = (("compressed", "causal"), ("hq", "causal"), ("rfr", "causal"), ("rfa", "causal"), ("rfa", "bidirectional"))
METRICS = ("cIoU", "gIoU", "N_acc", "T_acc")
RUNG_ORDER = ("compressed", "hq", "rfr", "rfa")
# LoRA on with no adapter targets and nothing trained in full: only the mask head ("head.") trains
HEAD_ONLY = ["lora.enabled=true", "lora.llm_targets=[]", "lora.vit_targets=[]", "lora.train_full=[]"]


def run_one(config: str, rung: str, attention: str, seed: int, steps: int, out: Path, test: str,
            overrides: list[str], warm_start: str | None = None, curve_every: int = 0,
            val: str = "refshapes:val:200:1", head_only: bool = False) -> dict:
    from self1e.data.datasets import load_dataset
    from self1e.eval.evaluate import PredictorSource, evaluate
    from self1e.inference.predictor import Self1ePredictor
    from self1e.train.config import load_config
    from self1e.train.loop import train

    run_dir = out / f"{rung}-{attention}-seed{seed}"
    done = run_dir / "ablation.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if (record["steps"], record["warm_start"], record.get("head_only", False)) == (steps, warm_start, head_only):
            return record
    if head_only and not warm_start:
        raise ValueError("--head-only needs --warm-start: a frozen random backbone has nothing to read")
    start_from = [f"model={warm_start}", "new_head=true"] if warm_start else []
    curve = [f"val={val}", f"eval_every={curve_every}"] if curve_every else ["val=null"]
    cfg = load_config(config, [*start_from, f"self1e.mask_head={rung}", f"self1e.seg_attention={attention}",
                               f"seed={seed}", f"max_steps={steps}", *curve, "save_every=0", "max_minutes=null",
                               f"out={run_dir}", *(HEAD_ONLY if head_only else []), *overrides])
    start = time.time()
    final = train(cfg)
    minutes = (time.time() - start) / 60
    predictor = Self1ePredictor.from_pretrained(final, device="cpu")
    samples = load_dataset(test)
    result = evaluate(PredictorSource(predictor), samples, batch_size=16, progress=False, desc=run_dir.name)
    predictor.set_image(samples[0].load_image())
    grid = int(predictor.predict_torch([samples[0].text], original_size=False).shape[-1])
    record = {"rung": rung, "attention": attention, "seed": seed, "steps": steps, "warm_start": warm_start,
              "head_only": head_only,
              "train_minutes": round(minutes, 2), **{k: result.metrics.get(k) for k in METRICS},
              "kinds": {k: v["cIoU"] for k, v in result.metrics.get("kinds", {}).items()},
              "mask_grid": grid, "ceiling_cIoU": _ceiling(samples, grid) / 100, "curve": _curve(run_dir)}
    done.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _ceiling(samples, grid: int) -> float:
    import importlib.util

    spec = importlib.util.spec_from_file_location("mask_ceiling", Path(__file__).with_name("mask_ceiling.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ceilings(samples, [grid])[grid]


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation cIoU) from a run's metrics log."""
    log = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    return [(r["step"], r["val/cIoU"]) for r in rows if "val/cIoU" in r]


def pairs(records: list[dict]) -> list[tuple[str, str]]:
    """The (rung, attention) pairs present, in ladder order (causal before bidirectional)."""
    present = {(r["rung"], r["attention"]) for r in records}
    return sorted(present, key=lambda p: (RUNG_ORDER.index(p[0]), p[1] != "causal", p[1]))


def plot(records: list[dict], path: Path) -> None:
    """An SVG of validation cIoU against steps, the mean over seeds per rung (no plotting library)."""
    colours = ("#e6194b", "#3cb44b", "#0082c8", "#f58231", "#911eb4")
    series = []
    for (rung, attention), colour in zip(pairs(records), colours * 2):
        runs = [dict(r["curve"]) for r in records if (r["rung"], r["attention"]) == (rung, attention) and r["curve"]]
        steps = sorted(set.intersection(*(set(c) for c in runs))) if runs else []
        if steps:
            series.append((f"{rung} ({attention})", colour, [(s, statistics.mean(c[s] for c in runs)) for s in steps]))
    w, h, pad = 640, 400, 50
    max_step = max((p[0] for _, _, pts in series for p in pts), default=1)

    def xy(step, v):
        return pad + (w - 2 * pad) * step / max_step, h - pad - (h - 2 * pad) * v

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">training steps</text>',
             f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">validation cIoU</text>']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        _, y = xy(0, v)
        parts.append(f'<text x="{pad - 6}" y="{y + 4}" text-anchor="end">{v:.2f}</text>')
    for k, (label, colour, pts) in enumerate(series):
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, v) for s, v in pts))
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{pad + 10}" y="{pad + 16 * k}" fill="{colour}">{label}</text>')
    path.write_text("".join(parts) + f'<text x="{w - pad}" y="{h - pad + 16}" text-anchor="end">{max_step}</text>'
                    "</svg>\n")


def _cell(vals: list[float]) -> str:
    spread = f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else ""
    return f"{statistics.mean(vals):.1f}{spread}" if vals else "-"


def table(records: list[dict]) -> str:
    # no-target expressions have an empty truth, so their cIoU is 0 whatever the rung: N-acc scores them
    kinds = sorted({k for r in records for k in r.get("kinds", {})} - {"none"})
    head = ["rung", "attention", "runs", *METRICS, "mask grid", "grid ceiling cIoU", *(f"cIoU {k}" for k in kinds)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for rung, attention in pairs(records):
        rs = [r for r in records if r["rung"] == rung and r["attention"] == attention]
        if not rs:
            continue
        cells = [_cell([100 * r[m] for r in rs if r[m] is not None]) for m in METRICS]
        cells += [str(rs[0].get("mask_grid", "-")), _cell([100 * r["ceiling_cIoU"] for r in rs if "ceiling_cIoU" in r])]
        cells += [_cell([100 * r["kinds"][k] for r in rs if r.get("kinds", {}).get(k) is not None]) for k in kinds]
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
    p.add_argument("--warm-start", default=None, metavar="CKPT",
                   help="start every run from this checkpoint's backbone with a fresh head of the rung")
    p.add_argument("--curve-every", type=int, default=None, metavar="N",
                   help="validation cIoU every N steps for the learning curves (default: steps / 5; 0: none)")
    p.add_argument("--head-only", action="store_true",
                   help="with --warm-start: freeze the backbone and LLM, train only the fresh head")
    args = p.parse_args(argv)
    rungs = RUNGS if not args.rungs else tuple(tuple(r.split("-", 1)) for r in args.rungs.split(","))
    for rung, attention in rungs:
        if rung not in RUNG_ORDER or attention not in ("causal", "bidirectional"):
            p.error(f"--rungs: {rung}-{attention} is not RUNG-ATTENTION with RUNG one of {RUNG_ORDER} "
                    "and ATTENTION causal or bidirectional")
    curve_every = max(1, args.steps // 5) if args.curve_every is None else args.curve_every
    out, records = Path(args.out), []
    for seed in args.seeds:
        for rung, attention in rungs:
            records.append(run_one(args.config, rung, attention, seed, args.steps, out, args.test, args.overrides,
                                   args.warm_start, curve_every, head_only=args.head_only))
            print(json.dumps(records[-1]), flush=True)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"config": args.config, "steps": args.steps, "seeds": args.seeds,
                                   "warm_start": args.warm_start, "head_only": args.head_only, "test": args.test,
                                   "runs": records}, indent=2) + "\n")
    md = table(records)
    results.with_suffix(".md").write_text(md)
    plot(records, results.with_suffix(".svg"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
