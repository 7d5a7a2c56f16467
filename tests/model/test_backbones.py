"""Every backbone family at its tiny geometry: the properties SELF1E rests on, and the whole path
(train step, save / load, predict, chat) on each."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from self1e.inference.predictor import Self1ePredictor
from self1e.model import load_model
from self1e.model.backbones import FAMILIES
from self1e.model.pixel_shuffle import pixel_shuffle
from self1e.model.registry import model_names
from self1e.train.checkpoint import export_model
from self1e.train.config import LoraSettings
from self1e.train.setup import check_lora_targets, configure_trainable

TINY = {"internvl": "tiny:tiny", "qwen2_5_vl": "tiny:qwen2_5_vl", "qwen3_vl": "tiny:qwen3_vl",
        "smolvlm": "tiny:smolvlm"}
QWEN = ["tiny:qwen2_5_vl", "tiny:qwen3_vl"]


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=sorted(TINY))
def model(request):
    return load_model(TINY[request.param], seed=1)


def test_every_family_has_a_tiny_model_in_the_registry():
    assert set(FAMILIES) == set(TINY) and set(TINY.values()) <= set(model_names())
    for family, name in TINY.items():
        assert load_model(name).backbone.model_type == family


def test_self_replication_is_the_compression_of_a_replicated_grid(model):
    """The backbone's own compression applied to a grid in which every patch fills its whole 2 x 2
    group equals the adapter's self-replicated projection of that patch."""
    torch.manual_seed(0)
    b = model.backbone
    with torch.no_grad():
        if b.model_type == "internvl":
            d = model.base.config.vision_config.hidden_size
            patches = torch.randn(3, 4, 5, d)  # (N, h, w, D): one patch per group
            grid = patches.repeat_interleave(2, 1).repeat_interleave(2, 2)  # every patch into its group
            direct = model.base.model.multi_modal_projector(pixel_shuffle(grid))
            from self1e.model.pixel_shuffle import project_replicated
            folded = project_replicated(model.base.model.multi_modal_projector, patches)
        elif b.model_type == "smolvlm":  # pixel shuffle by s = 4, then one Linear
            s, d = b.factor, model.base.config.vision_config.hidden_size
            patches = torch.randn(1, 2, 2, d)
            grid = patches.repeat_interleave(s, 1).repeat_interleave(s, 2)  # (1, 8, 8, D)
            direct = b.projector(grid.flatten(1, 2)).reshape(1, 2, 2, -1)
            folded = b.replicated(patches)
            # the connector's own pixel shuffle packs and orders blocks as ours does
            x = torch.randn(2, 8, 8, d)
            ours = pixel_shuffle(x, s).flatten(1, 2)
            assert torch.equal(b.projector.pixel_shuffle(x.flatten(1, 2), s), ours)
        else:
            d = model.base.config.vision_config.hidden_size
            patches = torch.randn(12, d)
            direct = b.projector(patches.repeat_interleave(4, 0))  # each group = 4 copies of one patch
            folded = b.replicated(patches)
    assert direct.shape == folded.shape and torch.allclose(direct, folded, atol=1e-5), (direct - folded).abs().max()
    # and a grid whose groups differ is not what self-replication gives (the test can fail)
    if b.model_type in ("qwen2_5_vl", "qwen3_vl"):
        mixed = b.projector(torch.randn(48, d))
        assert not torch.allclose(mixed, folded, atol=1e-3)


