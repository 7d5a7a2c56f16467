"""Checkpoint folders on disk: find them, read their parts, write them. Safetensors only, strict key
checks, clear errors. Knows nothing of :class:`Self1eModel` (which builds on it).

A self1e checkpoint folder = a transformers ``-hf`` folder of a supported backbone family (InternVL,
Qwen2.5-VL, Qwen3-VL: config.json, model.safetensors, tokenizer files) + ``self1e_config.json`` +
``mask_head.safetensors``. ``default`` names the shipped model.

Rules: ``config.json`` must be a JSON object of a supported ``model_type`` whose fields have the right
types and whose sizes are positive (errors name the file and the field); weights are read from
safetensors only (a folder with only pickle weights, ``pytorch_model.bin`` / ``*.pt`` / ..., is
refused before anything is loaded: a pickle can run code); the tokenizer of a self1e checkpoint
must already hold its segmentation token (a plain InternVL folder gets it added by the model).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from self1e.model.backbones import family
from self1e.model.config import CONFIG_NAME, Self1eConfig
from self1e.model.tiny import tiny_names

HEAD_WEIGHTS = "mask_head.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Sizes in config.json that must be positive whole numbers, per family and sub-config ("" is the top level).
_TEXT = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "max_position_embeddings")
_VIT = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")
_QWEN_VIT = ("hidden_size", "intermediate_size", "depth", "num_heads", "patch_size", "spatial_merge_size",
             "out_hidden_size")
POSITIVE_FIELDS = {
    "internvl": {"": ("image_seq_length",), "text_config": _TEXT, "vision_config": _VIT},
    "qwen2_5_vl": {"text_config": _TEXT, "vision_config": _QWEN_VIT},
    "qwen3_vl": {"text_config": _TEXT, "vision_config": _QWEN_VIT},
    "smolvlm": {"": ("scale_factor",), "text_config": _TEXT, "vision_config": _VIT},
}
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_model"
TINY_PREFIX = "tiny:"
RANDOM_PREFIX = "random:"  # random:PATH, random weights at the shapes of PATH/config.json


def model_names() -> list[str]:
    """The names a model argument accepts besides a folder: the shipped model and the tiny family."""
    return ["default", *(TINY_PREFIX + n for n in tiny_names())]


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
    """The SELF1E settings a self1e checkpoint folder was saved with; None for a plain ``-hf`` folder."""
    return Self1eConfig.load(path) if (path / CONFIG_NAME).is_file() else None


def _field_path(raw: dict[str, Any], name: str, message: str) -> str:
    """The dotted place of field ``name`` in a config.json; where several sub-configs have it, the
    one whose value the error ``message`` quotes."""
    places = [(name, raw[name])] if name in raw else []
    places += [(f"{sub}.{name}", node[name]) for sub, node in raw.items() if isinstance(node, dict) and name in node]
    quoted = [(p, value) for p, value in places if f"(value: {value!r})" in message]
    chosen = quoted or places
    return " or ".join(p for p, _ in chosen) if chosen else name


def _check_sizes(config, file: Path) -> None:
    for sub, names in POSITIVE_FIELDS[config.model_type].items():
        node = getattr(config, sub) if sub else config
        for name in names:
            value = getattr(node, name, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            if value is not None and not all(type(v) is int and v > 0 for v in values):
                where = f"{sub}.{name}" if sub else name
                raise ValueError(f"{file}: field '{where}' must be a positive whole number, got {value!r}")
    vocab, token = config.text_config.vocab_size, config.image_token_id
    if type(token) is not int or not 0 <= token < vocab:
        raise ValueError(f"{file}: field 'image_token_id' must be a token id below text_config.vocab_size "
                         f"({vocab}), got {token!r}")


def load_base_config(path: Path):
    """The checked config of a model folder of a supported family (see the module docstring);
    ValueError names ``config.json`` and the field."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub: transformers raises TypeError / ValueError itself
        StrictDataclassError = TypeError  # noqa: N806
    file = path / "config.json"
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    except OSError as e:
        raise ValueError(f"cannot read {file}: {e.strerror or e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a JSON object of config fields, got {type(raw).__name__}")
    backbone = family(raw.get("model_type"), str(file))
    for sub in ("text_config", "vision_config"):
        if not isinstance(raw.get(sub), dict):
            raise ValueError(f"{file}: field '{sub}': expected an object of fields, got {raw.get(sub)!r:.80}")
    config_class, _ = backbone.classes()
    try:
        config = config_class.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, StrictDataclassError) as e:
        message = " ".join(str(e).split())
        named = re.search(r"field '(\w+)'", message)
        where = f"field '{_field_path(raw, named.group(1), message)}': " if named else ""
        raise ValueError(f"{file}: not a valid {config_class.__name__}: {where}{message}") from None
    _check_sizes(config, file)
    return config


