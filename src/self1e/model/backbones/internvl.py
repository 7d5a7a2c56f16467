"""InternVL (transformers' native ``InternVLForConditionalGeneration``): tiles, pixel shuffle + MLP.

The ViT sees square tiles; its patch grid is pixel-shuffled (2 x 2 patches into one vector) and the
projector (LayerNorm, Linear, GELU, Linear) maps it to LLM tokens. Self-replication folds the
LayerNorm and first Linear onto one patch (:func:`~self1e.model.pixel_shuffle.project_replicated`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from self1e.model.backbones.base import Backbone, VisionOutput, tiled_output
from self1e.model.layouts import TileLayout
from self1e.model.pixel_shuffle import pixel_shuffle, project_replicated


class InternVL(Backbone):
    model_type = "internvl"
    model_class = "InternVLForConditionalGeneration"
    config_class = "InternVLConfig"
    projector_path = "model.multi_modal_projector"
    vision_path = "model.vision_tower"
    # transformers' InternVL vision layers: attention.{q,k,v}_proj (the original "qkv", split),
    # attention.projection_layer (the original "proj"), mlp.fc1, mlp.fc2.
    vit_lora_scope = r"model\.vision_tower\.encoder\.layer\.\d+\..*\b"
    vit_lora_targets = ("q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2")

    def layout(self, settings) -> TileLayout:
        vc = self.base.config.vision_config
        return TileLayout(vc.image_size[0], vc.patch_size[0], settings.max_tiles, settings.use_thumbnail)

    def encode(self, pixel_values: torch.Tensor, grids: list[tuple[int, int]], layout: TileLayout,
               full_resolution: bool) -> VisionOutput:
        """ViT -> PS -> projector for all tiles (T, 3, S, S); the maps stitch each image's grid tiles
        (its thumbnail excluded)."""
        inner, cfg = self.base.model, self.base.config
        out = inner.vision_tower(pixel_values=pixel_values, output_hidden_states=cfg.vision_feature_layer != -1)
        feats = out.last_hidden_state if cfg.vision_feature_layer == -1 else out.hidden_states[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        t, n, d = feats.shape
        g = int(n**0.5)
        f_v0 = feats.reshape(t, g, g, d)
        f_v1 = inner.multi_modal_projector(pixel_shuffle(f_v0))  # (T, g/2, g/2, C)
        hq = (lambda sl: project_replicated(inner.multi_modal_projector, f_v0[sl])) if full_resolution else None
        return tiled_output(f_v1, grids, layout, hq)

    def set_image_size(self, size: int) -> None:
        """Move the ViT to ``size`` x ``size`` tiles: its absolute position embeddings are resampled
        (bicubic, class token kept) to the new patch grid, and the configs follow."""
        vc = self.base.config.vision_config
        patch = vc.patch_size[0]
        if size % (2 * patch):
            raise ValueError(f"image size {size} must be a multiple of twice the patch size ({2 * patch})")
        emb = self.base.model.vision_tower.embeddings
        old = emb.position_embeddings
        if old is None:
            raise ValueError("this vision tower has no absolute position embeddings to resample")
        g0, g1, dim = vc.image_size[0] // patch, size // patch, old.shape[-1]
        grid = old.data[:, 1:].reshape(1, g0, g0, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(g1, g1), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, g1 * g1, dim).to(old.dtype)
        emb.position_embeddings = nn.Parameter(torch.cat([old.data[:, :1], grid], 1), requires_grad=old.requires_grad)
        emb.image_size = vc.image_size = [size, size]
        self.base.config.image_seq_length = (g1 // 2) ** 2

    def add_vit_layers(self, n: int) -> None:
        """Append ``n`` ViT layers, each the identity at first: the attention output projection and the
        second MLP linear are zero (weights and biases), so the features are unchanged until training
        moves them; the rest is initialised as the model's own init does. The config follows."""
        encoder, vc = self.base.model.vision_tower.encoder, self.base.config.vision_config
        ref = encoder.layer[-1]
        for _ in range(n):
            layer = type(ref)(vc)
            for module in layer.modules():
                self.base._init_weights(module)
            for linear in (layer.attention.projection_layer, layer.mlp.fc2):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
            encoder.layer.append(layer.to(ref.layernorm_before.weight.device, ref.layernorm_before.weight.dtype))
        vc.num_hidden_layers = len(encoder.layer)
