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
    answer_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive float mask for the LLM, 0 = attend, dtype's minimum = blocked.

    Starts from causal attention over non-padding keys. With ``bidirectional``, in every row whose
    sequence contains ``[SEG]``: image tokens attend to all image tokens of that row, and to the
    row's *last* ``[SEG]`` (so image features are conditioned on the query that this ``[SEG]`` has
    read). A row answers one ``[SEG]``, its last: an answer with several is scored as several rows
    (see ``Self1eProcessor.rows_per_seg``), so no object's mask depends on another object's
    ``[SEG]`` or on anything said after it. Every query also attends to itself, so no row is fully
    blocked (padding rows would otherwise give NaN).

    ``answer_start`` (B,), the position where each row's answer begins (-1: none given) isolates the
    objects of one answer: in a row whose last ``[SEG]`` follows another ``[SEG]`` of the same answer,
    the tokens after that earlier ``[SEG]`` (the row's own "and the blue star is [SEG]") attend to
    what precedes the (last) image and to themselves, not to the user's text after the image nor to
    the answer before them ("the red circle is [SEG]"). So the k-th object's mask (k >= 2) depends on
    the image and its own phrase only, never on how the request or the other objects were worded,
    and its ``[SEG]`` reads one phrase, not one picked out of several. The first object reads the
    request, as a single-object answer does. (A mask pass only: the language model's own pass keeps
    the whole conversation, as generation does.)

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
    if answer_start is not None:
        allowed &= ~_object_isolation(input_ids, attention_mask, image_token_id, seg_token_id, answer_start)
    mask = torch.zeros(b, 1, length, length, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def _object_isolation(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int,
                      seg_token_id: int, answer_start: torch.Tensor) -> torch.Tensor:
    """(B, L, L) the (query, key) pairs blocked by ``answer_start`` (see :func:`seg_attention_mask`)."""
    pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
    start = answer_start.to(pos.device)[:, None]
    valid = attention_mask.bool()
    is_seg = (input_ids == seg_token_id) & valid
    earlier = is_seg & (pos < last_index(is_seg)[:, None]) & (pos >= start) & (start >= 0)
    prev = last_index(earlier)[:, None]
    own = earlier.any(-1, keepdim=True) & (pos > prev)  # queries: the row's own object
    is_img = (input_ids == image_token_id) & valid
    after_image = torch.where(is_img.any(-1, keepdim=True), last_index(is_img)[:, None], start - 1)
    before = (pos > after_image) & (pos <= prev)  # keys: the user's text after the image, the earlier objects
    return own[:, :, None] & before[:, None, :]


def last_index(flags: torch.Tensor) -> torch.Tensor:
    """Index of the last True in each row of a (B, L) bool tensor (0 for a row with none). (B,)."""
    positions = torch.arange(flags.shape[-1], device=flags.device)
    return (flags.long() * (positions + 1)).argmax(-1) * flags.any(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only real tokens, so left or right padding gives the same positions. (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
