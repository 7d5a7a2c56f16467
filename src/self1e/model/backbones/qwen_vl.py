"""Qwen2.5-VL and Qwen3-VL (transformers' native classes): native resolution, a 2 x 2 patch merger.

The vision tower sees the image at (about) its own aspect ratio as a grid of patches that the image
layout already orders so each 2 x 2 group is four consecutive rows (:class:`NativeLayout`); the
merger normalises each patch, concatenates its group and applies an MLP (Qwen2.5-VL: RMSNorm,
``mlp`` = Linear / GELU / Linear; Qwen3-VL: LayerNorm, ``linear_fc1`` / GELU / ``linear_fc2``).
Self-replication passes one patch as if it filled its whole group: the norm acts per patch, so the
first Linear folds onto the normalised patch (:func:`~self1e.model.pixel_shuffle.fold_replicated`).

Positions are M-RoPE, computed by the model's own ``get_rope_index`` (text 1D, image tokens on
their (h, w) grid); the segmentation mask is the same 4D mask over the image-pad tokens.

Qwen2.5-VL's ViT runs in windows and returns its pre-merger states in window order; they are put
back in the layout's order (the inverse of the window permutation of merge groups) before the head
reads them. Qwen3-VL adds deepstack: mergers of intermediate ViT layers whose outputs are added to
the LLM's states at the image tokens in its first layers. The language model gets them as the
model does; the head does not read them: its full-resolution path needs the merger that produced
the LLM's input tokens (the one whose output ``f_v1`` is), and the deepstack mergers normalise after
concatenating their group, so they describe other layers than the tokens the LLM was given.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from self1e.model.backbones.base import Backbone, VisionOutput, config_int
from self1e.model.layouts import CLIP_MEAN, CLIP_STD, NativeLayout
from self1e.model.pixel_shuffle import fold_replicated

QWEN_IMAGE_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
DEFAULT_PIXELS = 448 * 448  # a square image of 448 px: 16 x 16 LLM tokens at patch 14
PIXELS_FIELD = "self1e_image_pixels"  # vision_config field: the area images are resized to


class QwenVL(Backbone):
    """What Qwen2.5-VL and Qwen3-VL share."""

    projector_path = "model.visual.merger"
    vision_path = "model.visual.blocks"
    vit_lora_scope = r"model\.visual\.blocks\.\d+\..*\b"
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    @property
    def factor(self) -> int:
        return int(self.base.config.vision_config.spatial_merge_size)

    def layout(self, settings) -> NativeLayout:
        vc = self.base.config.vision_config
        return NativeLayout(config_int(vc.patch_size), vc.spatial_merge_size, config_int(vc.temporal_patch_size),
                            getattr(vc, PIXELS_FIELD, None) or DEFAULT_PIXELS, self.mean, self.std, QWEN_IMAGE_TOKENS)

    def set_image_size(self, size: int) -> None:
        """Resize images to about ``size`` x ``size`` pixels from now on (saved in the vision config)."""
        vc = self.base.config.vision_config
        unit = config_int(vc.patch_size) * vc.spatial_merge_size
        if size < unit:
            raise ValueError(f"image size {size} is below one merged group ({unit} px)")
        setattr(vc, PIXELS_FIELD, size * size)

    def grid_thw(self, grids: list[tuple[int, int]], device) -> torch.Tensor:
        return torch.tensor([[1, r, c] for r, c in grids], dtype=torch.long, device=device)

    def replicated(self, patches: torch.Tensor) -> torch.Tensor:
        """The merger applied to each patch as if it filled its whole group. (N, D) -> (N, C)."""
        raise NotImplementedError

    def pre_merger(self, out, thw: torch.Tensor) -> torch.Tensor:
        """The ViT's final states (before the merger) in the layout's patch order."""
        return out.last_hidden_state

    def encode(self, pixel_values: torch.Tensor, grids: list[tuple[int, int]], layout: NativeLayout,
               full_resolution: bool) -> VisionOutput:
        thw = self.grid_thw(grids, pixel_values.device)
        if pixel_values.shape[0] != int(thw[:, 1:].prod(-1).sum()):
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches but the grids {grids} need "
                             f"{int(thw[:, 1:].prod(-1).sum())}")
        out = self.base.model.visual(pixel_values, grid_thw=thw)
        merged, patches = out.pooler_output, self.pre_merger(out, thw)
        deepstack = getattr(out, "deepstack_features", None)
        tokens, maps_v1, maps_hq, extras = [], [], [], []
        t0 = p0 = 0
        for grid in grids:
            n, m = layout.n_tiles(grid), grid[0] * grid[1]
            tokens.append(merged[t0:t0 + n])
            maps_v1.append(layout.token_map(merged[t0:t0 + n], grid))
            maps_hq.append(layout.patch_map(self.replicated(patches[p0:p0 + m]), grid) if full_resolution else None)
            extras.append([f[t0:t0 + n] for f in deepstack] if deepstack else [])
            t0, p0 = t0 + n, p0 + m
        return VisionOutput(tokens, maps_v1, maps_hq, extras if deepstack else None)

    def positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, grids: list[tuple[int, int]],
                  image_index: torch.Tensor) -> torch.Tensor:
        """M-RoPE positions (3, B, L) from the model's ``get_rope_index``: each row holds one image."""
        thw = self.grid_thw([grids[i] for i in image_index.tolist()], input_ids.device)
        types = (input_ids == self.image_token_id).int()
        positions, _ = self.base.model.get_rope_index(input_ids, mm_token_type_ids=types, image_grid_thw=thw,
                                                      attention_mask=attention_mask)
        return positions

    def generate(self, input_ids: torch.Tensor, embeds: torch.Tensor, image, **options) -> list[int]:
        """The base model's own ``generate`` on the token ids and pixel values (it embeds the image and
        computes its M-RoPE positions and deepstack inputs itself, as it was trained to)."""
        thw = self.grid_thw([image.grid], input_ids.device)
        out = self.base.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 pixel_values=image.pixel_values.to(input_ids.device, embeds.dtype),
                                 image_grid_thw=thw, mm_token_type_ids=(input_ids == self.image_token_id).int(),
                                 **options)
        return out[0, input_ids.shape[1]:].tolist()


