"""Evaluation: the metrics (one implementation), the sharded loop, the report files and the
evaluate-then-report pipeline."""
from self1e.eval.evaluate import EvalResult, FolderSource, PredictionSource, PredictorSource, evaluate
from self1e.eval.metrics import IoUAccumulator, SampleScore, score_sample
from self1e.eval.pipeline import NamedDataset, evaluate_to_report, load_named
from self1e.eval.report import build_report, markdown_table, write_report

__all__ = [
    "EvalResult",
    "FolderSource",
    "IoUAccumulator",
    "NamedDataset",
    "PredictionSource",
    "PredictorSource",
    "SampleScore",
    "build_report",
    "evaluate",
    "evaluate_to_report",
    "load_named",
    "markdown_table",
    "score_sample",
    "write_report",
]
