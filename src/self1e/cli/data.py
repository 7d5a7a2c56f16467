"""`self1e data`: generate RefShapes, convert real datasets to JSONL, and check datasets.

    self1e data synth --out DIR --split train --n 20000 --seed 0 --size 224 [--vqa] [--kind vqa|multi] [--styled]
    self1e data convert --from refcoco --root ROOT --split val [--split-by unc] --out FILE.jsonl
    self1e data check PATH_OR_SPEC        (exit 0 only when no problem is found)
    self1e data plan CONFIG.yaml [--set KEY=VALUE] [--processes N] [--allow-missing] [--json]
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from tqdm import tqdm

CONVERT_SOURCES = ("refcoco", "refcoco+", "refcocog", "refclef", "grefcoco", "reasonseg", "semseg", "ade20k",
                   "cocostuff", "pascal_part", "paco_lvis", "mapillary")
MAX_PROBLEMS_SHOWN = 20
log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    from self1e.data.refshapes import SPLITS

    p = sub.add_parser("data", help="generate RefShapes, convert datasets to JSONL, check datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)

    s = dsub.add_parser("synth", help="write a RefShapes split (JSONL + PNG images and masks)")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder; writes DIR/<split>.jsonl")
    s.add_argument("--split", default="train", choices=SPLITS, help="which RefShapes split (default: %(default)s)")
    s.add_argument("--n", type=int, default=1000, metavar="N",
                   help="number of referring samples (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, metavar="N", help="generator seed (default: %(default)s)")
    s.add_argument("--size", type=int, default=224, metavar="PX",
                   help="canvas size in pixels, 64-1024 (default: %(default)s)")
    s.add_argument("--vqa", action="store_true", help="also write one VQA line per scene (--kind refer)")
    s.add_argument("--kind", default="refer", choices=("refer", "vqa", "multi"),
                   help="referring expressions, VQA only, or multi-object requests (default: %(default)s)")
    s.add_argument("--styled", action="store_true", help="draw scenes in varied looks and outline geometry")
    s.add_argument("--per-image", type=int, default=4, metavar="N",
                   help="referring samples per scene image (default: %(default)s)")
    s.set_defaults(run=run_synth)

    c = dsub.add_parser("convert", help="export a dataset to JSONL (masks written as PNGs)")
    c.add_argument("--from", dest="source", required=True, choices=CONVERT_SOURCES, help="the dataset's format")
    c.add_argument("--root", required=True, metavar="DIR", help="the dataset root folder (layout: docs/data.md)")
    c.add_argument("--split", required=True, metavar="SPLIT", help="e.g. val, testA, test, validation")
    c.add_argument("--split-by", default=None, metavar="NAME", help="unc, umd, ... (RefCOCO family only)")
    c.add_argument("--all-texts", action="store_true", help="ReasonSeg: every text, not the first")
    c.add_argument("--out", required=True, metavar="FILE.jsonl", help="the JSONL file to write")
    c.set_defaults(run=run_convert)

    pl = dsub.add_parser("plan", help="what a training config's mix holds: samples, caps, repeats, shares, steps")
    pl.add_argument("config", metavar="CONFIG.yaml", help="a training config")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, as for `self1e train` (repeatable)")
    pl.add_argument("--processes", type=int, default=1, metavar="N",
                    help="training processes (GPUs), for the global batch and steps per epoch (default: 1)")
    pl.add_argument("--allow-missing", action="store_true", help="exit 0 even when a dataset is missing or empty")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(run=run_plan)

    k = dsub.add_parser("check", help="validate a JSONL file, a folder of them, or a dataset spec")
    k.add_argument("path", help="FILE.jsonl, a folder of .jsonl files, or a spec such as "
                                "refcoco:unc:val@ROOT")
    k.add_argument("--no-decode", action="store_true",
                   help="only check structure and that files exist (do not decode images/masks)")
    k.set_defaults(run=run_check)


def run_plan(args) -> int:
    """Exit 1 when a dataset is missing or empty, unless ``--allow-missing``."""
    import json

    from self1e.train.config import load_config
    from self1e.train.plan import data_plan, format_plan

    if args.processes < 1:
        raise ValueError(f"--processes must be >= 1, got {args.processes}")
    plan = data_plan(load_config(args.config, args.overrides), args.processes)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 1 if plan["missing"] and not args.allow_missing else 0


def run_synth(args) -> int:
    from self1e.data.refshapes import generate

    path = generate(args.out, args.split, args.n, args.seed, size=args.size, vqa=args.vqa, kind=args.kind,
                    styled=args.styled,
                    progress=True, per_image=args.per_image)
    print(f"wrote {path}")
    return 0


def _spec(args) -> str:
    if args.source == "reasonseg":
        return f"reasonseg:{args.split}{':all' if args.all_texts else ''}@{args.root}"
    if args.source == "semseg":
        return f"semseg:{args.split}@{args.root}"
    split_by = f"{args.split_by}:" if args.split_by else ""
    return f"{args.source}:{split_by}{args.split}@{args.root}"


def run_convert(args) -> int:
    from self1e.common.images import image_size, write_mask_png
    from self1e.data.datasets import load_dataset
    from self1e.data.jsonl import write_jsonl

    samples = load_dataset(_spec(args))
    out = Path(args.out)
    if out.suffix != ".jsonl":
        raise ValueError(f"--out must name a .jsonl file, got {out}")
    written: dict[int, str] = {}  # id(mask source) -> relative PNG path: one file per shared mask

    def save(src, size: tuple[int, int], sample, field: str, suffix: str = "") -> str:
        if id(src) not in written:
            arr = sample._load(src, size, field)
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", sample.id) + suffix
            rel = f"{out.stem}_{field}/{name}.png"
            write_mask_png(arr, out.parent / rel)
            written[id(src)] = rel
        return written[id(src)]

    records = []
    for s in tqdm(samples, desc=f"convert {args.source}", unit="sample"):
        image = Path(s.image)
        if not image.is_file():
            raise ValueError(f"{s.where}: image not found: {image}")
        size = image_size(image, exif=s.exif)
        rec = {"id": s.id, "image": str(image.resolve()), "text": s.text,
               "mask": save(s.mask, size, s, "mask") if s.mask is not None else None}
        if s.ignore is not None:
            rec["ignore"] = save(s.ignore, size, s, "ignore")
        if s.instances:
            rec["instances"] = [save(m, size, s, "instances", f"_{k}")
                                for k, m in enumerate(s.instances)]
        if s.kind is not None:
            rec["kind"] = s.kind
        if not s.exif:
            rec["exif"] = False  # the field's annotations are in stored pixel order
        records.append(rec)
    write_jsonl(out, records)
    print(f"wrote {len(records)} samples to {out}")
    return 0


def _report(name: str, samples, problems: list[str]) -> None:
    n_vqa = sum(s.is_vqa for s in samples)
    n_none = sum(1 for s in samples if not s.is_vqa and s.mask is None)
    print(f"{name}: {len(samples)} samples ({len(samples) - n_vqa} referring, {n_vqa} VQA), "
          f"{n_none} without target")
    kinds = Counter(s.kind for s in samples if s.kind is not None)
    if kinds:
        print("  kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(f"  problems: {len(problems)}")
    for p in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"    {p}")
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"    ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")


def run_check(args) -> int:
    """Every line's problems (bad lines, duplicate ids, unknown keys, an empty file, undecodable or
    mis-sized images and masks, non-binary masks) are listed; the exit status is 1 when any is found."""
    from self1e.common.errors import DataError
    from self1e.data.datasets import load_dataset
    from self1e.data.jsonl import read_jsonl, validate

    path = Path(args.path)
    targets = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if path.is_dir() and not targets:
        raise ValueError(f"{path}: no .jsonl files in this folder")
    total = 0
    for target in targets:
        problems: list[str] = []
        if target.is_file():
            try:
                samples = read_jsonl(target, skip_bad=True, problems=problems)
            except DataError as e:  # a problem of the whole file (no samples in it): report it, check the others
                samples, problems = [], [str(e)]
        else:
            samples = load_dataset(args.path)
        if not args.no_decode:
            problems += validate(tqdm(samples, desc=f"check {target.name}", unit="sample",
                                      disable=len(samples) < 1000))
        _report(str(target), samples, problems)
        total += len(problems)
    return 0 if total == 0 else 1
