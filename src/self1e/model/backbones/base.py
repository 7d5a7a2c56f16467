"""The backbone adapter: what SELF1E needs from one MLLM family, and nothing else.

The mask head needs, per image: the LLM's input tokens, the compressed features on the LLM's token
grid (``f_v1``), the self-replicated full-resolution features (``f_v1_hq``: each pre-compression
patch passed through the backbone's own compression as if it filled its whole group), and a way
to fold the LLM's states at the image tokens back into that grid. The model around it needs the
language model, its positions (1D or M-RoPE) and any extra inputs it takes (Qwen3-VL's deepstack),
and generation. An adapter is one class per family; adding a family is one new module registered
in :mod:`self1e.model.backbones`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from self1e.model.attention import position_ids_from_mask
from self1e.model.layouts import stitch


@dataclass
class VisionOutput:
    """Per image: tokens (n, C) the LLM's inputs at its image tokens, in sequence order; f_v1
    (h, w, C) the compressed map; f_v1_hq (f h, f w, C) the self-replicated full-resolution map (None
    when not asked for); extras: what the LLM takes besides the tokens (Qwen3-VL: one (n, C) deepstack
    feature per injected layer), or None."""

    tokens: list[torch.Tensor]
    f_v1: list[torch.Tensor]
    f_v1_hq: list[torch.Tensor | None]
    extras: list[list[torch.Tensor]] | None = None


class Backbone:
    """One MLLM family around a transformers ``...ForConditionalGeneration`` model (``base``).

    Class attributes name the family: ``model_type`` (its ``config.json`` field), the transformers
    classes, where its parts sit in ``base`` (dotted module names), the LoRA scopes (regexes over
    module names of ``base``) and the ViT Linear names a default LoRA adapts."""

    model_type: ClassVar[str]
    model_class: ClassVar[str]  # a transformers class name
    config_class: ClassVar[str]
    projector_path: ClassVar[str]  # the compression (space-to-depth + MLP) whose self-replication the head uses
    language_path: ClassVar[str] = "model.language_model"
    vision_path: ClassVar[str]  # the ViT's layers, without the compression (what quantization converts)
    extra_float_paths: ClassVar[tuple[str, ...]] = ()  # kept in float by quantization besides the projector
    llm_lora_scope: ClassVar[str] = r"model\.language_model\.layers\.\d+\..*\b"
    vit_lora_scope: ClassVar[str]
    vit_lora_targets: ClassVar[tuple[str, ...]]

    def __init__(self, base: nn.Module) -> None:
        self.base = base

    @property
    def factor(self) -> int:
        """Patches per side of the group one LLM token compresses (the head's depth-to-space factor)."""
        return 2

    @property
    def alpha(self) -> int:
        """Patches per LLM token: the self-replication factor."""
        return self.factor**2

    @classmethod
    def classes(cls) -> tuple[type, type]:
        """(config class, model class) from transformers."""
        import transformers

        return getattr(transformers, cls.config_class), getattr(transformers, cls.model_class)

    @property
    def image_token_id(self) -> int:
        return int(self.base.config.image_token_id)

    @property
    def language_model(self) -> nn.Module:
        return self.base.get_submodule(self.language_path)

    @classmethod
    def float_paths(cls) -> tuple[str, ...]:
        """What quantization keeps in float: the compression (the projector, and its kin)."""
        return (cls.projector_path, *cls.extra_float_paths)

    @property
    def projector(self) -> nn.Module:
        return self.base.get_submodule(self.projector_path)

    def layout(self, settings):
        """The image layout (:mod:`self1e.model.layouts`) for these SELF1E settings."""
        raise NotImplementedError

    def encode(self, pixel_values: torch.Tensor, grids: list[tuple[int, int]], layout,
               full_resolution: bool) -> VisionOutput:
        """Run the vision side on the pixel values of images whose grids are ``grids``."""
        raise NotImplementedError

    def positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, grids: list[tuple[int, int]],
                  image_index: torch.Tensor) -> torch.Tensor:
        """Position ids for the language model, as the backbone computes them: (B, L), or (3, B, L)
        for M-RoPE. Padding does not count (left or right padding gives the same positions)."""
        return position_ids_from_mask(attention_mask)

    def llm_inputs(self, input_ids: torch.Tensor, extras: list[list[torch.Tensor]] | None,
                   image_index: torch.Tensor) -> dict[str, Any]:
        """Extra keyword inputs of the language model for these rows (none by default)."""
        return {}

    def generate(self, input_ids: torch.Tensor, embeds: torch.Tensor, image, **options) -> list[int]:
        """New token ids after ``input_ids`` (1, L) (whose embeddings, image features in, are
        ``embeds``) for the image ``image`` (an ImageInput), by the base model's ``generate``."""
        out = self.base.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids), **options)
        return out[0].tolist()  # with inputs_embeds only, generate returns only the new tokens

    def set_image_size(self, size: int) -> None:
        raise ValueError(f"set_image_size: {self.model_type} takes images at native resolution; there is no tile "
                         "size to change")

    def add_vit_layers(self, n: int) -> None:
        """Append ``n`` vision layers, each the identity at first (initialised from the torch RNG)."""
        raise ValueError(f"add_vit_layers: not available for {self.model_type} (InternVL only)")


def config_int(value) -> int:
    """A vision config size given as an int or as a list of equal ints (``image_size: [448, 448]``)."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def tiled_output(f_v1: torch.Tensor, grids: list[tuple[int, int]], layout,
                 full_resolution: Callable[[slice], torch.Tensor] | None) -> VisionOutput:
    """Per-image features of tiled backbones (InternVL's tiles, SmolVLM's sub-images) from every
    tile's compressed grid ``f_v1`` (T, h, w, C), row-major tiles then the thumbnail / global image of
    each image: its tokens (all its tiles), and the maps of its grid tiles stitched (the thumbnail
    excluded); ``full_resolution(tiles)`` gives the (n, f h, f w, C) self-replicated maps of a slice."""
    counts = [layout.n_tiles(grid) for grid in grids]
    if sum(counts) != f_v1.shape[0]:
        raise ValueError(f"pixel_values has {f_v1.shape[0]} tiles but the grids {grids} need {sum(counts)}")
    tokens, maps_v1, maps_hq, start = [], [], [], 0
    for grid, k in zip(grids, counts):
        sl = slice(start, start + grid[0] * grid[1])
        tokens.append(f_v1[start:start + k].flatten(0, 2))
        maps_v1.append(stitch(f_v1[sl], grid))
        maps_hq.append(stitch(full_resolution(sl), grid) if full_resolution is not None else None)
        start += k
    return VisionOutput(tokens, maps_v1, maps_hq)
