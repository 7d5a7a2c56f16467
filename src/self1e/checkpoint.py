"""Loading and saving models: safetensors only, strict key checks, clear errors.

A self1e checkpoint folder = an InternVL ``-hf`` folder (config.json, model.safetensors, tokenizer
files) + ``self1e_config.json`` + ``mask_head.safetensors``. ``default`` names the shipped model.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model.config import CONFIG_NAME, Self1eConfig

log = logging.getLogger(__name__)
HEAD_WEIGHTS = "mask_head.safetensors"
DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"


def resolve_model_path(path: str | Path) -> Path:
    """``"default"`` -> the shipped model; otherwise the folder itself, which must exist."""
    if str(path) == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise ValueError(f"the default model is not installed at {DEFAULT_MODEL_DIR}")
        return DEFAULT_MODEL_DIR
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"model folder not found: {p}")
    if not (p / "config.json").is_file():
        raise ValueError(f"{p} is not a model folder: config.json is missing")
    return p


def _load_base(path: Path, dtype, attn_implementation: str):
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    try:
        config = InternVLConfig.from_pretrained(path)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / 'config.json'}: not a valid InternVL config ({e})") from None
    if config.model_type != "internvl":
        raise ValueError(f"{path}: model_type is {config.model_type!r}, expected 'internvl' (a transformers -hf checkpoint)")
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


def load_model(cls, path: Path, config: Self1eConfig | None, dtype, attn_implementation: str, device):
    """See :meth:`Self1eModel.from_pretrained`."""
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    is_self1e = (path / CONFIG_NAME).is_file()
    if is_self1e and config is None:
        config = Self1eConfig.load(path)
    base = _load_base(path, dtype, attn_implementation)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer in {path}: {e}") from None
    model = cls(base, tokenizer, config or Self1eConfig())
    if is_self1e:
        try:
            state = load_file(path / HEAD_WEIGHTS)
        except (OSError, SafetensorError) as e:
            raise ValueError(f"cannot load {path / HEAD_WEIGHTS}: {e}") from None
        result = model.head.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{path / HEAD_WEIGHTS} does not fit mask_head={model.config.mask_head!r}: "
                             f"missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    else:
        log.info("loaded a plain InternVL checkpoint from %s: added %s and fresh mask heads", path, model.config.seg_token)
    if device is not None:
        model.to(device)
    return model.eval()


def save_model(model, directory: Path) -> None:
    """Write a self1e checkpoint folder; tensors shared between modules are saved once."""
    directory.mkdir(parents=True, exist_ok=True)
    model.base.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, directory / HEAD_WEIGHTS)
    model.config.save(directory)
