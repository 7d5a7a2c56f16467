"""`self1e batch`: segment many images as a Ray Data pipeline (the ``ray`` extra), one COCO RLE result per
(image, expression) in a JSONL file.

    self1e batch --model DIR --data data.jsonl --out results.jsonl [--actors N] [--gpus-per-actor G]
    self1e batch --model DIR --data FOLDER --text "the red circle" [--text ...] --out results.jsonl

``--data`` is a JSONL file (or any dataset spec: each sample's image and text) or a folder of images,
every one of which is segmented with each ``--text``. Each line of the output is ``{"id", "image",
"width", "height", "text", "score", "empty", "pixels", "bbox", "rle"}`` (as the HTTP API's results), in
the input's order; an image that cannot be read (or an expression that cannot be answered) gets
``{"id", "image", "text", "error"}`` and the job goes on. See self1e.eval.ray_data for the pipeline.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from self1e.cli.options import add_device, add_model, add_quantize, add_settings, quantize_from, settings_from
from self1e.cli.ray_cluster import add_actor_options, add_address

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="segment many images on Ray Data: one COCO RLE result per (image, expression) "
                       "to JSONL (needs self1e[ray])", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(p)
    p.add_argument("--data", required=True, metavar="JSONL_OR_FOLDER",
                   help="a JSONL file or dataset spec (image + text per sample), or a folder of images")
    p.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="with a folder: an expression to segment in every image (repeatable)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="results JSONL")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per model call (default 8)")
    add_address(p)
    add_actor_options(p)
    add_device(p)
    add_quantize(p)
    add_settings(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def folder_samples(folder: Path, texts: list[str]) -> list:
    """One sample per (image in ``folder``, searched recursively, sorted; text)."""
    from self1e.data.sample import Sample

    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"--data {folder}: no images in the folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    return [Sample(id=str(p.relative_to(folder).with_suffix("")), image=p, text=t, where=str(p))
            for p in images for t in texts]


def run(args: argparse.Namespace) -> int:
    from self1e.cli.ray_cluster import pool_options, ray_session
    from self1e.common.files import check_outputs
    from self1e.inference.predictor import check_texts

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out.exists() and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name such as {args.out / 'results.jsonl'}")
    data = Path(args.data)
    check_outputs({"--out": [args.out]}, {"--data": [data] if data.is_file() else []})
    texts = [t.strip() for t in args.text]
    if data.is_dir():
        if not texts:
            raise ValueError(f"--data {data} is a folder: give the expressions to segment with --text")
        check_texts(texts)
        samples = folder_samples(data, texts)
    else:
        if texts:
            raise ValueError("--text goes with a folder of images; a JSONL file brings its own texts")
        from self1e.data.datasets import load_dataset

        samples = load_dataset(args.data)
    options = pool_options(args, args.model, args.device, settings_from(args), quantize_from(args))
    with ray_session(args.address):
        from self1e.eval.ray_data import batch_predict

        counts = batch_predict(samples, args.out, options, batch_size=args.batch_size)
    print(f"self1e batch: {counts['results']} results for {counts['images']} images in {args.out}"
          + (f"; {counts['errors']} could not be answered (their lines hold 'error')" if counts["errors"] else ""))
    return 0
