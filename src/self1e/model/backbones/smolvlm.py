"""SmolVLM (transformers' native ``SmolVLMForConditionalGeneration``, the Idefics3 family): a SigLIP
ViT on square sub-images, pixel shuffle by ``scale_factor`` (2 to 4 depending on the checkpoint:
alpha = 4 to 16 patches per LLM token) and one Linear (``connector.modality_projection.proj``).

Self-replication through a single Linear is exact and cheap: the Linear on ``alpha`` copies of one
patch is the patch times the sum of the weight's ``alpha`` blocks (:func:`fold_replicated`). The
connector's pixel shuffle packs each ``s x s`` block in the channel order ``s * row + col`` and lists
its tokens row-major, as :func:`~self1e.model.pixel_shuffle.pixel_shuffle` does (tested). The head
reads the sub-images, stitched (:class:`~self1e.model.layouts.SubImageLayout`); the global image's
tokens reach it only through the LLM. Positions are 1D.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from self1e.model.backbones.base import Backbone, VisionOutput, config_int, tiled_output
from self1e.model.layouts import SubImageLayout
from self1e.model.pixel_shuffle import fold_replicated


class SmolVLM(Backbone):
    model_type = "smolvlm"
    model_class = "SmolVLMForConditionalGeneration"
    config_class = "SmolVLMConfig"
    projector_path = "model.connector"
    vision_path = "model.vision_model"
    language_path = "model.text_model"
    llm_lora_scope = r"model\.text_model\.layers\.\d+\..*\b"
    vit_lora_scope = r"model\.vision_model\.encoder\.layers\.\d+\..*\b"
    vit_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")

    @property
    def factor(self) -> int:
        return int(self.base.config.scale_factor)

    def layout(self, settings) -> SubImageLayout:
        vc = self.base.config.vision_config
        return SubImageLayout(config_int(vc.image_size), config_int(vc.patch_size), settings.max_tiles,
                              use_thumbnail=True, factor=self.factor)

    def replicated(self, patches: torch.Tensor) -> torch.Tensor:
        """The connector applied to each patch as if it filled its whole ``s x s`` block. (..., D) -> (..., C)."""
        weight, bias = fold_replicated(self.projector.modality_projection.proj, self.alpha)
        return F.linear(patches, weight, bias)

    def encode(self, pixel_values: torch.Tensor, grids: list[tuple[int, int]], layout: SubImageLayout,
               full_resolution: bool) -> VisionOutput:
        """ViT -> pixel shuffle -> Linear for all sub-images (and global images), (T, 3, S, S)."""
        out = self.base.model.vision_model(pixel_values=pixel_values)
        patches = out.last_hidden_state  # (T, g*g, D), row-major
        t, n, d = patches.shape
        g = int(n**0.5)
        side = g // self.factor
        f_v1 = self.projector(patches).reshape(t, side, side, -1)  # (T, g/s, g/s, C)
        hq = (lambda sl: self.replicated(patches[sl]).reshape(-1, g, g, f_v1.shape[-1])) if full_resolution else None
        return tiled_output(f_v1, grids, layout, hq)

