"""Building a training run's parts from its config: the model with its trainable parameters, the
batch stream, the optimizer and the LR schedule. Pure construction; the loop is in ``train.loop``."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from self1e.data.datasets import load_dataset
from self1e.data.sample import Sample
from self1e.model import Self1eModel, load_model
from self1e.model.backbones import Backbone
from self1e.train.batching import Source, TrainBatches, subsample_images
from self1e.train.config import VIT_LORA_TARGETS, LoraSettings, TrainConfig


def build_model(cfg: TrainConfig) -> Self1eModel:
    """The model ``cfg.model`` names (``tiny:<name>`` initialised from ``cfg.seed``) with the config's
    SELF1E settings, in float32. With ``cfg.image_size`` the ViT is moved to that tile size; with
    ``cfg.add_llm_layers`` / ``cfg.add_vit_layers`` the language model / vision encoder gets that many
    more layers, each the identity at first."""
    model = load_model(cfg.model, config=cfg.self1e, dtype=torch.float32, attn_implementation=cfg.attn_implementation,
                       seed=cfg.seed, new_head=cfg.new_head)
    if cfg.image_size is not None and cfg.image_size != model.processor.image_size:
        model.set_image_size(cfg.image_size)
    if cfg.add_llm_layers:
        model.add_llm_layers(cfg.add_llm_layers, seed=cfg.seed)
    if cfg.add_vit_layers:
        model.add_vit_layers(cfg.add_vit_layers, seed=cfg.seed)
    return model


def lora_scopes(backbone: Backbone) -> dict[str, str]:
    """Config key -> the module names (of the base model) its targets are in."""
    return {"llm_targets": backbone.llm_lora_scope, "vit_targets": backbone.vit_lora_scope}


def for_backbone(lora: LoraSettings, backbone: Backbone) -> LoraSettings:
    """The settings with their InternVL defaults read for this backbone: the default ``vit_targets``
    become the backbone's ViT Linear names, ``model.multi_modal_projector`` in ``train_full`` its
    compression module (Qwen-VL: ``model.visual.merger``) and ``model.language_model.*`` its language
    model's (SmolVLM: ``model.text_model.*``). Explicit values stay as they are."""
    vit = backbone.vit_lora_targets if lora.vit_targets == VIT_LORA_TARGETS else lora.vit_targets
    llm = "model.language_model."
    full = tuple(backbone.projector_path if n == "model.multi_modal_projector"
                 else backbone.language_path + "." + n[len(llm):] if n.startswith(llm) else n
                 for n in lora.train_full)
    return dataclasses.replace(lora, vit_targets=vit, train_full=full)


def lora_target_regex(lora: LoraSettings, backbone: Backbone) -> str:
    """A full-match regex over module names of the base model."""
    parts = [scope + "(" + "|".join(getattr(lora, key)) + ")" for key, scope in lora_scopes(backbone).items()
             if getattr(lora, key)]
    return "|".join(f"(?:{p})" for p in parts)


def check_lora_targets(model: Self1eModel, lora: LoraSettings) -> dict[str, int]:
    """How many modules each LoRA target adapts; ValueError names every target that matches none
    (a typo, or a name of another architecture), which peft would skip without a word."""
    lora = for_backbone(lora, model.backbone)
    names = [n for n, _ in model.base.named_modules()]
    counts, missing = {}, []
    for key, scope in lora_scopes(model.backbone).items():
        for target in getattr(lora, key):
            pattern = re.compile(scope + f"({target})")
            counts[f"{key}.{target}"] = n = sum(bool(pattern.fullmatch(name)) for name in names)
            if not n:
                missing.append(f"lora.{key}: {target!r}")
    if missing:
        raise ValueError(f"LoRA targets that match no module of this {type(model.base).__name__}: "
                         f"{', '.join(missing)}")
    return counts


def configure_trainable(model: Self1eModel, lora: LoraSettings) -> list[nn.Parameter]:
    """LoRA off: everything trains. LoRA on: adapters + ``train_full`` modules + the mask head."""
    if not lora.enabled:
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())
    from peft import LoraConfig, inject_adapter_in_model

    check_lora_targets(model, lora)
    lora = for_backbone(lora, model.backbone)
    regex = lora_target_regex(lora, model.backbone)
    if regex:
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=regex)
        inject_adapter_in_model(config, model.base)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name or name.startswith("head."))
    for name in lora.train_full:
        try:
            module = model.base.get_submodule(name)
        except AttributeError:
            raise ValueError(f"config key 'lora.train_full': the base model has no module {name!r}") from None
        for p in module.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int):
    """Factor of the peak LR after ``s`` completed steps: linear warm-up, then linear decay to 0."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(1, total - warmup))
    return factor


def load_source(cfg: TrainConfig, index: int, samples: Sequence[Sample] | None = None) -> Source:
    """Dataset ``index`` of the config's mix: loaded, filtered by kind, subsampled to ``max_images``
    (a random subset seeded by the run's seed and the dataset's place in the list), ignore regions
    dropped with ``ignore_as_background``. ``samples``: the dataset as already loaded."""
    d = cfg.data[index]
    samples = load_dataset(d.spec, kinds=d.kinds) if samples is None else samples
    if d.max_images is not None:
        samples = subsample_images(samples, d.max_images, cfg.seed * 1_000 + index)
    if d.ignore_as_background:
        samples = [dataclasses.replace(s, ignore=None) for s in samples]
    return Source(d.spec, samples, d.ratio, d.group)


def build_sources(cfg: TrainConfig) -> list[Source]:
    return [load_source(cfg, i) for i in range(len(cfg.data))]


def subset_record(cfg: TrainConfig, sources: Sequence[Source]) -> dict[str, Any]:
    """What a run's ``max_images`` subsets hold (the sample ids kept per subsampled dataset), for
    ``data_subsets.json`` in the run folder: two runs with the same seed keep the same ids."""
    return {"seed": cfg.seed, "datasets": [{"spec": d.spec, "max_images": d.max_images,
                                            "sample_ids": [smp.id for smp in src.samples]}
                                           for d, src in zip(cfg.data, sources) if d.max_images is not None]}


def mix_repeats(cfg: TrainConfig) -> dict[str, int] | None:
    """Group -> repeat factor in repeat mode (in concatenation order); None in ratio mode."""
    return dict(zip(cfg.mix.groups, cfg.mix.repeats)) if cfg.mix.mode == "repeat" else None


def build_batches(cfg: TrainConfig, model: Self1eModel, rank: int, world: int) -> TrainBatches:
    """This rank's endless, resumable stream of training batches over the config's mix."""
    return TrainBatches(build_sources(cfg), model.processor, cfg.batch_size, cfg.expressions_per_image, cfg.seed,
                        rank, world, cfg.num_workers, mix_repeats(cfg))


def build_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW (decay on matrices only) and its schedule: linear warm-up, then linear decay to 0."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, total_steps))
    return optimizer, scheduler
