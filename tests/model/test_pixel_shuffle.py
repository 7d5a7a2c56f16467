import pytest
import torch
import torch.nn.functional as F
from transformers.models.internvl.modeling_internvl import InternVLModel, InternVLMultiModalProjector

from self1e.model.pixel_shuffle import pixel_shuffle, pixel_unshuffle, project_replicated, self_replicate
from self1e.model.tiny import tiny_config

GRIDS = [(4, 4), (4, 6), (6, 2), (2, 10)]


@pytest.mark.parametrize("h,w", GRIDS)
def test_round_trips_are_exact(h, w):
    x = torch.randn(3, h, w, 5)
    assert torch.equal(pixel_unshuffle(pixel_shuffle(x)), x)
    y = torch.randn(2, h // 2, w // 2, 12)
    assert torch.equal(pixel_shuffle(pixel_unshuffle(y)), y)


@pytest.mark.parametrize("h,w", GRIDS)
def test_matches_transformers_internvl_pixel_shuffle(h, w):
    x = torch.randn(2, h, w, 6)
    theirs = InternVLModel.pixel_shuffle(None, x.clone(), scale_factor=0.5)
    assert torch.equal(pixel_shuffle(x), theirs)


def test_channel_block_order_is_row_then_column():
    # patch (r, c) holds the value 10 r + c; block k of the packed vector is sub-pixel (k // 2, k % 2)
    x = torch.tensor([[10.0 * r + c for c in range(4)] for r in range(2)]).reshape(1, 2, 4, 1)
    y = pixel_shuffle(x)
    assert y[0, 0, 0].tolist() == [0.0, 1.0, 10.0, 11.0]
    assert y[0, 0, 1].tolist() == [2.0, 3.0, 12.0, 13.0]


@pytest.mark.parametrize("h,w", GRIDS)
def test_self_replication_is_ps_of_nearest_upsampling(h, w):
    x = torch.randn(2, h, w, 4)
    up = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=2, mode="nearest").permute(0, 2, 3, 1)
    assert torch.equal(self_replicate(x), pixel_shuffle(up))


def test_fused_replicated_projector_equals_direct():
    torch.manual_seed(0)
    proj = InternVLMultiModalProjector(tiny_config("tiny"))
    with torch.no_grad():  # non-trivial affine parameters, so every term of the rewrite matters
        proj.layer_norm.weight.normal_()
        proj.layer_norm.bias.normal_()
    x = torch.randn(2, 6, 4, proj.layer_norm.normalized_shape[0] // 4) * 3 + 1
    assert torch.allclose(project_replicated(proj, x), proj(self_replicate(x)), atol=1e-5, rtol=1e-5)
