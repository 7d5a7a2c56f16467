import numpy as np
import pytest
import torch
from PIL import Image

from self1e.model import Self1eConfig, Self1eModel
from self1e.model.head import MaskHead
from self1e.model.tiny import build_tiny_base

TEXTS = ["the red circle", "all the blue boxes on the left"]


def make(mask_head="rfa", seg_attention="bidirectional", max_tiles=1, seed=0):
    base, tok = build_tiny_base("tiny", seed=seed)
    config = Self1eConfig(mask_head=mask_head, seg_attention=seg_attention, max_tiles=max_tiles)
    return Self1eModel.from_base(base, tok, config)


def image(w=56, h=56, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def seg_batch(model, texts=TEXTS, im=None):
    p = model.processor
    return p.segmentation_batch([p.image_input(im or image())], texts, [0] * len(texts))


@pytest.mark.parametrize("rung,side", [("compressed", 4), ("hq", 8), ("rfr", 8), ("rfa", 16)])
def test_output_grid_per_rung(rung, side):
    model = make(rung).eval()
    assert model.processor.grid_side == 4  # 56 px / patch 7 / pixel shuffle 2
    out = model(seg_batch(model))
    assert [tuple(x.shape) for x in out.mask_logits] == [(side, side)] * 2


@pytest.mark.parametrize("rung,scale", [("compressed", 1), ("rfr", 2), ("rfa", 4)])
def test_non_square_multi_tile_grid(rung, scale):
    model = make(rung, max_tiles=6).eval()
    p = model.processor
    wide = p.image_input(image(w=168, h=56))  # aspect 3:1 -> 1 x 3 tiles + thumbnail
    assert wide.grid == (1, 3) and wide.pixel_values.shape[0] == 4
    tall = p.image_input(image(w=56, h=112))  # 1:2 -> 2 x 1 tiles + thumbnail
    assert tall.grid == (2, 1)
    batch = p.segmentation_batch([wide, tall], TEXTS)
    out = model(batch)
    assert tuple(out.mask_logits[0].shape) == (4 * scale, 12 * scale)
    assert tuple(out.mask_logits[1].shape) == (8 * scale, 4 * scale)


def test_stitched_features_follow_tile_layout():
    """A multi-tile image's stitched map equals the single-tile features placed side by side."""
    model = make("rfa", max_tiles=2).eval()
    p = model.processor
    wide = p.image_input(image(w=112, h=56))
    feats = model.encode_images(wide.pixel_values, [wide.grid])
    left = model.encode_images(wide.pixel_values[:1], [(1, 1)])
    right = model.encode_images(wide.pixel_values[1:2], [(1, 1)])
    assert torch.allclose(feats.f_v1[0], torch.cat([left.f_v1[0], right.f_v1[0]], dim=1))
    assert torch.allclose(feats.f_v1_hq[0], torch.cat([left.f_v1_hq[0], right.f_v1_hq[0]], dim=1))


def test_causal_lm_logits_equal_plain_transformers_forward():
    model = make(seg_attention="causal").eval()
    batch = seg_batch(model)
    assert batch.attention_mask[0].sum() != batch.attention_mask[1].sum()  # really padded
    with torch.no_grad():
        ours = model(batch, return_lm_logits=True).lm_logits
        theirs = model.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            pixel_values=torch.cat([batch.pixel_values] * 2)).logits
    valid = batch.attention_mask.bool()
    assert torch.allclose(ours[valid], theirs[valid], atol=1e-5)


def image_token_states(model, texts):
    batch = seg_batch(model, texts)
    with torch.no_grad():
        feats = model.encode_images(batch.pixel_values, batch.grids)
        embeds = model.embed(batch.input_ids, feats, batch.image_index)
        bidirectional = model.config.seg_attention == "bidirectional"
        hidden = model._llm(embeds, batch.input_ids, batch.attention_mask, feats, batch.image_index, bidirectional)
    return hidden[batch.input_ids == model.image_token_id].reshape(len(texts), -1, hidden.shape[-1])


