"""TrainConfig: every training setting in one frozen, typed dataclass tree.

Resolution order: the defaults below (for ``self1e``, those of the checkpoint named by ``model``,
when it is one) <- a YAML file <- ``--set key=value`` overrides (dotted keys,
values parsed as YAML scalars, e.g. ``--set lora.enabled=false --set lr=3e-4``). Unknown keys and
wrongly typed values are errors naming the key. The resolved config is saved as YAML next to the
run, and loading that file gives the same config back.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from self1e.model.config import PROMPT_PRESETS, PromptFormat, Self1eConfig
from self1e.model.registry import saved_settings_of

LLM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# transformers' InternVL vision layers: attention.{q,k,v}_proj (the original "qkv", split),
# attention.projection_layer (the original "proj"), mlp.fc1, mlp.fc2.
VIT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2")


@dataclass(frozen=True)
class DataSpec:
    """One dataset of the training mix."""

    spec: str  # a JSONL path or a named dataset spec understood by self1e.data.datasets.load_dataset
    ratio: float = 1.0  # relative sampling weight in the mix (mix.mode ratio; any positive number)
    kinds: tuple[str, ...] | None = None  # keep only samples whose `kind` is listed (None: all)
    group: str | None = None  # the mix group it belongs to (mix.mode repeat), e.g. sem_seg, refer_seg, vqa
    max_images: int | None = None  # keep a random subset of this many images (seeded by the run's seed)
    ignore_as_background: bool = False  # train on ignore regions as background (the authors do, for ReasonSeg)

    def __post_init__(self) -> None:
        if not self.spec.strip():
            raise ValueError("config key 'data': a dataset spec is empty")
        if not (math.isfinite(self.ratio) and self.ratio > 0):
            raise ValueError(f"config key 'data' ({self.spec}): ratio must be a finite number > 0, got {self.ratio}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"config key 'data' ({self.spec}): max_images must be >= 1 or null, "
                             f"got {self.max_images}")


MIX_MODES = ("ratio", "repeat")


@dataclass(frozen=True)
class MixSettings:
    """How the sources are mixed. ``ratio``: every micro-batch slot draws a source by its ratio.
    ``repeat`` (the SELF1E authors' scheme): each group's units are repeated ``repeats[i]`` times,
    the groups concatenated in ``groups`` order and shuffled, and the first unit of every
    micro-batch replaced by a random segmentation unit. Both guarantee one segmentation unit per
    micro-batch."""

    mode: str = "ratio"
    groups: tuple[str, ...] = ()  # repeat mode: the group names, in concatenation order
    repeats: tuple[int, ...] = ()  # repeat mode: an integer repeat factor per group (0 leaves a group out)

    def __post_init__(self) -> None:
        if self.mode not in MIX_MODES:
            raise ValueError(f"config key 'mix.mode' must be one of {MIX_MODES}, got {self.mode!r}")
        if self.mode == "repeat":
            if not self.groups or len(self.groups) != len(self.repeats):
                raise ValueError("config keys 'mix.groups' and 'mix.repeats' need one repeat factor per group, "
                                 f"got {list(self.groups)} and {list(self.repeats)}")
            if len(set(self.groups)) != len(self.groups):
                raise ValueError(f"config key 'mix.groups' names a group twice: {list(self.groups)}")
            if any(r < 0 for r in self.repeats) or not any(self.repeats):
                raise ValueError(f"config key 'mix.repeats' must be whole numbers >= 0, not all 0, "
                                 f"got {list(self.repeats)}")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the base model; with ``enabled: false`` every parameter trains."""

    enabled: bool = True  # LoRA adapters on the LLM and the ViT, everything else frozen except train_full
    r: int = 128  # adapter rank
    alpha: int = 256  # scaling numerator (scale = alpha / r); the reference hard-wired 2r
    dropout: float = 0.05  # dropout on the adapters' input
    llm_targets: tuple[str, ...] = LLM_LORA_TARGETS  # Linear names inside the language model's layers
    # Linear names inside the vision tower's layers; this default (InternVL's) means the backbone's own
    # (Qwen2.5-VL: qkv, proj, gate_proj, up_proj, down_proj; Qwen3-VL: qkv, proj, linear_fc1, linear_fc2)
    vit_targets: tuple[str, ...] = VIT_LORA_TARGETS
    # Modules of the base model (names relative to its ...ForConditionalGeneration) trained in full
    # next to the adapters ("modules_to_save"); the SELF1E mask head always trains in full.
    # "model.multi_modal_projector" stands for the backbone's compression (Qwen-VL: model.visual.merger).
    train_full: tuple[str, ...] = ("model.multi_modal_projector", "lm_head", "model.language_model.embed_tokens")

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ValueError(f"config keys 'lora.r' and 'lora.alpha' must be >= 1, got {self.r} and {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"config key 'lora.dropout' must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Steps are optimizer steps; a micro-batch is ``batch_size`` images per process."""

    # -- model
    model: str = "tiny:small"  # a folder (InternVL -hf or self1e checkpoint), "default", or tiny:<name> (random init)
    self1e: Self1eConfig = field(default_factory=Self1eConfig)  # SELF1E settings (mask head rung, loss weights, ...)
    attn_implementation: str = "sdpa"  # sdpa | eager
    image_size: int | None = None  # train at this tile size: the ViT position embeddings are resampled (None: keep)
    new_head: bool = False  # from a self1e checkpoint: keep its backbone and LLM, start a fresh mask head
    add_llm_layers: int = 0  # append this many decoder layers, each the identity at first, to the LLM (more depth)
    add_vit_layers: int = 0  # the same for the vision encoder (InternVL)
    # -- data
    data: tuple[DataSpec, ...] = ()  # the training mix; at least one segmentation sample per micro-batch
    mix: MixSettings = field(default_factory=MixSettings)  # how the sources are mixed (ratio or repeat)
    val: str | None = None  # validation dataset spec for periodic cIoU / gIoU (None: no evaluation)
    val_limit: int | None = 200  # evaluate on the first N validation samples (None: all of them)
    eval_batch_size: int = 8  # images per evaluation forward pass
    batch_size: int = 2  # images per micro-batch per process (the paper's global batch = this x grad_accum x processes)
    expressions_per_image: int = 3  # K: up to K expressions of one image share its pixel values in a step
    num_workers: int = 0  # DataLoader worker processes for image loading (0: in the training process)
    # -- length
    epochs: float = 1.0  # passes over the mix (an epoch = as many image units as the datasets hold)
    max_steps: int | None = None  # total optimizer steps; overrides epochs and defines the LR schedule
    stop_at: int | None = None  # stop cleanly (checkpoint + final export) at this step without changing the schedule
    max_minutes: float | None = None  # time budget of this process: stop cleanly (checkpoint + export) when spent
    # -- optimisation
    lr: float = 1e-4  # peak learning rate (AdamW)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 0.0  # AdamW decoupled weight decay, on matrices only (not biases, norms, embeddings)
    warmup_steps: int = 100  # linear warm-up from 0, then linear decay to 0 at the last step
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    bf16: bool = True  # bf16 autocast on CUDA; ignored on CPU (always float32 there)
    cpu_threads: int | None = None  # torch.set_num_threads on CPU-only runs (None: torch's default)
    gradient_checkpointing: bool = False  # recompute LLM / ViT layer activations in the backward pass
    lora: LoraSettings = field(default_factory=LoraSettings)
    # -- bookkeeping
    log_every: int = 10  # steps between metrics.jsonl lines
    eval_every: int = 0  # steps between validations (0: only at the end, when val is set)
    save_every: int = 500  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    seed: int = 0  # seeds the tiny model's init, the data order, templates and dropout
    out: str = "runs/self1e"  # output folder (the CLI's --out overrides it)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # inf / NaN in any float (lr=inf would train to NaN weights)
            value = getattr(self, f.name)
            for x in value if isinstance(value, tuple) else (value,):
                if isinstance(x, float) and not math.isfinite(x):
                    raise ValueError(f"config key '{f.name}' must be a finite number, got {value}")
        positive = ("eval_batch_size", "batch_size", "expressions_per_image", "grad_accum")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"config key '{name}' must be >= 1, got {getattr(self, name)}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"config key 'cpu_threads' must be >= 1 or null, got {self.cpu_threads}")
        for name in ("num_workers", "warmup_steps", "log_every", "eval_every", "save_every", "keep_checkpoints",
                     "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"config key '{name}' must be >= 0, got {getattr(self, name)}")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError(f"config key 'epochs' must be > 0 (or set max_steps), got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"config key 'max_steps' must be >= 1, got {self.max_steps}")
        if not self.lr > 0:
            raise ValueError(f"config key 'lr' must be > 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"config key 'betas' must be two numbers in [0, 1), got {list(self.betas)}")
        for name in ("image_size", "stop_at"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"config key '{name}' must be >= 1 or null, got {getattr(self, name)}")
        for name in ("add_llm_layers", "add_vit_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"config key '{name}' must be >= 0, got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes < 0:
            raise ValueError(f"config key 'max_minutes' must be >= 0 or null, got {self.max_minutes}")
        if self.mix.mode == "repeat":
            for d in self.data:
                if d.group not in self.mix.groups:
                    raise ValueError(f"config key 'data' ({d.spec}): group {d.group!r} is not one of mix.groups "
                                     f"{list(self.mix.groups)} (mix.mode repeat needs a group per dataset)")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError("config key 'attn_implementation' must be sdpa or eager, "
                             f"got {self.attn_implementation!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready data (tuples as lists)."""
        return _plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ---- loading -------------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), **fields_: Any) -> TrainConfig:
    """Defaults <- YAML file ``path`` <- ``overrides`` ("dotted.key=value") <- keyword fields.

    When ``model`` names a self1e checkpoint, its own SELF1E settings replace the defaults of the
    ``self1e`` block, so the file and ``--set`` override single fields on top of them."""
    layers: list[tuple[dict[str, Any], str]] = []
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys at the top level")
        layers.append((loaded, f" in {path}"))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value")
        layers.append((_nest(key.strip(), _parse_scalar(raw)), f" (--set {item})"))
    if fields_:
        layers.append((fields_, ""))

    def merged(self1e_defaults: Self1eConfig) -> dict[str, Any]:
        tree = TrainConfig(self1e=self1e_defaults).to_dict()
        for layer, where in layers:
            _merge(tree, layer, prefix="", where=where)
        return tree

    tree = merged(Self1eConfig())
    if isinstance(tree.get("model"), str):
        inherited = saved_settings_of(tree["model"])
        if inherited is not None:
            tree = merged(inherited)
    return build(TrainConfig, tree, prefix="")


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _merge(tree: dict[str, Any], new: dict[str, Any], prefix: str, where: str) -> None:
    """Merge ``new`` into ``tree`` in place; keys must exist in ``tree`` (the defaults' shape)."""
    for key, value in new.items():
        name = f"{prefix}{key}"
        if key not in tree:
            close = ", ".join(sorted(tree))
            raise ValueError(f"unknown config key '{name}'{where}; known keys here: {close}")
        if isinstance(tree[key], dict) and isinstance(value, dict):
            _merge(tree[key], value, f"{name}.", where)
        else:
            tree[key] = value


def build(cls: type, tree: Any, prefix: str) -> Any:
    """Make dataclass ``cls`` from plain data, checking keys and types; errors name the dotted key."""
    if not isinstance(tree, dict):
        raise ValueError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in known:
            raise ValueError(f"unknown config key '{prefix}{key}'; known keys here: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in tree.items()}
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if tp is DataSpec and isinstance(value, str):  # "path.jsonl" is short for {spec: path.jsonl}
            value = {"spec": value}
        if tp is PromptFormat and isinstance(value, str) and value in PROMPT_PRESETS:  # "authors"
            value = dataclasses.asdict(PROMPT_PRESETS[value])
        return build(tp, value, f"{key}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{key}': expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"config key '{key}': expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config key '{key}': unsupported type {tp}")
    raise ValueError(f"config key '{key}': expected {getattr(tp, '__name__', tp)}, got {value!r}")
