"""The segmentation attention mask: causal + padding, relaxed in rows that contain [SEG]."""
from __future__ import annotations

import torch


def seg_attention_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    seg_token_id: int,
    dtype: torch.dtype,
    bidirectional: bool = True,
) -> torch.Tensor:
    """Additive float mask for the LLM, 0 = attend, dtype's minimum = blocked.

    Starts from causal attention over non-padding keys. With ``bidirectional``, in every row whose
    sequence contains ``[SEG]``: image tokens attend to all image tokens of that row, and to the
    row's *last* ``[SEG]`` (so image features are conditioned on the query that this ``[SEG]`` has
    read). A row answers one ``[SEG]``, its last: an answer with several is scored as several rows
    (see ``Self1eProcessor.rows_per_seg``), so no object's mask depends on another object's
    ``[SEG]`` or on anything said after it. Every query also attends to itself, so no row is fully
    blocked (padding rows would otherwise give NaN).

    input_ids, attention_mask: (B, L) -> (B, 1, L, L).
    A float mask (not bool) because eager attention adds it to the scores.
    """
    b, length = input_ids.shape
    device = input_ids.device
    valid_key = attention_mask.bool()[:, None, :]  # (B, 1, L)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = causal[None] & valid_key
    allowed |= torch.eye(length, dtype=torch.bool, device=device)[None]
    if bidirectional:
        is_img = (input_ids == image_token_id) & attention_mask.bool()
        is_seg = (input_ids == seg_token_id) & attention_mask.bool()
        has_seg = is_seg.any(-1)[:, None, None]  # (B, 1, 1)
        is_last_seg = is_seg & (torch.arange(length, device=device) == last_index(is_seg)[:, None])
        relax = is_img[:, :, None] & (is_img[:, None, :] | is_last_seg[:, None, :])
        allowed |= relax & has_seg
    mask = torch.zeros(b, 1, length, length, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def last_index(flags: torch.Tensor) -> torch.Tensor:
    """Index of the last True in each row of a (B, L) bool tensor (0 for a row with none). (B,)."""
    positions = torch.arange(flags.shape[-1], device=flags.device)
    return (flags.long() * (positions + 1)).argmax(-1) * flags.any(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only real tokens, so left or right padding gives the same positions. (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