def test_bidirectional_image_features_depend_on_the_expression():
    states = image_token_states(make("rfa", "bidirectional").eval(), ["the red circle", "the green star"])
    assert not torch.allclose(states[0], states[1], atol=1e-4)
    causal = image_token_states(make("rfa", "causal").eval(), ["the red circle", "the green star"])
    assert torch.equal(causal[0], causal[1])


def test_sdpa_and_eager_agree_under_the_seg_mask(tiny_model_dir):
    a = Self1eModel.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    b = Self1eModel.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert b.base.config.text_config._attn_implementation == "eager"
    batch = seg_batch(a)
    with torch.no_grad():
        oa, ob = a(batch, return_lm_logits=True), b(batch, return_lm_logits=True)
    for x, y in zip(oa.mask_logits, ob.mask_logits):
        assert torch.allclose(x, y, atol=1e-5)
    valid = batch.attention_mask.bool()
    assert torch.allclose(oa.lm_logits[valid], ob.lm_logits[valid], atol=1e-5)


def test_gradients_reach_heads_projector_and_llm():
    model = make("rfa").train()
    p = model.processor
    im = p.image_input(image())
    rows = [p.conversation(p.seg_question("the red circle"), "Sure, [SEG].", 1)]
    target = p.mask_target(np.pad(np.ones((20, 20), bool), 18))
    out = model(p.collate(rows, [im], [0], [target]))
    assert out.lm_loss is not None and out.mask_loss is not None and len(out.aux_logits) == 1
    out.loss.backward()
    for name, param in [("f_pus", model.head.f_pus.net[0].weight), ("f_pus_llm", model.head.f_pus_llm.net[2].weight),
                        ("g", model.head.g.net[2].weight),
                        ("projector", model.base.model.multi_modal_projector.linear_1.weight),
                        ("vision", model.base.model.vision_tower.embeddings.patch_embeddings.projection.weight),
                        ("llm", model.base.model.language_model.layers[0].self_attn.q_proj.weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_folded_dot_product_equals_direct():
    torch.manual_seed(0)
    head = MaskHead(16, "rfa")
    x, s = torch.randn(3, 5, 7, 16), torch.randn(3, 16)
    direct = torch.einsum("nhwc,nc->nhw", head.g(x), s) / 4.0
    assert torch.allclose(head.dot_g(x, s), direct, atol=1e-5)


def test_rfa_head_matches_the_specification():
    """The full rfa computation written out step by step from the design."""
    import torch.nn.functional as F

    from self1e.model.pixel_shuffle import pixel_unshuffle as pus

    torch.manual_seed(0)
    c = 8
    head = MaskHead(c, "rfa")
    f_img, f_v1 = torch.randn(2, 3, 5, c), torch.randn(2, 3, 5, c)
    hq, h_seg = torch.randn(2, 6, 10, c), torch.randn(2, c)
    up = lambda t: F.interpolate(t.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear").permute(0, 2, 3, 1)  # noqa: E731
    f_rfa = pus(head.f_pus_llm(f_img) - head.f_pus(f_v1))
    feats = head.g(pus(head.f_pus(hq)) + up(f_rfa))
    seg = head.g(head.f_pus_llm(h_seg).reshape(2, 4, c).mean(1))
    expected = (feats * seg[:, None, None]).sum(-1) / c**0.5
    aux = (pus(head.f_pus_llm(f_img)) * seg[:, None, None]).sum(-1) / c**0.5
    out = head(f_img, h_seg, f_v1, hq, with_aux=True)
    assert out.logits.shape == (2, 12, 20)
    assert torch.allclose(out.logits, expected, atol=1e-5) and torch.allclose(out.aux_logits, aux, atol=1e-5)


def test_save_load_round_trip_is_exact(tmp_path):
    model = make("rfr", "causal", seed=3).eval()
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded = Self1eModel.from_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.seg_token_id == model.seg_token_id
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    batch = seg_batch(model)
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(model(batch).mask_logits, loaded(batch).mask_logits))


def test_plain_internvl_folder_loads_and_gets_seg(plain_internvl_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(plain_internvl_dir)
    assert "[SEG]" not in tok.get_vocab()
    model = Self1eModel.from_pretrained(plain_internvl_dir, config=Self1eConfig(mask_head="hq"))
    assert model.seg_token_id == len(tok)
    assert model.base.get_input_embeddings().num_embeddings == len(tok) + 1
    assert model.base.get_output_embeddings().weight.shape[0] == len(tok) + 1
    assert model.base.get_input_embeddings().weight.data_ptr() != model.base.lm_head.weight.data_ptr()
    assert model.tokenizer("Sure, [SEG].", add_special_tokens=False)["input_ids"].count(model.seg_token_id) == 1
    assert model.config.mask_head == "hq"


def test_truncated_checkpoint_is_a_clear_error(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors|cannot load"):
        Self1eModel.from_pretrained(broken)
    head = tmp_path / "nohead"
    shutil.copytree(tiny_model_dir, head)
    (head / "mask_head.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="mask_head.safetensors"):
        Self1eModel.from_pretrained(head)
    with pytest.raises(ValueError, match="not found"):
        Self1eModel.from_pretrained(tmp_path / "missing")


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="mask_head"):
        Self1eConfig(mask_head="sam")
    with pytest.raises(ValueError, match="seg_attention"):
        Self1eConfig(seg_attention="full")


def test_batched_mask_loss_equals_mean_of_per_row_losses():
    from self1e.model.losses import mask_loss
    from self1e.model.processing import Batch

    model = make("rfa")
    torch.manual_seed(0)
    logits = [torch.randn(16, 16) for _ in range(3)]
    aux = [torch.randn(8, 8) for _ in range(3)]
    targets = [(torch.rand(20, 20) > 0.5).float() for _ in range(3)]
    ids = torch.full((3, 4), model.seg_token_id)
    batch = Batch(ids, torch.ones_like(ids), ids, torch.zeros(1), [], torch.zeros(3, dtype=torch.long),
                  [targets[0], None, targets[2]])
    got = model._mask_loss(torch.arange(3), logits, aux, batch)

    def both(k, target):
        return mask_loss(logits[k][None], target[None], 2.0, 0.5) + mask_loss(aux[k][None], target[None], 2.0, 0.5)

    per_row = [both(k, targets[k]) for k in (0, 2)]
    assert torch.allclose(got, sum(per_row) / 2, atol=1e-6)
    batch.mask_targets[2] = (torch.rand(24, 20) > 0.5).float()  # different shapes: the per-row path
    per_row[1] = both(2, batch.mask_targets[2])
    assert torch.allclose(model._mask_loss(torch.arange(3), logits, aux, batch), sum(per_row) / 2, atol=1e-6)


def test_ignored_pixels_take_no_mask_loss():
    """A target whose right half is ignored scores like the left half alone, and sends no gradient right."""
    from self1e.model.losses import mask_loss
    from self1e.model.processing import IGNORE_PIXEL

    torch.manual_seed(0)
    logits = torch.randn(2, 16, 16, requires_grad=True)
    target = (torch.rand(2, 16, 16) > 0.5).float()
    ignored = target.clone()
    ignored[:, :, 8:] = IGNORE_PIXEL
    loss = mask_loss(logits, ignored, 2.0, 0.5)
    assert torch.allclose(loss, mask_loss(logits[:, :, :8], target[:, :, :8], 2.0, 0.5), atol=1e-6)
    assert not torch.allclose(loss, mask_loss(logits, target, 2.0, 0.5))
    loss.backward()
    assert logits.grad[:, :, 8:].abs().max() == 0 and logits.grad[:, :, :8].abs().max() > 0


def test_training_targets_carry_the_ignore_region():
    """make_batch reads a sample's ignore map: those target pixels are IGNORE_PIXEL, the rest 0 / 1."""
    from self1e.data.sample import Sample
    from self1e.model.processing import IGNORE_PIXEL
    from self1e.train.batching import Source, TrainBatches

    model = make()
    mask = np.zeros((56, 56), bool)
    mask[10:30, 10:30] = True
    ignore = np.zeros((56, 56), bool)
    ignore[40:, :] = True
    s = Sample("a", lambda: image(), text="the red circle", mask=lambda: mask, ignore=lambda: ignore)
    batches = TrainBatches([Source("mine", [s], 1.0)], model.processor, batch_size=1)
    target = batches.make_batch(0, 0).mask_targets[0]
    side = target.shape[0]
    assert target.shape == (side, side) and (target == IGNORE_PIXEL).any()
    rows = (target == IGNORE_PIXEL).all(1).nonzero()[:, 0]
    assert rows.min() >= side * 40 // 56 - 1 and rows.max() == side - 1
    assert set(target[: side // 2].unique().tolist()) == {0.0, 1.0}


def test_segmentation_batches_carry_no_lm_labels_so_inference_skips_lm_work():
    model = make("rfa").eval()
    batch = seg_batch(model)
    assert (batch.labels == -100).all()
    calls = []
    model.base.lm_head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model(batch)
    assert calls == [] and out.lm_logits is None and out.loss is None


def test_lm_loss_on_labelled_positions_equals_full_cross_entropy():
    import torch.nn.functional as F

    model = make("rfa", "causal").train()
    p = model.processor
    im = p.image_input(image())
    rows = [p.conversation(p.seg_question("the red circle"), "Sure, [SEG].", 1),
            p.conversation("What color is the star?", "Red.", 1)]
    batch = p.collate(rows, [im], [0, 0])
    out = model(batch, return_lm_logits=True)
    full = F.cross_entropy(out.lm_logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(out.lm_loss, full, atol=1e-6)
    assert torch.allclose(model(batch).lm_loss, full, atol=1e-6)


def test_set_image_size_resamples_the_vit_grid_and_round_trips(tmp_path):
    """Training at another tile size: build_model applies TrainConfig.image_size; the class token is kept,
    a constant grid stays constant, the same size is a no-op, and the checkpoint reloads at the new size."""
    from self1e.train.config import load_config
    from self1e.train.loop import build_model

    model = make(seed=1).eval()
    emb = model.base.model.vision_tower.embeddings
    before = emb.position_embeddings.detach().clone()  # class token + 8 x 8 patches
    model.set_image_size(56)
    assert torch.allclose(emb.position_embeddings, before, atol=1e-6)
    with torch.no_grad():
        emb.position_embeddings[:, 1:] = 0.25
    model.set_image_size(112)
    after = emb.position_embeddings
    assert after.shape == (1, 1 + 16 * 16, before.shape[-1]) and after.requires_grad
    assert torch.equal(after[:, 0], before[:, 0]) and torch.allclose(after[:, 1:], torch.full_like(after[:, 1:], 0.25))
    assert model.processor.image_size == 112 and model.processor.grid_side == 8
    batch = seg_batch(model)
    assert tuple(model(batch).mask_logits[0].shape) == (32, 32)
    model.save_pretrained(tmp_path)
    loaded = Self1eModel.from_pretrained(tmp_path).eval()
    assert loaded.processor.image_size == 112
    with torch.no_grad():
        assert torch.equal(model(batch).mask_logits[0], loaded(batch).mask_logits[0])
    with pytest.raises(ValueError, match="multiple of twice the patch size"):
        model.set_image_size(60)
    trained = build_model(load_config(None, model="tiny:tiny", image_size=112))
    assert trained.processor.tokens_per_tile == 64
