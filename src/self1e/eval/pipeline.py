"""Evaluate, then report: the one pipeline behind ``self1e eval`` and ``self1e demo``.

Each dataset is evaluated in turn (sharded under ``torch.distributed``): a VQA evaluation set
(``internvl_vqa_eval:...``) by the model's answers (:mod:`self1e.eval.vqa_metrics`), any other by
its masks; with several datasets the mask, prediction and overlay folders get one subfolder per
dataset, named by its key. Rank 0 writes ``report.json`` and ``report.md`` and returns the report;
other ranks return None.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from self1e.common.distributed import rank_world
from self1e.data.datasets import load_dataset
from self1e.data.sample import Sample
from self1e.eval.evaluate import PredictionSource, evaluate
from self1e.eval.report import build_report, dataset_entry, dataset_key, vqa_dataset_entry, write_report
from self1e.eval.vqa_metrics import evaluate_vqa, is_vqa_eval


@dataclass(frozen=True)
class NamedDataset:
    """A dataset to evaluate: its short report key, the spec it came from and its samples."""

    key: str
    spec: str
    samples: Sequence[Sample]


def load_named(specs: Sequence[str]) -> list[NamedDataset]:
    """Load every spec (all before any model is loaded, so a bad one fails fast), with unique keys."""
    taken: set[str] = set()
    return [NamedDataset(dataset_key(spec, taken), spec, load_dataset(spec)) for spec in specs]


def evaluate_to_report(
    source_for: Callable[[NamedDataset], PredictionSource],
    datasets: Sequence[NamedDataset],
    report_path: str | Path,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    save_masks: str | Path | None = None,
    overlays: int = 0,
    overlay_dir: str | Path | None = None,
    progress: bool = True,
    **report_fields: Any,
) -> dict[str, Any] | None:
    """Evaluate ``source_for(dataset)`` on each dataset and write the report to ``report_path``.

    ``report_fields`` go into the report's header (model, predictions, device, self1e settings); a
    callable value is called once every dataset is evaluated (a fact only known then, such as the
    settings that remote workers loaded).
    """
    several = len(datasets) > 1

    def folder(root: str | Path | None, d: NamedDataset) -> Path | None:
        return None if root is None else (Path(root) / d.key if several else Path(root))

    entries = {}
    for d in datasets:
        if is_vqa_eval(d.samples):
            predictor = getattr(source_for(d), "predictor", None)
            if predictor is None:
                raise ValueError(f"{d.spec}: a VQA evaluation set is scored by the model's answers; it needs a "
                                 "model (--model), not a folder of predicted masks")
            result = evaluate_vqa(predictor, d.samples, limit=limit, progress=progress, desc=d.key)
            entries[d.key] = vqa_dataset_entry(d.spec, result)
            continue
        masks_dir, draw_dir = folder(save_masks, d), folder(overlay_dir, d) if overlays else None
        result = evaluate(source_for(d), d.samples, batch_size=batch_size, limit=limit, save_masks=masks_dir,
                          overlays=overlays, overlay_dir=draw_dir, progress=progress, desc=d.key)
        entries[d.key] = dataset_entry(d.spec, result, save_masks=masks_dir, overlays=draw_dir)
    rank, world = rank_world()
    if rank != 0:
        return None
    fields = {k: v() if callable(v) else v for k, v in report_fields.items()}
    report = build_report(entries, world_size=world, batch_size=batch_size, limit=limit, **fields)
    write_report(report, report_path)
    return report