@pytest.mark.parametrize("name", QWEN)
def test_pre_merger_patches_come_back_in_the_layouts_order(name):
    """The merger applied to the adapter's pre-merger states reproduces the LLM tokens, and the
    full-resolution map places patch (i, j) at (i, j): Qwen2.5-VL's window order is undone."""
    model = load_model(name, seed=2)
    p = model.processor
    im = p.image_input(_image(90, 50))  # 6 x 10 groups... of a non-square grid
    rows, cols = im.grid
    b = model.backbone
    with torch.no_grad():
        thw = b.grid_thw([im.grid], "cpu")
        out = model.base.model.visual(im.pixel_values, grid_thw=thw)
        patches = b.pre_merger(out, thw)
        assert torch.allclose(b.projector(patches), out.pooler_output, atol=1e-5)
        if name == "tiny:qwen2_5_vl":  # the windows really permute the groups here
            assert not torch.allclose(b.projector(out.last_hidden_state), out.pooler_output, atol=1e-3)
        feats = model.encode_images(im.pixel_values, [im.grid])
        hq = feats.f_v1_hq[0]
        assert hq.shape[:2] == (rows, cols) and feats.f_v1[0].shape[:2] == (rows // 2, cols // 2)
        grid = p.image_layout.patch_map(patches, im.grid)  # (rows, cols, D)
        assert torch.allclose(hq[1, 3], b.replicated(grid[1, 3][None])[0], atol=1e-5)


def test_lm_logits_are_the_base_models_own(model):
    """Under the causal mask our pass (our embedding of the image, the backbone's positions, its
    deepstack inputs) gives the base model's own logits on the same prompt and pixels."""
    model = load_model(TINY[model.backbone.model_type], {"seg_attention": "causal"}, seed=3)
    p = model.processor
    im = p.image_input(_image(56, 56))
    batch = p.segmentation_batch([im], ["the red circle"])
    with torch.no_grad():
        ours = model(batch, return_lm_logits=True).lm_logits
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                  "pixel_values": batch.pixel_values}
        if model.backbone.model_type in ("qwen2_5_vl", "qwen3_vl"):
            kwargs.update(image_grid_thw=model.backbone.grid_thw(batch.grids, "cpu"),
                          mm_token_type_ids=(batch.input_ids == model.image_token_id).int())
        elif model.backbone.model_type == "smolvlm":  # (batch, images, 3, S, S)
            kwargs["pixel_values"] = batch.pixel_values[None]
        theirs = model.base(**kwargs).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


@pytest.mark.parametrize("name", QWEN)
def test_m_rope_positions_follow_the_image_grid(name):
    """Image tokens get (t, h, w) positions on their grid; text after the image continues from the
    grid's extent, not from the number of image tokens."""
    model = load_model(name)
    p = model.processor
    im = p.image_input(_image(90, 50))
    batch = p.segmentation_batch([im], ["the red circle"])
    pos = model.backbone.positions(batch.input_ids, batch.attention_mask, batch.grids, batch.image_index)
    img = batch.input_ids[0] == model.image_token_id
    h, w = im.grid[0] // 2, im.grid[1] // 2
    rows, cols = pos[1, 0, img], pos[2, 0, img]
    assert (rows - rows.min()).tolist() == [i for i in range(h) for _ in range(w)]
    assert (cols - cols.min()).tolist() == [j for _ in range(h) for j in range(w)]
    after = pos[0, 0, int(img.nonzero().max()) + 1]
    assert after == int(pos[0, 0, img].min()) + max(h, w)


