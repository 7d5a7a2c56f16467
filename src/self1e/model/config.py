"""Self1eConfig: the SELF1E-specific settings layered over an InternVL checkpoint's own config."""
from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

MASK_HEADS = ("compressed", "hq", "rfr", "rfa")
SEG_ATTENTIONS = ("causal", "bidirectional")
CONFIG_NAME = "self1e_config.json"
MAX_TILES = 64  # InternVL uses up to 12 (40 at most); the tile search is quadratic in this
MAX_LOSS_SHORT_SIDE = 4096
_KINDS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}

# Our prompt format: LISA's question and answer templates, no system turn.
SEG_QUESTIONS = (
    "Can you segment the {x} in this image?",
    "Please segment the {x} in this image.",
    "What is {x} in this image? Please respond with segmentation mask.",
    "What is {x} in this image? Please output segmentation mask.",
)
SENTENCE_QUESTION = "{x} Please output segmentation mask."
SEG_ANSWERS = ("It is [SEG].", "Sure, [SEG].", "Sure, it is [SEG].", "Sure, the segmentation result is [SEG].",
               "[SEG].")
INFERENCE_ANSWER = "[SEG]."


@dataclass(frozen=True)
class PromptFormat:
    """How a checkpoint is asked for a mask: saved with its settings, so every checkpoint is prompted
    the way it was trained. Training draws a question and an answer template per sample; inference
    and evaluation use the first question and ``inference_answer`` (teacher-forced).

    A template holds ``{x}`` where the expression goes; a template saying "the {x}" drops a leading
    "the " of the expression (no "the the"). ``lowercase`` lower-cases the expression first."""

    system: str = ""  # the system turn's text; empty = no system turn
    questions: tuple[str, ...] = SEG_QUESTIONS
    sentence_question: str = SENTENCE_QUESTION  # for full-sentence expressions (more than 3 words ending in .?!)
    answers: tuple[str, ...] = SEG_ANSWERS
    inference_answer: str = INFERENCE_ANSWER
    lowercase: bool = False

    def __post_init__(self) -> None:
        for name in ("questions", "answers"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, value := tuple(value))
            if not (isinstance(value, tuple) and value and all(isinstance(t, str) for t in value)):
                raise ValueError(f"prompt setting '{name}': expected a non-empty list of strings, got {value!r}")
        for name in ("system", "sentence_question", "inference_answer"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"prompt setting '{name}': expected a string, got {getattr(self, name)!r}")
        if not isinstance(self.lowercase, bool):
            raise ValueError(f"prompt setting 'lowercase': expected true or false, got {self.lowercase!r}")
        for template in (*self.questions, self.sentence_question):
            rest = template.replace("{x}", "", 1)
            if "{x}" not in template or "{" in rest or "}" in rest:
                raise ValueError(f"prompt question template {template!r} must hold {{x}} exactly once "
                                 "and no other braces")
        for answer in (*self.answers, self.inference_answer):
            if answer.count("[SEG]") != 1:
                raise ValueError(f"prompt answer template {answer!r} must hold [SEG] exactly once")

    @classmethod
    def from_dict(cls, d: Any) -> PromptFormat:
        if not isinstance(d, dict):
            raise ValueError(f"SELF1E setting 'prompt': expected a mapping, got {d!r}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown prompt settings: {sorted(unknown)}")
        return cls(**d)


AUTHORS_PROMPT = PromptFormat(
    system="You are an helpful assistant.",
    questions=(" What is {x} in this image? Please output segmentation mask.",),
    sentence_question=" {x} Please output segmentation mask.",
    answers=("[SEG].",),
    inference_answer="[SEG].",
    lowercase=True,
)
"""The SELF1E authors' training and evaluation prompt: their system turn (spelled as they spell it),
one question with its leading space (after the image's newline), expressions lower-cased. Their
models also take no thumbnail tile (``use_thumbnail=False``)."""
PROMPT_PRESETS = {"self1e": PromptFormat(), "authors": AUTHORS_PROMPT}


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
    isolate_objects: bool = True  # an answer's k-th [SEG] reads only its own part of the answer (seg_attention_mask)
    max_tiles: int = 1  # 1 = one tile per image; >1 = dynamic tiling (InternVL's; SmolVLM: isqrt per side)
    use_thumbnail: bool = True  # with several tiles, also feed InternVL's global thumbnail tile to the LLM
    prompt: PromptFormat = field(default_factory=PromptFormat)  # system turn, templates, casing

    def __post_init__(self) -> None:
        """Every field is checked by type (an int is taken for a float field) and range; a ValueError
        names the field."""
        if isinstance(self.prompt, str) and self.prompt in PROMPT_PRESETS:  # "authors" or "self1e"
            object.__setattr__(self, "prompt", PROMPT_PRESETS[self.prompt])
        if isinstance(self.prompt, dict):
            object.__setattr__(self, "prompt", PromptFormat.from_dict(self.prompt))
        for name, tp in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            if tp is PromptFormat:
                if not isinstance(value, PromptFormat):
                    raise ValueError(f"SELF1E setting 'prompt': expected a mapping or one of "
                                     f"{sorted(PROMPT_PRESETS)}, got {value!r}")
                continue
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
        """The settings as JSON-shaped data (the prompt format a nested mapping with lists)."""
        d = asdict(self)
        d["prompt"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["prompt"].items()}
        return d

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
        """``["seg_attention=causal", "self1e.mask_head=rfr", "prompt=authors", "prompt.lowercase=true"]``
        -> a mapping of field overrides (values read as YAML scalars; the ``self1e.`` prefix is
        optional; ``prompt.FIELD`` sets one field of the prompt format). Unknown fields are errors."""
        import yaml

        known = {f.name for f in fields(cls)}
        prompt_known = {f.name for f in fields(PromptFormat)}
        out: dict[str, Any] = {}
        for item in items:
            key, sep, raw = item.partition("=")
            key = key.strip().removeprefix("self1e.")
            if not sep or not key:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. seg_attention=causal")
            head, _, sub = key.partition(".")
            if head not in known or (sub and (head != "prompt" or sub not in prompt_known)):
                raise ValueError(f"--set {item!r}: unknown SELF1E setting {key!r}; known: {', '.join(sorted(known))}"
                                 f" and prompt.{{{', '.join(sorted(prompt_known))}}}")
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
            if sub:
                prompt = out.get("prompt")
                out["prompt"] = {**(prompt if isinstance(prompt, dict) else {}), sub: value}
            else:
                out[key] = value
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
