"""`self1e demo`: the shipped RefShapes model, evaluated on freshly generated samples, with pictures.

Optionally (``--train``) the default recipe is first retrained from scratch within a time budget.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

SPLITS = (("test", 500), ("test-compositional", 200))  # enough no-target samples (about 10 %) for N-acc


def refshapes_samples(split: str, n: int, seed: int, size: int = 224) -> list:
    """``n`` fresh in-memory RefShapes samples of ``split`` (no files written)."""
    from .data.refshapes import iter_samples

    return list(itertools.islice(iter_samples(split, seed, n, size), n))


def run_demo(model: str = "default", out: str | Path = "demo-out", seed: int = 2026, n_scale: float = 1.0,
             overlays: int = 8, batch_size: int = 16, device: str | None = None) -> dict:
    """Evaluate ``model`` on fresh RefShapes test splits; write overlays and a report into ``out``.
    Returns the report dict (see ``self1e.eval.report``)."""
    from .eval.evaluate import PredictorSource, evaluate
    from .eval.report import build_report, dataset_entry, markdown_table, write_report
    from .predictor import Self1ePredictor

    out = Path(out)
    predictor = Self1ePredictor.from_pretrained(model, device=device)
    source = PredictorSource(predictor)
    datasets = {}
    for split, n in SPLITS:
        samples = refshapes_samples(split, max(1, int(n * n_scale)), seed)
        result = evaluate(source, samples, batch_size=batch_size, overlays=overlays,
                          overlay_dir=out / split, desc=f"RefShapes {split}")
        datasets[f"refshapes-{split}"] = dataset_entry(f"refshapes:{split}:seed={seed}", result, overlays=out / split)
    report = build_report(datasets, model=str(model), device=str(predictor.device), batch_size=batch_size)
    write_report(report, out / "report.json")
    print(markdown_table(report))
    print(f"overlay pictures and report.json written to {out.resolve()}")
    return report