def test_bidirectional_mask_reaches_the_image_tokens(model):
    """Under the segmentation mask the image tokens' states depend on the expression (they read
    [SEG]); under the causal mask they do not."""
    for attention, differs in (("bidirectional", True), ("causal", False)):
        m = load_model(TINY[model.backbone.model_type], {"seg_attention": attention}, seed=4)
        p = m.processor
        im = p.image_input(_image(56, 56))
        batch = p.segmentation_batch([im, im], ["the red circle", "the blue star"], [0, 0])
        with torch.no_grad():
            feats = m.encode_images(batch.pixel_values[: batch.pixel_values.shape[0] // 2], batch.grids[:1])
            embeds = m.embed(batch.input_ids, feats, batch.image_index)
            hidden = m._llm(embeds, batch.input_ids, batch.attention_mask, feats, batch.image_index,
                            attention == "bidirectional")
        img = hidden[batch.input_ids == m.image_token_id].reshape(2, -1, hidden.shape[-1])
        assert (not torch.allclose(img[0], img[1], atol=1e-6)) == differs, attention


@pytest.mark.parametrize("width,height", [(56, 56), (100, 40), (30, 90)])
@pytest.mark.parametrize("name", QWEN)
def test_native_resolution_masks_come_back_at_the_images_size(name, width, height):
    model = load_model(name)
    pred = Self1ePredictor(model)
    pred.set_image(_image(width, height))
    grid = pred._current()[0].grid
    assert abs(grid[1] / grid[0] - width / height) < 0.5 * width / height  # the aspect ratio is kept
    result = pred.predict("the red circle")
    assert result.mask.shape == (height, width)


def test_train_step_lora_save_load_predict_and_chat(model, tmp_path):
    """LoRA targets that exist on this backbone, one optimizer step that moves the adapters and the
    head, a save / load round trip that gives the same masks, and chat."""
    family = model.backbone.model_type
    m = load_model(TINY[family], seed=5)
    lora = LoraSettings(r=4, alpha=8)
    counts = check_lora_targets(m, lora)
    assert all(n > 0 for n in counts.values()) and any(k.startswith("vit_targets") for k in counts)
    params = configure_trainable(m, lora)
    assert any(".lora_" in n for n, p in m.named_parameters() if p.requires_grad)
    assert all(p.requires_grad for p in m.backbone.projector.parameters())  # train_full's projector / merger
    m.train()
    p = m.processor
    im = p.image_input(_image(56, 56))
    target = torch.zeros(p.loss_short_side, p.loss_short_side)
    target[10:40, 20:60] = 1
    rows = [p.conversation(p.seg_question("the red circle"), "Sure, [SEG].", p.n_tiles(im.grid))]
    batch = p.collate(rows, [im], [0], [target])
    before = {n: q.detach().clone() for n, q in m.named_parameters() if q.requires_grad}
    opt = torch.optim.AdamW(params, lr=1e-2)
    out = m(batch)
    assert torch.isfinite(out.loss) and out.lm_loss is not None and out.mask_loss is not None
    out.loss.backward()
    opt.step()
    moved = {n for n, q in m.named_parameters() if q.requires_grad and not torch.equal(before[n], q)}
    assert any(n.startswith("head.") for n in moved) and any(".lora_" in n for n in moved)
    m.eval()

    export_model(m, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.backbone.model_type == family
    image = _image(70, 40, seed=9)
    a, b = Self1ePredictor(m), Self1ePredictor(loaded)
    for pred in (a, b):
        pred.set_image(image)
    la, lb = a.predict_torch(["the red circle"]), b.predict_torch(["the red circle"])
    assert torch.allclose(la, lb, atol=1e-4)
    reply = b.chat("what color is the star?", max_new_tokens=4)
    assert reply.text and len(reply.token_ids) <= 4 and reply.history[-1]["content"] == reply.text


def test_chat_masks_equal_predict_on_the_canonical_answer(model):
    """When the answer is the canonical segmentation answer, chat's teacher-forced mask pass gives
    predict()'s mask (the mask pass runs under the segmentation mask, not a causal one)."""
    m = load_model(TINY[model.backbone.model_type], seed=6)
    pred = Self1ePredictor(m)
    pred.set_image(_image(60, 48))
    p = m.processor
    answer = p.format.inference_answer
    ids = p.prompt(p.seg_question("the red circle"), p.n_tiles(pred._current()[0].grid)) + p.encode_answer(answer)
    rows = p.rows_per_seg(ids, [-100] * len(ids))
    with torch.inference_mode():
        via_chat = pred._masks_for_rows(rows, ["the red circle"], len(ids) - len(p.encode_answer(answer)))
    direct = pred.predict("the red circle")
    assert np.array_equal(via_chat[0].mask, direct.mask) and via_chat[0].score == pytest.approx(direct.score, abs=1e-6)
    # the same pass under a plain causal mask gives another mask (the check can fail)
    causal = Self1ePredictor(load_model(TINY[model.backbone.model_type], {"seg_attention": "causal"}, seed=6))
    causal.set_image(_image(60, 48))
    assert not np.allclose(causal.predict_torch(["the red circle"]).numpy(),
                           pred.predict_torch(["the red circle"]).numpy(), atol=1e-4)


@pytest.mark.parametrize("name", QWEN)
def test_prefix_cache_and_image_size_on_native_resolution(name, tmp_path):
    """A causal model's cached prompt prefix (M-RoPE positions sliced with it) gives the uncached
    masks; set_image_size changes how large images are resized, and the checkpoint keeps it."""
    m = load_model(name, {"seg_attention": "causal"}, seed=7)
    assert m.supports_prefix_cache
    image = _image(64, 48)
    cached, plain = Self1ePredictor(m), Self1ePredictor(m, reuse_prefix=False)
    for pred in (cached, plain):
        pred.set_image(image)
    texts = ["the red circle", "the blue star on the left"]
    assert torch.allclose(cached.predict_torch(texts), plain.predict_torch(texts), atol=1e-5)
    before = m.processor.image_input(image).grid
    m.set_image_size(112)
    after = m.processor.image_input(image).grid
    assert after[0] * after[1] > 3 * before[0] * before[1]
    m.save_pretrained(tmp_path / "big")
    assert load_model(tmp_path / "big").processor.image_input(image).grid == after


@pytest.mark.parametrize("family_name", sorted(TINY))
def test_int8_quantizes_the_vit_layers_and_llm_and_keeps_the_compression_float(family_name):
    """Every family: int8 converts exactly the Linear layers of the ViT's layers and of the language
    model; the head, the compression (Qwen's merger inside the vision module, Qwen3-VL's deepstack
    mergers, SmolVLM's connector) and the LM head stay float with their weights; the masks follow
    float32's (logits correlated >= 0.999). Breakage: a merger quantized with its ViT."""
    from torch import nn

    from self1e.model import quantize as q

    fp, q8 = load_model(TINY[family_name], seed=3), load_model(TINY[family_name], seed=3, quantize="int8")
    parts, kept = q.quantized_parts(fp.backbone), q.float_parts(fp.backbone)
    expected = {n for part in parts for n, m in fp.named_modules()
                if n.startswith(part + ".") and isinstance(m, nn.Linear)}
    assert len(expected) >= 16 and set(q.quantized_modules(q8)) == expected
    assert not any(n.startswith(k + ".") or n == k for n in expected for k in kept)
    assert fp.backbone.float_paths()[0] == fp.backbone.projector_path
    for part in kept:
        linears = [(n, m) for n, m in q8.get_submodule(part).named_modules() if isinstance(m, nn.Linear)]
        assert linears, part
        for n, m in linears:
            ref = fp.get_submodule(part).get_submodule(n) if n else fp.get_submodule(part)
            assert m.weight.dtype == torch.float32 and torch.equal(m.weight, ref.weight)
    assert set(q.quantized_modules(load_model(TINY[family_name], quantize="int8-vit"))) == {
        n for n in expected if n.startswith(parts[0] + ".")}
    image = _image(64, 48)
    a, b = Self1ePredictor(fp), Self1ePredictor(q8)
    a.set_image(image)
    b.set_image(image)
    la, lb = (p.predict_torch(["the red circle", "the blue star"]) for p in (a, b))
    assert not torch.equal(la, lb)
    assert np.corrcoef(la.flatten().numpy(), lb.flatten().numpy())[0, 1] >= 0.999


@pytest.mark.parametrize("family_name", sorted(TINY))
def test_bnb_skip_patterns_keep_each_familys_compression_and_lm_head(family_name):
    """transformers' own matcher on each family's Linear names with our skip patterns: the LM head and
    the compression kept, every other Linear (the ViT's layers, the LLM) converted."""
    from torch import nn
    from transformers.quantizers.quantizers_utils import should_convert_module

    from self1e.model import quantize as q
    from self1e.model.backbones import FAMILIES

    m = load_model(TINY[family_name])
    adapter = FAMILIES[m.backbone.model_type]
    names = [n for n, mod in m.base.named_modules() if isinstance(mod, nn.Linear)]
    kept = {n for n in names if not should_convert_module(n, list(q.bnb_skip_modules(adapter)))}
    assert kept == {n for n in names if n == "lm_head" or any(n.startswith(p + ".") for p in adapter.float_paths())}
    converted = set(names) - kept
    assert converted and all(n.startswith((adapter.vision_path + ".", adapter.language_path + ".")) for n in converted)
    assert q.bnb_config("nf4", adapter).llm_int8_skip_modules == list(q.bnb_skip_modules(adapter))


@pytest.mark.parametrize("name", QWEN)
def test_several_objects_follow_the_documented_rule(name):
    """On M-RoPE backbones too: the first object's mask is the same with or without the second, and
    (isolate_objects) the second's does not depend on how the first was named; without the rule it does."""
    from self1e.model.processing import multi_answer

    got = {}
    for isolate in (True, False):
        m = load_model(name, {"isolate_objects": isolate}, seed=8)
        p = m.processor
        image = p.image_input(_image(64, 48, seed=3))
        n = p.n_tiles(image.grid)
        question = p.seg_question("two shapes")
        start = len(p.prompt(question, n))
        for first in ("the red circle", "the green square"):
            ids, lab = p.conversation(question, multi_answer([first, "the blue star"]), n)
            one, _ = p.conversation(question, f"{first} is [SEG]", n, close=False)
            rows = [(one, [-100] * len(one)), *p.rows_per_seg(ids, lab, start)]
            batch = p.collate(rows, [image], [0] * len(rows), answer_starts=[start] * len(rows))
            with torch.no_grad():
                got[isolate, first] = m(batch).mask_logits
    for isolate in (True, False):
        alone, together = got[isolate, "the red circle"][0], got[isolate, "the red circle"][1]
        assert torch.allclose(alone, together, atol=1e-5)  # the second object does not move the first
    second = float((got[True, "the red circle"][2] - got[True, "the green square"][2]).abs().max())
    leaky = float((got[False, "the red circle"][2] - got[False, "the green square"][2]).abs().max())
    assert second < 1e-6 and leaky > max(20 * second, 1e-5), (second, leaky)


def test_smolvlm_sub_images_and_global_image():
    """Several sub-images: the prompt lays them out as SmolVLM's processor does (row / column tokens,
    newlines, the global image last), the LLM sees all of them (our logits are the base model's own on
    that prompt), the head reads the sub-images stitched, and a cached prefix ends after the global image."""
    m = load_model("tiny:smolvlm", {"max_tiles": 4, "seg_attention": "causal"}, seed=9)
    p = m.processor
    im = p.image_input(_image(100, 40))
    rows, cols = im.grid
    assert (rows, cols) == (1, 2) and im.pixel_values.shape[0] == 3  # two sub-images + the global image
    text = p.tokenizer.decode(p.image_ids(im.grid))
    assert text.index("<row_1_col_1>") < text.index("<row_1_col_2>") < text.index("<global-img>")
    assert text.count("<image>") == 3 * p.tokens_per_tile
    batch = p.segmentation_batch([im], ["the red circle"])
    with torch.no_grad():
        ours = m(batch, return_lm_logits=True)
        theirs = m.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        pixel_values=batch.pixel_values[None]).logits
        feats = m.encode_images(batch.pixel_values, batch.grids)
    assert torch.allclose(ours.lm_logits, theirs, atol=1e-4)
    side = p.grid_side
    assert feats.f_v1[0].shape[:2] == (rows * side, cols * side)
    assert feats.f_v1_hq[0].shape[:2] == (rows * side * 4, cols * side * 4)  # alpha = 16
    assert ours.mask_logits[0].shape == (rows * side * 16, cols * side * 16)
    cached, plain = Self1ePredictor(m), Self1ePredictor(m, reuse_prefix=False)
    for pred in (cached, plain):
        pred.set_image(_image(100, 40))
    assert torch.allclose(cached.predict_torch(["the red circle"]), plain.predict_torch(["the red circle"]),
                          atol=1e-5)
    assert cached._prefix is not None and int(cached._prefix.input_ids[-1]) == p.img_end_id
    assert int((cached._prefix.input_ids == m.image_token_id).sum()) == 3 * p.tokens_per_tile


@pytest.mark.parametrize("tile,per_side", [(56, 2), (56, 1), (42, 3)])
def test_smolvlm_split_is_smolvlms_own(tile, per_side):
    """Our SmolVLM layout gives exactly the pixel values of transformers' SmolVLM image processor
    (longest edge to ``per_side`` sub-images, rounded up to whole sub-images, then the global image),
    for images of every shape, and the same grid as its patch count for a few hundred sizes."""
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    from self1e.model.layouts import SubImageLayout, subimage_grid

    theirs = SmolVLMImageProcessorPil(size={"longest_edge": per_side * tile}, max_image_size={"longest_edge": tile})
    ours = SubImageLayout(tile, 14, per_side * per_side + per_side - 1, factor=2)  # isqrt: per_side per side
    assert ours.per_side == per_side
    rng = np.random.default_rng(tile + per_side)
    for width, height in [(100, 40), (40, 100), (56, 56), (1, 1), (300, 7), (113, 57), (57, 113), (200, 200)]:
        im = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        out = theirs(images=[[im]], return_tensors="pt", return_row_col_info=True)
        got = ours.prepare(im)
        rows, cols = out["rows"][0][0], out["cols"][0][0]
        assert got.grid == ((rows, cols) if rows else (1, 1)), (width, height)
        assert got.pixel_values.shape == out["pixel_values"][0].shape
        assert torch.allclose(got.pixel_values, out["pixel_values"][0], atol=1e-5), (width, height)
    for width, height in rng.integers(1, 3000, (300, 2)).tolist():
        n, rows, cols = theirs.get_number_of_image_patches(height, width, {})
        assert subimage_grid(width, height, per_side, tile) == ((rows, cols) if n else (1, 1)), (width, height)


@pytest.mark.parametrize("width,height", [(56, 56), (100, 40), (3000, 3), (2, 900), (1, 1)])
def test_native_resize_keeps_the_area_and_whole_groups(width, height):
    """Every image size becomes whole 2 x 2 groups of patches, within 1.5 x the target area, its
    aspect ratio kept where the area allows."""
    layout = load_model("tiny:qwen2_5_vl").processor.image_layout
    w, h = layout.resized(width, height)
    unit = layout.patch_size * layout.merge
    assert w % unit == 0 and h % unit == 0 and w >= unit and h >= unit
    assert w * h <= 1.5 * layout.pixels
    if min(width, height) * 4 >= max(width, height):  # a moderate aspect ratio is kept
        assert abs(w / h - width / height) <= 0.5 * width / height


def test_random_base_points_the_padding_row_at_the_tiny_tokenizers_pad(tmp_path):
    """``random:`` on a real config: the real pad_token_id (SmolVLM2's 2, the tiny <|im_start|>) must not
    leave a zero embedding row under a token every prompt starts with (it gave NaN gradients at depth)."""
    import json
    from pathlib import Path

    from self1e.model.registry import build_random_base

    raw = json.loads((Path(__file__).resolve().parents[2] / "configs" / "models" / "smolvlm2-2.2b-instruct"
                      / "config.json").read_text())
    raw["text_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                              num_key_value_heads=4)
    raw["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=56, patch_size=14)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    base, tok = build_random_base(str(tmp_path))
    assert raw["text_config"]["pad_token_id"] == 2 and base.config.text_config.pad_token_id == tok.pad_token_id
    start = tok.convert_tokens_to_ids("<|im_start|>")
    assert float(base.get_input_embeddings().weight[start].abs().sum()) > 0
