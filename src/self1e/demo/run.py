"""`self1e demo`: the shipped RefShapes model, evaluated on freshly generated samples, with pictures.

Optionally (``--train``) the default recipe is first retrained from scratch within a time budget.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

from self1e.data.refshapes import iter_multi_samples, iter_samples, iter_vqa_samples
from self1e.eval.chat import evaluate_chat
from self1e.eval.evaluate import PredictorSource
from self1e.eval.pipeline import NamedDataset, evaluate_to_report
from self1e.eval.report import markdown_table
from self1e.inference import Self1ePredictor

log = logging.getLogger(__name__)

SPLITS = (("test", 500), ("test-compositional", 200))  # enough no-target samples (about 10 %) for N-acc
MULTI = 100  # multi-object requests of the test split (each object scored)
CHAT = {"segmentation": 100, "vqa": 200, "multi": 50}  # samples of the chat measures


def refshapes_samples(split: str, n: int, seed: int, size: int = 224) -> list:
    """``n`` fresh in-memory RefShapes samples of ``split`` (no files written)."""
    return list(itertools.islice(iter_samples(split, seed, n, size), n))


def run_demo(model: str = "default", out: str | Path = "demo-out", seed: int = 2026, n_scale: float = 1.0,
             overlays: int = 8, batch_size: int = 16, device: str | None = None, threads: int | None = None) -> dict:
    """Evaluate ``model`` on fresh RefShapes test splits; write overlays (one folder per split) and
    ``report.json`` into ``out``. Returns the report dict (see ``self1e.eval.report``)."""
    out = Path(out)
    predictor = Self1ePredictor.from_pretrained(model, device=device, threads=threads)
    source = PredictorSource(predictor)
    datasets = [NamedDataset(f"refshapes-{split}", f"refshapes:{split}:seed={seed}",
                             refshapes_samples(split, max(1, int(n * n_scale)), seed)) for split, n in SPLITS]
    n_multi = max(1, int(MULTI * n_scale))
    datasets.append(NamedDataset("refshapes-multi-test", f"refshapes-multi:test:{n_multi}:{seed}",
                                 list(iter_multi_samples("test", seed, n_multi))))

    def count(key: str) -> int:
        return max(1, int(CHAT[key] * n_scale))

    chat = evaluate_chat(predictor, segmentation=datasets[0].samples[:count("segmentation")],
                         vqa=list(iter_vqa_samples("test", seed + 1, count("vqa"))),
                         multi=datasets[-1].samples[:count("multi")])
    report = evaluate_to_report(lambda d: source, datasets, out / "report.json", batch_size=batch_size,
                                overlays=overlays, overlay_dir=out, model=str(model), device=str(predictor.device),
                                self1e=predictor.model.config.to_dict(), chat=chat)
    assert report is not None, "the demo runs in one process"
    print(markdown_table(report))
    print(f"overlay pictures and report.json written to {out.resolve()}")
    return report
