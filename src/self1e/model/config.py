"""Self1eConfig: the SELF1E-specific settings layered over an InternVL checkpoint's own config."""
from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

MASK_HEADS = ("compressed", "hq", "rfr", "rfa")
SEG_ATTENTIONS = ("causal", "bidirectional")
CONFIG_NAME = "self1e_config.json"
MAX_TILES = 64  # InternVL uses up to 12 (40 at most); the tile search is quadratic in this
MAX_LOSS_SHORT_SIDE = 4096
_KINDS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


@dataclass(frozen=True)
class Self1eConfig:
    """What SELF1E adds to an InternVL model. Everything about the backbone stays in its config.json."""

    mask_head: str = "rfa"  # ablation rung: compressed (16x16 per tile) | hq, rfr (32x32) | rfa (64x64)
    seg_attention: str = "bidirectional"  # attention inside LLM rows that hold [SEG]: causal | bidirectional
    seg_token: str = "[SEG]"  # the single segmentation token added to the vocabulary
    ce_weight: float = 1.0  # language-model cross-entropy on the answer tokens
    bce_weight: float = 2.0  # per-pixel binary cross-entropy on mask logits
    dice_weight: float = 0.5  # soft Dice on sigmoid probabilities
    aux_weight: float = 1.0  # weight of the low-resolution auxiliary head's loss (rfa only)
    loss_short_side: int = 128  # ground truth and logits are compared with this short side
    causal_lm_loss: bool = True  # LM loss from a causal pass, so the [SEG] decision cannot leak (README, "Training")
    max_tiles: int = 1  # 1 = one tile per image; >1 = InternVL dynamic tiling, stitched before the head
    use_thumbnail: bool = True  # with several tiles, also feed InternVL's global thumbnail tile to the LLM

    def __post_init__(self) -> None:
        """Every field is checked by type (an int is taken for a float field) and range; a ValueError
        names the field."""
        for name, tp in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
            if tp is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
                ok = True
            if not ok:
                raise ValueError(f"SELF1E setting '{name}': expected {_KINDS[tp]}, got {value!r}")
        if self.mask_head not in MASK_HEADS:
            raise ValueError(f"SELF1E setting 'mask_head' must be one of {MASK_HEADS}, got {self.mask_head!r}")
        if self.seg_attention not in SEG_ATTENTIONS:
            raise ValueError(f"SELF1E setting 'seg_attention' must be one of {SEG_ATTENTIONS}, "
                             f"got {self.seg_attention!r}")
        if not self.seg_token.strip():
            raise ValueError("SELF1E setting 'seg_token' must not be empty")
        for name in ("ce_weight", "bce_weight", "dice_weight", "aux_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"SELF1E setting '{name}' must be a finite number >= 0, got {getattr(self, name)}")
        if not 1 <= self.max_tiles <= MAX_TILES:
            raise ValueError(f"SELF1E setting 'max_tiles' must be between 1 and {MAX_TILES}, got {self.max_tiles}")
        if not 1 <= self.loss_short_side <= MAX_LOSS_SHORT_SIDE:
            raise ValueError(f"SELF1E setting 'loss_short_side' must be between 1 and {MAX_LOSS_SHORT_SIDE}, "
                             f"got {self.loss_short_side}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Self1eConfig:
        if not isinstance(d, dict):
            raise ValueError(f"expected a mapping of SELF1E settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Self1eConfig fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def parse_overrides(cls, items: list[str] | tuple[str, ...]) -> dict:
        """``["seg_attention=causal", "self1e.mask_head=rfr"]`` -> a mapping of field overrides
        (values read as YAML scalars; the ``self1e.`` prefix is optional). Unknown fields are errors."""
        import yaml

        known = {f.name for f in fields(cls)}
        out = {}
        for item in items:
            key, sep, raw = item.partition("=")
            key = key.strip().removeprefix("self1e.")
            if not sep or not key:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. seg_attention=causal")
            if key not in known:
                raise ValueError(f"--set {item!r}: unknown SELF1E setting {key!r}; known: {', '.join(sorted(known))}")
            try:
                out[key] = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                out[key] = raw
        return out

    def save(self, directory: str | Path) -> None:
        Path(directory, CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Self1eConfig:
        """The settings in ``directory/self1e_config.json``; any error names the file (and the field)."""
        path = Path(directory, CONFIG_NAME)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
