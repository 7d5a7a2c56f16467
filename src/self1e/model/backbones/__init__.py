"""The backbone families SELF1E runs on, by their ``config.json`` ``model_type``.

Adding a family: one module with a :class:`Backbone` subclass (and, if its images are laid out in a
new way, a layout in :mod:`self1e.model.layouts`), listed in ``FAMILIES`` below.
"""
from __future__ import annotations

from self1e.model.backbones.base import Backbone, VisionOutput
from self1e.model.backbones.internvl import InternVL
from self1e.model.backbones.qwen_vl import Qwen2_5VL, Qwen3VL
from self1e.model.backbones.smolvlm import SmolVLM

__all__ = ["FAMILIES", "Backbone", "VisionOutput", "backbone_for", "family"]

FAMILIES: dict[str, type[Backbone]] = {cls.model_type: cls for cls in (InternVL, Qwen2_5VL, Qwen3VL, SmolVLM)}


def family(model_type: str | None, where: str = "config.json") -> type[Backbone]:
    """The adapter class of a ``model_type``; ValueError naming the supported ones."""
    if model_type not in FAMILIES:
        raise ValueError(f"{where}: field 'model_type' is {model_type!r}; supported backbones: "
                         f"{', '.join(sorted(FAMILIES))} (transformers' native -hf formats)")
    return FAMILIES[model_type]


def backbone_for(base) -> Backbone:
    """The adapter around a loaded transformers model."""
    return family(getattr(base.config, "model_type", None), type(base).__name__)(base)
