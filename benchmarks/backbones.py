"""SELF1E on every backbone family at our scale: the same RefShapes budget on tiny InternVL-,
Qwen2.5-VL-, Qwen3-VL- and SmolVLM-style models (the same widths, depths and image size, random
initialisation, the RFA head under the segmentation mask; 16 LLM tokens per image for the first
three, 4 for SmolVLM's pixel shuffle by 4), trained on the VQA + segmentation mix of
``vqa_preserved.py``; segmentation cIoU and VQA exact match side by side.

    python benchmarks/backbones.py --steps 3000

A run whose record is in the results file (same start and steps) is not trained again, so an
interrupted comparison continues where it stopped.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

FAMILIES = ("internvl", "qwen2_5_vl", "qwen3_vl", "smolvlm")


def start_of(family: str, geometry: str) -> str:
    """The tiny model name of a family at a geometry (InternVL's tiny names are the geometries)."""
    if family == "internvl":
        return f"tiny:{geometry}"
    return f"tiny:{family}" if geometry == "tiny" else f"tiny:{family}-{geometry}"


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| backbone | start | steps | minutes | segmentation cIoU | gIoU | N-acc | VQA exact match | "
             "VQA answered without [SEG] | multi-object: one [SEG] per object |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        seg, vqa, multi = r["segmentation"], r["vqa"], r["multi_object"]
        cells = [seg["cIoU"], seg["gIoU"], seg["N_acc"], vqa["exact_match"], vqa["answered_without_seg"],
                 multi["right_seg_count"]]
        lines.append(f"| {r['family']} | `{r['start']}` | {r['steps']} | {r['minutes']} | "
                     + " | ".join(pct(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: %(default)s)")
    p.add_argument("--geometry", default="small112", help="the tiny geometry of every start (default: %(default)s)")
    p.add_argument("--size", type=int, default=112, help="RefShapes canvas size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--train-n", type=int, default=20000, help="samples per training dataset (default: %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="units per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--test", type=int, default=200, help="held-out samples per measure")
    p.add_argument("--out", default="runs/backbones")
    p.add_argument("--results", default="benchmarks/results/backbones.json")
    args = p.parse_args(argv)
    families = args.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    common = _sibling("vqa_preserved")
    results = Path(args.results)
    done = {(r["start"], r["steps"]): r for r in json.loads(results.read_text())["runs"]} if results.is_file() else {}
    tests, rows = None, list(done.values())
    for family in families:
        start = start_of(family, args.geometry)
        row = done.get((start, args.steps))
        if row is None:
            tests = tests or common.held_out(args.test, args.size)
            row = {"family": family, **common.train_and_measure(start, common.mixed_data(args.train_n, args.size),
                                                                args.batch, args.steps, args.lr,
                                                                Path(args.out) / family, tests)}
            print(json.dumps(row), flush=True)
        done[start, args.steps] = row
        rows = sorted(done.values(), key=lambda r: (FAMILIES.index(r["family"]), r["steps"]))
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2) + "\n")
    md = table(rows)
    results.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
