"""The SELF1E mask head: RFR, RFA, the [SEG] transform and the scaled dot product.

Shapes: N rows (one [SEG] each), LLM token grid (h, w), ViT patch grid (f h, f w) for a backbone
that compresses f x f patches into one token (``factor``: 2 for InternVL and Qwen-VL, 2 to 4 for
SmolVLM; alpha = f²), hidden size C. The ablation ladder is one class with a ``rung``; only the
modules a rung uses are created.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from self1e.model.pixel_shuffle import pixel_unshuffle


class Mlp(nn.Module):
    """Linear(C, C) -> GELU -> Linear(C, out); parameters at ``.0`` and ``.2`` as in the reference."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The activation before the last Linear."""
        return self.net[1](self.net[0](x))


def upsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Bilinear x``factor`` on channels-last grids. (N, H, W, C) -> (N, f H, f W, C)."""
    y = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=factor, mode="bilinear", align_corners=False)
    return y.permute(0, 2, 3, 1)


@dataclass
class HeadOutput:
    """logits: (N, H, W) main mask logits; aux_logits: (N, H/f, W/f) for rfa, else None."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None


class MaskHead(nn.Module):
    """Mask logits from image features and the [SEG] state (no sigmoid)."""

    def __init__(self, hidden_size: int, rung: str = "rfa", factor: int = 2) -> None:
        super().__init__()
        self.rung = rung
        self.factor = factor
        self.scale = 1.0 / math.sqrt(hidden_size)
        c = hidden_size
        self.g = Mlp(c, c)
        if rung == "rfa":
            self.f_pus = Mlp(c, factor * factor * c)
            self.f_pus_llm = Mlp(c, factor * factor * c)

    @property
    def needs_full_resolution(self) -> bool:
        """Whether the rung reads the self-replicated full-resolution projection (``f_v1_hq``)."""
        return self.rung != "compressed"

    def seg_feature(self, h_seg: torch.Tensor) -> torch.Tensor:
        """F'_SEG. h_seg: (N, C) -> (N, C)."""
        if self.rung == "rfa":
            n, c = h_seg.shape
            h_seg = self.f_pus_llm(h_seg).reshape(n, self.factor**2, c).mean(1)  # mean of the f² PUS sub-vectors
        return self.g(h_seg)

    def image_features(
        self, f_img: torch.Tensor, f_v1: torch.Tensor | None, f_v1_hq: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-pixel features before ``g``: (N, H, W, C), and for rfa the aux features (N, H/2, W/2, C).

        f_img: (N, h, w, C) LLM states at image tokens; f_v1: (N, h, w, C) projector output;
        f_v1_hq: (N, f h, f w, C) self-replicated full-resolution projector output.
        """
        f = self.factor
        if self.rung == "compressed":
            return f_img, None
        if self.rung == "hq":
            return f_v1_hq, None
        if self.rung == "rfr":
            return f_v1_hq + upsample(f_img - f_v1, f), None
        llm_side = pixel_unshuffle(self.f_pus_llm(f_img), f)  # (N, f h, f w, C)
        f_rfa = llm_side - pixel_unshuffle(self.f_pus(f_v1), f)
        uncompressed = pixel_unshuffle(self.f_pus(f_v1_hq), f)  # (N, f² h, f² w, C)
        return uncompressed + upsample(f_rfa, f), llm_side

    def dot_g(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """<g(x), s> / sqrt(C) with g's last Linear folded onto the [SEG] side (exact rewrite):
        <W a + b, s> = <a, W^T s> + <b, s>. x: (N, H, W, C), s: (N, C) -> (N, H, W)."""
        last = self.g.net[2]
        s_w = s @ last.weight  # (N, C) = (W^T s) per row
        return (torch.einsum("nhwc,nc->nhw", self.g.hidden(x), s_w) + (s @ last.bias)[:, None, None]) * self.scale

    def forward(
        self,
        f_img: torch.Tensor,
        h_seg: torch.Tensor,
        f_v1: torch.Tensor | None = None,
        f_v1_hq: torch.Tensor | None = None,
        with_aux: bool = False,
    ) -> HeadOutput:
        s = self.seg_feature(h_seg)
        feats, aux_feats = self.image_features(f_img, f_v1, f_v1_hq)
        logits = self.dot_g(feats, s)
        aux = None
        if with_aux and aux_feats is not None:
            aux = torch.einsum("nhwc,nc->nhw", aux_feats, s) * self.scale
        return HeadOutput(logits, aux)
