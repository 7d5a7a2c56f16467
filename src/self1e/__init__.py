"""SELF1E: an InternVL MLLM as an image segmenter with one [SEG] token and no mask decoder.

The public API is below; names are imported on first use, so ``import self1e`` (and the
command line's ``--help``) does not import torch or transformers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from self1e.common.threads import prepare_openmp

prepare_openmp()  # before torch loads OpenMP: waiting threads sleep (self1e.common.threads)
__version__ = "0.1.0"

_EXPORTS = {
    "Self1eConfig": "self1e.model",
    "Self1eModel": "self1e.model",
    "Self1eOutput": "self1e.model",
    "Self1eProcessor": "self1e.model",
    "load_model": "self1e.model",
    "Self1ePredictor": "self1e.inference",
    "SegmentationResult": "self1e.inference",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from self1e.inference import SegmentationResult, Self1ePredictor  # noqa: F401
    from self1e.model import Self1eConfig, Self1eModel, Self1eOutput, Self1eProcessor, load_model  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'self1e' has no attribute {name!r}")
