"""`self1e eval`: cIoU / gIoU / P@X (and N-acc / T-acc) of a model or of saved masks on datasets, and
a model's VQA accuracy (GQA: exact match) on VQA evaluation sets (internvl_vqa_eval:NAME@ROOT).

    self1e eval --model DIR --data SPEC [--data SPEC ...] --out report.json
    self1e eval --predictions DIR --data SPEC --out report.json

Writes ``report.json`` and ``report.md`` (schema: ``self1e.eval.report``) and prints the table.
Runs sharded under ``torchrun --no-python self1e eval ...`` (or ``accelerate launch``); the result
equals a one-process run bit for bit. With ``--ray [--address ADDR] [--actors N] [--gpus-per-actor G]``
the model runs as a Ray Data pipeline on a pool of predictor actors (the ``ray`` extra;
self1e.eval.ray_data): the same report, masks and metrics.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from self1e.cli.options import add_device, add_model, add_quantize, add_settings, quantize_from, settings_from
from self1e.cli.ray_cluster import add_actor_options, add_address

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model, or a folder of predicted masks, on segmentation (and VQA) datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    add_model(src, default=None)
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
        "--num-overlays",
        type=int,
        default=0,
        metavar="N",
        help="draw the first N samples (prediction red, truth green, text above) into <out stem>_overlays/",
    )
    add_device(p)
    add_quantize(p)
    add_settings(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = p.add_argument_group("Ray Data (needs self1e[ray])")
    ray.add_argument("--ray", action="store_true", help="run the model as a Ray Data pipeline on a pool of "
                     "predictor actors (same report, masks and metrics)")
    add_address(ray)
    add_actor_options(ray)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from self1e.common.distributed import init_from_env
    from self1e.common.files import check_outputs
    from self1e.eval.evaluate import FolderSource, PredictorSource
    from self1e.eval.pipeline import evaluate_to_report, load_named
    from self1e.eval.report import markdown_table, report_paths

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {args.limit}")
    if args.num_overlays < 0:
        raise ValueError(f"--num-overlays must be >= 0, got {args.num_overlays}")
    if args.out.exists() and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name such as {args.out / 'report.json'}")
    check_outputs({"--out": report_paths(args.out)}, {"--data": [d for d in args.data if Path(d).is_file()]})
    settings = settings_from(args)
    if settings and args.model is None:
        raise ValueError("--set changes a model's settings; it needs --model, not --predictions")
    quantize = quantize_from(args)
    if quantize and args.model is None:
        raise ValueError("--quantize changes how a model runs; it needs --model, not --predictions")
    if args.ray and args.model is None:
        raise ValueError("--ray runs a model on Ray actors; it needs --model (--predictions is scored without Ray)")
    if args.model is not None and not args.ray:
        from self1e.inference.predictor import pick_device

        pick_device(args.device)  # a bad --device fails before the datasets and the model load
    if args.ray:
        return run_on_ray(args, settings)

    started_dist = init_from_env(args.device)
    try:
        datasets = load_named(args.data)  # every dataset first: a bad --data fails before a model loads
        if args.predictions is not None:
            from self1e.eval.vqa_metrics import is_vqa_eval

            vqa = [d.spec for d in datasets if is_vqa_eval(d.samples)]
            if vqa:
                raise ValueError(f"--data {vqa[0]} is a VQA evaluation set, scored by a model's answers: it needs "
                                 "--model (--predictions holds masks only)")
        header: dict = {"model": args.model, "predictions": args.predictions, "device": args.device}
        if args.model is not None:
            from self1e.inference import Self1ePredictor

            predictor = Self1ePredictor.from_pretrained(args.model, device=args.device, config=settings,
                                                        threads=args.threads,
                                                        **({"quantize": quantize} if quantize else {}))
            model_source = PredictorSource(predictor)
            header.update(device=str(predictor.device), self1e=predictor.model.config.to_dict())

            def source_for(d):
                return model_source
        else:

            def source_for(d):
                return FolderSource(Path(args.predictions) / d.key if len(datasets) > 1 else Path(args.predictions))

        overlay_dir = args.out.parent / f"{args.out.stem}_overlays" if args.num_overlays else None
        report = evaluate_to_report(source_for, datasets, args.out, batch_size=args.batch_size, limit=args.limit,
                                    save_masks=args.save_masks, overlays=args.num_overlays, overlay_dir=overlay_dir,
                                    progress=not args.no_progress, **header)
        if report is not None:
            print(markdown_table(report), end="")
            logger.info("wrote %s and its .md", args.out)
    finally:
        if started_dist:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def run_on_ray(args: argparse.Namespace, settings: dict) -> int:
    """``self1e eval --ray``: each dataset's masks from the Ray Data pipeline, scored and reported by
    the same code as without Ray."""
    from self1e.cli.ray_cluster import pool_options, ray_session
    from self1e.common.distributed import rank_world
    from self1e.eval.pipeline import evaluate_to_report, load_named
    from self1e.eval.report import markdown_table
    from self1e.eval.vqa_metrics import is_vqa_eval

    if rank_world()[1] > 1:
        raise ValueError("--ray shards over Ray actors; run it as one process, not under torchrun")
    datasets = load_named(args.data)
    vqa = [d.spec for d in datasets if is_vqa_eval(d.samples)]
    if vqa:
        raise ValueError(f"--data {vqa[0]} is a VQA evaluation set: --ray evaluates segmentation datasets; "
                         "run the VQA sets without --ray")
    options = pool_options(args, args.model, args.device, settings, quantize_from(args))
    with ray_session(args.address):
        from self1e.eval.ray_data import RayDataSource

        sources: dict[str, RayDataSource] = {}

        def source_for(d):
            if d.key not in sources:
                sources[d.key] = RayDataSource(d.samples, options, batch_size=args.batch_size, limit=args.limit)
            return sources[d.key]

        def info(key: str):
            return lambda: next((s.info[key] for s in sources.values() if s.info), None)

        overlay_dir = args.out.parent / f"{args.out.stem}_overlays" if args.num_overlays else None
        try:
            report = evaluate_to_report(source_for, datasets, args.out, batch_size=args.batch_size,
                                        limit=args.limit, save_masks=args.save_masks, overlays=args.num_overlays,
                                        overlay_dir=overlay_dir, progress=not args.no_progress, model=args.model,
                                        predictions=None, device=info("device"), self1e=info("self1e"))
        finally:
            for source in sources.values():
                source.close()
    print(markdown_table(report), end="")
    logger.info("wrote %s and its .md", args.out)
    return 0
