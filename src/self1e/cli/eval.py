"""`self1e eval`: cIoU / gIoU / P@X (and N-acc / T-acc) of a model or of saved masks on datasets.

    self1e eval --model DIR --data SPEC [--data SPEC ...] --out report.json
    self1e eval --predictions DIR --data SPEC --out report.json

Writes ``report.json`` and ``report.md`` (schema: ``self1e.eval.report``) and prints the table.
Runs sharded under ``torchrun --no-python self1e eval ...`` (or ``accelerate launch``); the result
equals a one-process run bit for bit.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model, or a folder of predicted masks, on segmentation datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="checkpoint folder (or 'default') to evaluate")
    src.add_argument(
        "--predictions",
        metavar="DIR",
        help="folder of predicted masks <id>.png (non-zero = foreground; missing = empty); with "
        "several --data, one subfolder per dataset named by its short name",
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="SPEC",
        help="a JSONL file or a dataset spec such as refcoco:unc:val@/data (repeatable)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="report JSON (report.md goes beside it)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="samples per model call (default 8)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N samples of each dataset")
    p.add_argument(
        "--save-masks",
        type=Path,
        metavar="DIR",
        help="write predicted masks as DIR/<id>.png (0/255); with several --data, DIR/<name>/<id>.png",
    )
    p.add_argument(
        "--overlays",
        type=int,
        default=0,
        metavar="N",
        help="draw the first N samples (prediction red, truth green, text above) into <out stem>_overlays/",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _load_all(specs: list[str]) -> list[tuple[str, str, list]]:
    """Load every dataset first, so that a bad --data fails before a model is loaded."""
    from self1e.data.datasets import load_dataset
    from self1e.eval.report import dataset_key

    taken: set[str] = set()
    loaded = []
    for spec in specs:
        samples = load_dataset(spec)
        loaded.append((dataset_key(spec, taken), spec, samples))
    return loaded


def run(args: argparse.Namespace) -> int:
    from self1e.eval.evaluate import (
        FolderSource,
        PredictorSource,
        dist_rank_world,
        evaluate,
        init_distributed_from_env,
    )
    from self1e.eval.report import build_report, dataset_entry, markdown_table, write_report

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {args.limit}")
    if args.overlays < 0:
        raise ValueError(f"--overlays must be >= 0, got {args.overlays}")
    if args.out.exists() and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name such as {args.out / 'report.json'}")

    started_dist = init_distributed_from_env(args.device)
    try:
        datasets = _load_all(args.data)
        several = len(datasets) > 1
        model_source = None
        device = args.device
        if args.model is not None:
            from self1e.predictor import Self1ePredictor

            predictor = Self1ePredictor.from_pretrained(args.model, device=args.device)
            model_source = PredictorSource(predictor)
            device = str(getattr(predictor, "device", args.device))

        entries = {}
        for key, spec, samples in datasets:

            def per_dataset(folder: Path) -> Path:  # one subfolder per dataset when there are several
                return folder / key if several else folder

            source = model_source or FolderSource(per_dataset(Path(args.predictions)))
            save_dir = per_dataset(args.save_masks) if args.save_masks is not None else None
            overlay_dir = per_dataset(args.out.parent / f"{args.out.stem}_overlays") if args.overlays else None
            result = evaluate(
                source,
                samples,
                batch_size=args.batch_size,
                limit=args.limit,
                save_masks=save_dir,
                overlays=args.overlays,
                overlay_dir=overlay_dir,
                progress=not args.no_progress,
                desc=key,
            )
            entries[key] = dataset_entry(spec, result, save_masks=save_dir, overlays=overlay_dir)

        rank, world = dist_rank_world()
        if rank == 0:
            report = build_report(
                entries,
                model=args.model,
                predictions=args.predictions,
                device=device,
                world_size=world,
                batch_size=args.batch_size,
                limit=args.limit,
            )
            json_path, md_path = write_report(report, args.out)
            print(markdown_table(report), end="")
            logger.info("wrote %s and %s", json_path, md_path)
    finally:
        if started_dist:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
