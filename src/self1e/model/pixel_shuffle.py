"""InternVL's pixel shuffle (PS), its exact inverse (PUS), and self-replication through the projector.

Channel order (InternVL's): PS packs the 2x2 block at rows (2i, 2i+1), columns (2j, 2j+1) into
channel blocks k = 2 * row_offset + col_offset, each block holding the D channels of one patch.
All functions work on channels-last grids of any (even) height and width, square or not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pixel_shuffle(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Space-to-depth. x: (N, H, W, D) -> (N, H/f, W/f, f²D), channel block ``f * row + col``."""
    n, h, w, d = x.shape
    if h % factor or w % factor:
        raise ValueError(f"pixel_shuffle needs a grid divisible by {factor}, got {h}x{w}")
    x = x.reshape(n, h // factor, factor, w // factor, factor, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // factor, w // factor, factor * factor * d)


def pixel_unshuffle(y: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Depth-to-space, the exact inverse of :func:`pixel_shuffle`. y: (N, h, w, f²C) -> (N, f h, f w, C)."""
    n, h, w, c4 = y.shape
    if c4 % (factor * factor):
        raise ValueError(f"pixel_unshuffle needs channels divisible by {factor * factor}, got {c4}")
    c = c4 // (factor * factor)
    y = y.reshape(n, h, w, factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return y.reshape(n, factor * h, factor * w, c)


def self_replicate(x: torch.Tensor) -> torch.Tensor:
    """Rep4: four copies of each patch vector along channels. (N, H, W, D) -> (N, H, W, 4D)."""
    return torch.cat([x] * 4, dim=-1)


def fold_replicated(linear: nn.Linear, alpha: int, gamma: torch.Tensor | None = None,
                    beta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) that ``linear`` applies to ``alpha`` identical copies of one normalised
    D-vector ``x_hat`` concatenated, as one Linear on ``x_hat`` (exact rewrite): ``linear`` takes
    ``alpha * D`` inputs in ``alpha`` blocks ``W_k``, so the weight is ``sum_k W_k`` and the bias
    ``linear.bias``. With a norm over the concatenation in between (``gamma``, ``beta``, each
    ``alpha * D``: its affine part; its statistics over identical copies are one copy's), the
    weight is ``sum_k W_k diag(gamma_k)`` and the bias ``sum_k W_k beta_k + b``."""
    d = linear.in_features // alpha
    w = linear.weight.reshape(linear.out_features, alpha, d)  # (C, k, D)
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features, dtype=w.dtype,
                                                                   device=w.device)
    if gamma is None:
        return w.sum(1), bias
    weight = (w * gamma.reshape(alpha, d)).sum(1)  # (C, D)
    if beta is not None:
        bias = torch.einsum("ckd,kd->c", w, beta.reshape(alpha, d)) + bias
    return weight, bias


def project_replicated(projector: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``projector(self_replicate(x))`` without building the 4x input (exact rewrite).

    LayerNorm over four identical copies has the mean and variance of one copy, so
    LayerNorm + first Linear fold into one Linear on the normalised ``x`` (:func:`fold_replicated`).

    projector: InternVL's multi_modal_projector (layer_norm, linear_1, act, linear_2).
    x: (..., D) -> (..., C).
    """
    ln = projector.layer_norm
    x_hat = F.layer_norm(x, (x.shape[-1],), None, None, ln.eps)
    weight, bias = fold_replicated(projector.linear_1, 4, ln.weight, ln.bias)
    return projector.linear_2(projector.act(F.linear(x_hat, weight, bias)))
