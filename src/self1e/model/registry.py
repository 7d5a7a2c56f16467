"""The one model registry: ``load_model(name_or_path)`` for every model argument of the library and CLI.

Names: ``"default"`` (the shipped RefShapes model), ``"tiny:NAME"`` (a randomly initialised model of
a tiny geometry, see :mod:`self1e.model.tiny`), ``"random:PATH"`` (random weights at the shapes of
a real checkpoint's ``config.json``, e.g. ``random:configs/models/internvl3-2b-hf``), or a folder
(a self1e checkpoint, or a plain InternVL ``-hf`` checkpoint that gets [SEG] and fresh heads).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from self1e.common.quantization import CPU_MODES, GPU_MODES, parse_quantize
from self1e.model.backbones import family
from self1e.model.config import Self1eConfig
from self1e.model.quantize import bnb_config, check_target, quantize_int8
from self1e.model.self1e import Self1eModel, resolve_settings
from self1e.model.tiny import build_tiny_base, point_image_tokens, tiny_names, tokenizer_for
from self1e.model.weights import (
    RANDOM_PREFIX,
    TINY_PREFIX,
    load_base_config,
    model_names,
    resolve_model_path,
    saved_settings,
)

__all__ = ["load_model", "model_names", "saved_settings_of"]


def _tiny_name(name_or_path: str | Path) -> str | None:
    name = str(name_or_path)
    if not name.startswith(TINY_PREFIX):
        return None
    tiny = name[len(TINY_PREFIX):]
    if tiny not in tiny_names():
        raise ValueError(f"unknown model {name!r}; known names: {', '.join(model_names())}, or a checkpoint folder")
    return tiny


def saved_settings_of(name_or_path: str | Path) -> Self1eConfig | None:
    """The SELF1E settings stored with a model, read without loading any weights: None for a tiny
    model, a plain InternVL folder, or a folder that does not exist (yet; loading it says so)."""
    if str(name_or_path).startswith(RANDOM_PREFIX) or _tiny_name(name_or_path) is not None or (
            str(name_or_path) != "default" and not Path(name_or_path).is_dir()):
        return None
    return saved_settings(resolve_model_path(name_or_path))


def load_model(name_or_path: str | Path, config: Self1eConfig | Mapping[str, Any] | None = None, *,
               dtype: torch.dtype | None = None, device: str | torch.device | None = None,
               attn_implementation: str = "sdpa", seed: int = 0, new_head: bool = False,
               quantize: str | None = None) -> Self1eModel:
    """Load the model named by ``name_or_path`` in eval mode.

    ``config`` as for :meth:`Self1eModel.from_pretrained`: None keeps the stored SELF1E settings, a
    mapping overrides single fields, a :class:`Self1eConfig` replaces them. ``seed`` initialises tiny models.
    ``new_head``: keep a checkpoint's backbone and LLM but attach a fresh mask head (of the rung
    ``config`` asks for) instead of its saved one. ``quantize`` (for inference; see
    :mod:`self1e.model.quantize`): ``"int8"`` converts the Linear layers of the ViT and the LLM of a
    float32 CPU model to int8 (``"int8-vit"``: the ViT's only); ``"bnb8"`` / ``"nf4"`` load a folder's
    ones through bitsandbytes onto a CUDA ``device`` (default ``cuda``); ``None`` / ``"none"``: as stored.
    """
    mode = parse_quantize(quantize)
    check_target(mode, device, dtype)  # before anything loads
    tiny = _tiny_name(name_or_path)
    random_config = str(name_or_path)[len(RANDOM_PREFIX):] if str(name_or_path).startswith(RANDOM_PREFIX) else None
    if tiny is None and random_config is None:
        bnb = mode in GPU_MODES
        if bnb and dtype is None:  # what stays unquantized (the mask head included) is bf16
            dtype = torch.bfloat16
        quantization_config = None
        if bnb:  # the family decides what stays float
            adapter = family(load_base_config(resolve_model_path(name_or_path)).model_type)
            quantization_config = bnb_config(mode, adapter, dtype)
        model = Self1eModel.from_pretrained(name_or_path, config=config, dtype=dtype,
                                            attn_implementation=attn_implementation,
                                            device=(device or "cuda") if bnb else device, new_head=new_head,
                                            quantization_config=quantization_config)
        return _quantized(model, mode)
    if mode in GPU_MODES:
        raise ValueError(f"quantize={mode!r} quantizes while transformers loads a checkpoint folder; {name_or_path} is "
                         "built in memory: save it with save_pretrained and load that folder")
    if tiny is not None:
        base, tokenizer = build_tiny_base(tiny, seed=seed)
    else:
        base, tokenizer = build_random_base(random_config, seed=seed, dtype=dtype)
    base.set_attn_implementation(attn_implementation)
    model = Self1eModel.from_base(base, tokenizer, resolve_settings(None, config))
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return _quantized(model.eval(), mode)


def build_random_base(config_path: str, seed: int = 0, dtype: torch.dtype | None = None):
    """A randomly initialised model at the shapes of a real checkpoint's ``config.json`` (a folder
    holding one, or the file itself; any supported family) and the tiny tokenizer (without ``[SEG]``):
    the image token ids are remapped to the tokenizer's, the vocabulary keeps the config's size.
    ``dtype`` builds the weights directly in it (a 2B model in bfloat16 never exists in float32)."""
    path = Path(config_path)
    folder = path.parent if path.name == "config.json" else path
    if not (folder / "config.json").is_file():
        raise ValueError(f"{RANDOM_PREFIX}{config_path}: no config.json there (expected a model's config.json or "
                         "a folder holding one, e.g. configs/models/internvl3-2b-hf)")
    config = load_base_config(folder)
    tokenizer = tokenizer_for(config.model_type)
    if config.text_config.vocab_size < len(tokenizer):
        raise ValueError(f"{folder / 'config.json'}: text_config.vocab_size {config.text_config.vocab_size} is below "
                         f"the tiny tokenizer's {len(tokenizer)} tokens")
    point_image_tokens(config, tokenizer)
    torch.manual_seed(seed)
    base = family(config.model_type).classes()[1]._from_config(config, dtype=dtype or torch.float32)
    return base.eval(), tokenizer


def _quantized(model: Self1eModel, mode: str | None) -> Self1eModel:
    """``model`` converted to int8 (``int8``, ``int8-vit``) or marked as loaded by bitsandbytes."""
    if mode in CPU_MODES:
        quantize_int8(model, mode)
    elif mode is not None:
        model.quantization = mode
    return model