class Qwen2_5VL(QwenVL):  # noqa: N801 (the family's name)
    model_type = "qwen2_5_vl"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    config_class = "Qwen2_5_VLConfig"
    vit_lora_targets = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")

    def replicated(self, patches: torch.Tensor) -> torch.Tensor:
        merger = self.projector  # ln_q (RMSNorm per patch), mlp = Linear, GELU, Linear
        weight, bias = fold_replicated(merger.mlp[0], self.alpha)
        return merger.mlp[2](merger.mlp[1](F.linear(merger.ln_q(patches), weight, bias)))

    def pre_merger(self, out, thw: torch.Tensor) -> torch.Tensor:
        """Window order -> layout order: the ViT permuted whole merge groups (``window_index``)."""
        from transformers.vision_utils import get_vision_window_index

        visual = self.base.model.visual
        window_index, _ = get_vision_window_index(thw, visual.spatial_merge_size, visual.window_size,
                                                  visual.patch_size)
        states = out.last_hidden_state
        groups = states.reshape(-1, visual.spatial_merge_unit, states.shape[-1])
        return groups[torch.argsort(window_index.to(states.device))].flatten(0, 1)


class Qwen3VL(QwenVL):
    model_type = "qwen3_vl"
    model_class = "Qwen3VLForConditionalGeneration"
    config_class = "Qwen3VLConfig"
    vit_lora_targets = ("qkv", "proj", "linear_fc1", "linear_fc2")
    extra_float_paths = ("model.visual.deepstack_merger_list",)  # deepstack: its mergers too
    mean = std = (0.5, 0.5, 0.5)

    def replicated(self, patches: torch.Tensor) -> torch.Tensor:
        merger = self.projector  # norm (LayerNorm per patch, or over the group), linear_fc1, GELU, linear_fc2
        if merger.use_postshuffle_norm:
            x_hat = F.layer_norm(patches, (patches.shape[-1],), None, None, merger.norm.eps)
            weight, bias = fold_replicated(merger.linear_fc1, self.alpha, merger.norm.weight, merger.norm.bias)
        else:
            x_hat = merger.norm(patches)
            weight, bias = fold_replicated(merger.linear_fc1, self.alpha)
        return merger.linear_fc2(merger.act_fn(F.linear(x_hat, weight, bias)))

    def llm_inputs(self, input_ids: torch.Tensor, extras: list[list[torch.Tensor]] | None,
                   image_index: torch.Tensor) -> dict[str, Any]:
        """Deepstack: per injected layer, the features of every row's image tokens, in row order."""
        visual = input_ids == self.image_token_id
        if not extras or not bool(visual.any()):
            return {}
        rows = image_index.tolist()
        layers = [torch.cat([extras[i][k] for i in rows]) for k in range(len(extras[rows[0]]))]
        return {"visual_pos_masks": visual, "deepstack_visual_embeds": layers}

