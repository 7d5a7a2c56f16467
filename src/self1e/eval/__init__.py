"""Evaluation: the metrics (one implementation), the sharded loop, overlays and the report files."""
from .evaluate import EvalResult, FolderSource, PredictorSource, evaluate
from .metrics import IoUAccumulator, SampleScore, score_sample
from .overlay import overlay
from .report import build_report, markdown_table, write_report

__all__ = [
    "EvalResult",
    "FolderSource",
    "IoUAccumulator",
    "PredictorSource",
    "SampleScore",
    "build_report",
    "evaluate",
    "markdown_table",
    "overlay",
    "score_sample",
    "write_report",
]
