"""The one model registry: ``load_model(name_or_path)`` for every model argument of the library and CLI.

Names: ``"default"`` (the shipped RefShapes model), ``"tiny:NAME"`` (a randomly initialised model of
a tiny geometry, see :mod:`self1e.model.tiny`), or a folder (a self1e checkpoint, or a plain InternVL
``-hf`` checkpoint that gets [SEG] and fresh heads).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from self1e.model.config import Self1eConfig
from self1e.model.self1e import Self1eModel, resolve_settings
from self1e.model.tiny import TINY_SPECS, build_tiny_base
from self1e.model.weights import TINY_PREFIX, model_names, resolve_model_path, saved_settings

__all__ = ["load_model", "model_names", "saved_settings_of"]


def _tiny_name(name_or_path: str | Path) -> str | None:
    name = str(name_or_path)
    if not name.startswith(TINY_PREFIX):
        return None
    tiny = name[len(TINY_PREFIX):]
    if tiny not in TINY_SPECS:
        raise ValueError(f"unknown model {name!r}; known names: {', '.join(model_names())}, or a checkpoint folder")
    return tiny


def saved_settings_of(name_or_path: str | Path) -> Self1eConfig | None:
    """The SELF1E settings stored with a model, read without loading any weights: None for a tiny
    model, a plain InternVL folder, or a folder that does not exist (yet; loading it says so)."""
    if _tiny_name(name_or_path) is not None or (str(name_or_path) != "default" and not Path(name_or_path).is_dir()):
        return None
    return saved_settings(resolve_model_path(name_or_path))


def load_model(name_or_path: str | Path, config: Self1eConfig | Mapping[str, Any] | None = None, *,
               dtype: torch.dtype | None = None, device: str | torch.device | None = None,
               attn_implementation: str = "sdpa", seed: int = 0) -> Self1eModel:
    """Load the model named by ``name_or_path`` in eval mode.

    ``config`` as for :meth:`Self1eModel.from_pretrained`: None keeps the stored SELF1E settings, a
    mapping overrides single fields, a :class:`Self1eConfig` replaces them. ``seed`` initialises tiny models.
    """
    tiny = _tiny_name(name_or_path)
    if tiny is None:
        return Self1eModel.from_pretrained(name_or_path, config=config, dtype=dtype,
                                           attn_implementation=attn_implementation, device=device)
    base, tokenizer = build_tiny_base(tiny, seed=seed)
    base.set_attn_implementation(attn_implementation)
    model = Self1eModel.from_base(base, tokenizer, resolve_settings(None, config))
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()