def check_weight_files(path: Path) -> None:
    """A folder must hold its base weights as safetensors; one with only pickle weights
    (``pytorch_model.bin``, ``*.pt``, ...) is refused without opening them."""
    if any(p.name != HEAD_WEIGHTS for p in path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{path} holds its weights only as pickle files ({', '.join(pickles[:3])}), which are "
                         "never loaded: a pickle can run any code. Convert them to safetensors (save_pretrained "
                         "with safe_serialization=True, in an environment you trust)")
    raise ValueError(f"{path}: no model.safetensors (the weights must be in safetensors files)")


def load_base(path: Path, dtype: torch.dtype | None, attn_implementation: str, quantization_config=None,
              device: str | torch.device | None = None):
    """The base model of a folder (its family's transformers class), loaded strictly (missing /
    unexpected / mismatched keys are errors) from safetensors only. With ``quantization_config``
    (bitsandbytes) the weights are quantized as they load onto ``device`` (default ``cuda``);
    without, ``device`` is not used."""
    config = load_base_config(path)
    _, model_class = family(config.model_type).classes()
    check_weight_files(path)
    quantized = {} if quantization_config is None else {
        "quantization_config": quantization_config, "device_map": {"": str(device or "cuda")}}
    try:
        base, info = model_class.from_pretrained(
            path, config=config, dtype=dtype or torch.float32, attn_implementation=attn_implementation,
            output_loading_info=True, use_safetensors=True, **quantized)
    except (OSError, RuntimeError, SafetensorError, ValueError) as e:
        raise ValueError(f"cannot load the weights in {path}: {e}") from None
    missing = [k for k in info.get("missing_keys", []) if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    bad = {k: v for k, v in (("missing", missing), ("unexpected", info.get("unexpected_keys", [])),
                              ("mismatched", info.get("mismatched_keys", []))) if v}
    if bad:
        raise ValueError(f"weights in {path} do not match its config.json: {bad}")
    return base


def load_tokenizer(path: Path, require_seg_token: bool | None = None):
    """The folder's tokenizer. With ``require_seg_token`` (default: when the folder is a self1e
    checkpoint, i.e. has ``self1e_config.json``) it must already hold the checkpoint's segmentation
    token: the mask head was trained on that token, and a fresh one would be untrained. A plain
    InternVL folder's tokenizer gets the token added by the model."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"cannot load the tokenizer in {path}: {e}") from None
    settings = saved_settings(path)
    required = settings is not None if require_seg_token is None else require_seg_token
    if required:
        seg = (settings or Self1eConfig()).seg_token
        if seg not in tokenizer.get_vocab():
            raise ValueError(f"{path} is a self1e checkpoint, but its tokenizer has no {seg!r} token (the one the "
                             f"mask head was trained on): the tokenizer files do not belong to it. (A plain InternVL "
                             f"folder, without {CONFIG_NAME}, gets a new {seg}.)")
    return tokenizer


def load_head(head: nn.Module, path: Path, mask_head: str) -> None:
    """Fill ``head`` from ``path/mask_head.safetensors``; every key must fit exactly."""
    try:
        state = load_file(path / HEAD_WEIGHTS)
    except (OSError, SafetensorError) as e:
        raise ValueError(f"cannot load {path / HEAD_WEIGHTS}: {e}") from None
    result = head.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path / HEAD_WEIGHTS} does not fit mask_head={mask_head!r}: "
                         f"missing {result.missing_keys}, unexpected {result.unexpected_keys} (to keep the "
                         "checkpoint's backbone with a fresh head of another rung, load with new_head=True; "
                         "in training, new_head: true)")


def save_folder(base, tokenizer, head: nn.Module, config: Self1eConfig, directory: Path) -> None:
    """Write a self1e checkpoint folder; tensors shared between modules are saved once."""
    directory.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, directory / HEAD_WEIGHTS)
    config.save(directory)
