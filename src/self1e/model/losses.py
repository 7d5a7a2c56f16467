"""Mask losses: BCE and soft Dice on logits resized to the target size."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of mask logits. (N, h, w) -> (N, *size). The one mask-resizing function."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p t) + eps) / (sum p + sum t + eps) over valid pixels, per mask, averaged. (N, H, W) each."""
    p = (logits.sigmoid() * valid).flatten(1)
    t = (target * valid).flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def mask_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float, dice_weight: float) -> torch.Tensor:
    """Weighted BCE + Dice after resizing logits to the target. logits (N, h, w); target (N, H, W) with
    1 / 0, and negative values (``IGNORE_PIXEL``) on pixels that take no loss. BCE is the mean over a
    mask's valid pixels, averaged over masks (with no ignored pixel: the plain mean)."""
    logits = resize_logits(logits, tuple(target.shape[-2:]))
    target = target.to(logits.dtype)
    valid = (target >= 0).to(logits.dtype)
    target = target.clamp(min=0)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid
    bce = (bce.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)).mean()
    return bce_weight * bce + dice_weight * dice_loss(logits, target, valid)
