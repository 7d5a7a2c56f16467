"""Checkpoint folders on disk: find them, read their parts, write them. Safetensors only, strict key
checks, clear errors. Knows nothing of :class:`Self1eModel` (which builds on it).

A self1e checkpoint folder = an InternVL ``-hf`` folder (config.json, model.safetensors, tokenizer
files) + ``self1e_config.json`` + ``mask_head.safetensors``. ``default`` names the shipped model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from self1e.model.config import CONFIG_NAME, Self1eConfig
from self1e.model.tiny import TINY_SPECS

HEAD_WEIGHTS = "mask_head.safetensors"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_model"
TINY_PREFIX = "tiny:"


def model_names() -> list[str]:
    """The names a model argument accepts besides a folder: the shipped model and the tiny family."""
    return ["default", *(TINY_PREFIX + n for n in TINY_SPECS)]


def resolve_model_path(name_or_path: str | Path) -> Path:
    """``"default"`` -> the shipped model's folder; otherwise the folder itself, which must hold a
    config.json. The error for anything else lists what exists."""
    if str(name_or_path) == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise ValueError(f"the default model is not installed at {DEFAULT_MODEL_DIR}")
        return DEFAULT_MODEL_DIR
    p = Path(name_or_path)
    if not p.is_dir():
        raise ValueError(f"model {str(name_or_path)!r} not found: it is neither a folder nor one of the "
                         f"names {', '.join(model_names())}")
    if not (p / "config.json").is_file():
        raise ValueError(f"{p} is not a model folder: config.json is missing")
    return p


def saved_settings(path: Path) -> Self1eConfig | None:
    """The SELF1E settings a self1e checkpoint folder was saved with; None for a plain InternVL folder."""
    return Self1eConfig.load(path) if (path / CONFIG_NAME).is_file() else None


def load_base(path: Path, dtype: torch.dtype | None, attn_implementation: str):
    """The InternVL model of a folder, loaded strictly (missing / unexpected / mismatched keys are errors)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    try:
        config = InternVLConfig.from_pretrained(path)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / 'config.json'}: not a valid InternVL config ({e})") from None
    if config.model_type != "internvl":
        raise ValueError(f"{path}: model_type is {config.model_type!r}, expected 'internvl' "
                         "(a transformers -hf checkpoint)")
    try:
        base, info = InternVLForConditionalGeneration.from_pretrained(
            path, dtype=dtype or torch.float32, attn_implementation=attn_implementation, output_loading_info=True)
    except (OSError, RuntimeError, SafetensorError, ValueError) as e:
        raise ValueError(f"cannot load the weights in {path}: {e}") from None
    missing = [k for k in info.get("missing_keys", []) if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    bad = {k: v for k, v in (("missing", missing), ("unexpected", info.get("unexpected_keys", [])),
                              ("mismatched", info.get("mismatched_keys", []))) if v}
    if bad:
        raise ValueError(f"weights in {path} do not match its config.json: {bad}")
    return base


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer in {path}: {e}") from None


def load_head(head: nn.Module, path: Path, mask_head: str) -> None:
    """Fill ``head`` from ``path/mask_head.safetensors``; every key must fit exactly."""
    try:
        state = load_file(path / HEAD_WEIGHTS)
    except (OSError, SafetensorError) as e:
        raise ValueError(f"cannot load {path / HEAD_WEIGHTS}: {e}") from None
    result = head.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path / HEAD_WEIGHTS} does not fit mask_head={mask_head!r}: "
                         f"missing {result.missing_keys}, unexpected {result.unexpected_keys}")


def save_folder(base, tokenizer, head: nn.Module, config: Self1eConfig, directory: Path) -> None:
    """Write a self1e checkpoint folder; tensors shared between modules are saved once."""
    directory.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, directory / HEAD_WEIGHTS)
    config.save(directory)
