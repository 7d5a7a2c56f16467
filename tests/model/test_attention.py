import torch

from self1e.model.attention import position_ids_from_mask, seg_attention_mask

IMG, SEG = 9, 7
IDS = torch.tensor([[1, IMG, IMG, 2, SEG, 3], [1, IMG, IMG, 2, 0, 0]])
VALID = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


def allowed(mask):
    return (mask[:, 0] == 0).int().tolist()


def test_bidirectional_mask_matches_hand_written_matrix():
    m = seg_attention_mask(IDS, VALID, IMG, SEG, torch.float32, bidirectional=True)
    assert m.shape == (2, 1, 6, 6) and m.dtype == torch.float32
    assert set(m.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    row_with_seg = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 1, 0],  # image token: all image tokens and [SEG]
        [1, 1, 1, 0, 1, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    row_without_seg = [  # causal over the 4 real tokens; padding queries also see themselves
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0, 1],
    ]
    assert allowed(m) == [row_with_seg, row_without_seg]


def test_causal_mask_ignores_seg():
    m = seg_attention_mask(IDS, VALID, IMG, SEG, torch.bfloat16, bidirectional=False)
    assert allowed(m)[0] == torch.ones(6, 6, dtype=torch.int).tril().tolist()
    assert m.dtype == torch.bfloat16


def test_positions_skip_padding_on_either_side():
    assert position_ids_from_mask(torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])).tolist() == [[0, 1, 2, 2], [0, 0, 1, 2]]
