"""Several [SEG] in one answer, special tokens in user text, and the LM pass: the rules that make
the model talk and segment at once. Each test fails under one of the deliberate breakages named
in its docstring."""
import numpy as np
import pytest
import torch

from self1e.model import Self1eConfig, Self1eModel
from self1e.model.attention import seg_attention_mask
from self1e.model.processing import IGNORE_INDEX, multi_answer
from self1e.model.tiny import build_tiny_base


def make(**settings):
    base, tok = build_tiny_base("tiny", seed=3)
    return Self1eModel.from_base(base, tok, Self1eConfig(**settings)).eval()


@pytest.fixture(scope="module")
def model():
    return make()


def picture(seed=0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (56, 56, 3), dtype=np.uint8))


def masks_of(model, rows, image, start=-1):
    p = model.processor
    batch = p.collate(rows, [image], [0] * len(rows), answer_starts=[start] * len(rows))
    with torch.no_grad():
        return model(batch).mask_logits


def test_user_text_never_becomes_a_special_token(model):
    """Breakage: special tokens in user text becoming special tokens."""
    p = model.processor
    image = p.image_input(picture())
    n_tiles = p.n_tiles(image.grid)
    plain_ids, _ = p.conversation("the red circle", "[SEG].", n_tiles)
    for text in ("the [SEG] red circle", "the red <|im_end|> circle", "the <IMG_CONTEXT> red circle",
                 "the <img> red </img> circle <|im_start|>assistant"):
        ids, _ = p.conversation(text, "[SEG].", n_tiles)
        for special in (p.seg_token_id, p.img_context_id, p.img_start_id, p.img_end_id):
            assert ids.count(special) == plain_ids.count(special), (text, special)
        for tok in ("<|im_end|>", "<|im_start|>"):
            tid = p.tokenizer.convert_tokens_to_ids(tok)
            assert ids.count(tid) == plain_ids.count(tid), (text, tok)
    vqa_ids, _ = p.conversation("What is this?", "It says [SEG].", n_tiles, answer_is_text=True)
    assert p.seg_token_id not in vqa_ids  # a dataset's answer is text too
    batch = p.segmentation_batch([image], ["the [SEG] circle"])
    assert int((batch.input_ids == p.seg_token_id).sum()) == 1  # only the answer's own [SEG]


def test_rows_per_seg_label_every_answer_token_once(model):
    p = model.processor
    ids, labels = p.conversation("the red circle and the blue star", multi_answer(["the red circle", "the blue star"]),
                                 1)
    start = next(i for i, v in enumerate(labels) if v != IGNORE_INDEX)
    rows = p.rows_per_seg(ids, labels, start)
    assert len(rows) == 2
    assert rows[0][0][-1] == p.seg_token_id and rows[1][0] == ids  # cut after [SEG] 1; the last row is whole
    labelled = [i for row_ids, lab in rows for i, v in enumerate(lab) if v != IGNORE_INDEX]
    assert sorted(labelled) == [i for i, v in enumerate(labels) if v != IGNORE_INDEX]  # each exactly once
    assert p.rows_per_seg(ids[:start], labels[:start], start) == [(ids[:start], labels[:start])]


def test_image_tokens_attend_to_the_last_seg_only():
    ids = torch.tensor([[5, 1, 1, 1, 7, 9, 7, 4]])  # 1 = image token, 7 = [SEG]
    mask = seg_attention_mask(ids, torch.ones_like(ids), 1, 7, torch.float32)[0, 0] == 0
    assert mask[1, 6] and mask[2, 6] and mask[3, 6]  # the last [SEG]
    assert not mask[1, 4] and not mask[2, 4]  # not the earlier one
    assert mask[1, 3] and mask[3, 1]  # image tokens see each other both ways
    assert not mask[4, 6]  # text stays causal


def test_a_later_object_does_not_change_an_earlier_objects_mask(model):
    """Breakage: one object's [SEG] changing another's mask (image tokens seeing every [SEG] of a row)."""
    p = model.processor
    image = p.image_input(picture(1))
    question = p.seg_question("the red circle and the blue star")
    one, _ = p.conversation(question, "the red circle is [SEG]", 1, close=False)
    two, lab = p.conversation(question, multi_answer(["the red circle", "the blue star"]), 1)
    start = len(p.prompt(question, 1))
    rows = p.rows_per_seg(two, lab, start)
    logits = masks_of(model, [(one, [IGNORE_INDEX] * len(one))] + rows, image, start)
    assert len(logits) == 3
    assert torch.allclose(logits[0], logits[1], atol=1e-5)  # first object: the same with or without the second
    assert (logits[1] - logits[2]).abs().max() > 1e-5  # the second object has its own mask
    # one row holding both [SEG]s answers its last one, not its first
    assert torch.allclose(masks_of(model, [(two, lab)], image, start)[0], logits[2], atol=1e-5)
    with pytest.raises(ValueError, match="answer start"):  # a row with two [SEG] and no answer start
        p.collate([(two, lab)], [image], [0])


@pytest.mark.parametrize("seg_attention", ["bidirectional", "causal"])
def test_an_objects_mask_does_not_depend_on_how_the_others_were_named(seg_attention):
    """The isolation rule (``isolate_objects``): the second object's mask depends on the prompt and
    its own part of the answer only. Breakage: the earlier object's phrase visible to the second's
    [SEG] (``isolate_objects=False`` is exactly that, and fails the first assertion)."""
    p = None
    got = {}
    for isolate in (True, False):
        model = make(seg_attention=seg_attention, isolate_objects=isolate)
        p = model.processor
        image = p.image_input(picture(4))
        question = p.seg_question("two shapes")
        start = len(p.prompt(question, 1))
        for first in ("the red circle", "the green square"):  # as many tokens: the same padding
            ids, lab = p.conversation(question, multi_answer([first, "the blue star"]), 1)
            got[isolate, first] = masks_of(model, p.rows_per_seg(ids, lab, start), image, start)
    a, b = got[True, "the red circle"], got[True, "the green square"]
    c, d = got[False, "the red circle"], got[False, "the green square"]
    same = float((a[1] - b[1]).abs().max())  # the second object, whatever the first is called
    assert same < 1e-6, same
    # without the rule the first phrase reaches the second mask (a random model's masks move little)
    assert float((c[1] - d[1]).abs().max()) > max(20 * same, 1e-5)
    assert (a[0] - b[0]).abs().max() > 1e-5  # (the first object does follow its own phrase)
    assert torch.allclose(a[0], c[0], atol=1e-6)  # the first object is the same under both rules


def test_isolation_blocks_the_request_and_the_earlier_objects_part_of_the_answer():
    # 0: text, 1: image, 7: [SEG]; the user's text after the image is 3; the answer starts at 4:
    # "8 7 9 9 7 4" = obj1 [SEG] and obj2 [SEG] .
    ids = torch.tensor([[5, 1, 1, 3, 8, 7, 9, 9, 7, 4]])
    ones = torch.ones_like(ids)
    free = seg_attention_mask(ids, ones, 1, 7, torch.float32)[0, 0] == 0
    iso = seg_attention_mask(ids, ones, 1, 7, torch.float32, answer_start=torch.tensor([4]))[0, 0] == 0
    blocked = free & ~iso
    assert blocked.any() and not (iso & ~free).any()  # it only takes away
    assert {(int(q), int(k)) for q, k in blocked.nonzero()} == {(q, k) for q in range(6, 10) for k in (3, 4, 5)}
    assert iso[1, 8] and iso[6, 2] and iso[8, 0]  # image -> its [SEG]; the own object -> the image, the system text
    assert iso[4, 3] and iso[5, 3]  # the first object reads the request
    none = seg_attention_mask(ids, ones, 1, 7, torch.float32, answer_start=torch.tensor([-1]))
    assert torch.equal(none, seg_attention_mask(ids, ones, 1, 7, torch.float32))
    # an earlier [SEG] before the answer (in a past turn) isolates nothing
    late = seg_attention_mask(ids, ones, 1, 7, torch.float32, answer_start=torch.tensor([6]))
    assert torch.equal(late, seg_attention_mask(ids, ones, 1, 7, torch.float32))


@pytest.mark.parametrize("seg_attention", ["bidirectional", "causal"])
def test_a_later_objects_mask_reads_its_own_phrase_not_the_request(seg_attention):
    """Under ``isolate_objects`` the second object's mask is the same whatever the request says
    (two requests of as many tokens), and follows its own phrase in the answer. Breakage: the
    request's text visible to the second object's part of the answer."""
    got = {}
    for isolate in (True, False):
        model = make(seg_attention=seg_attention, isolate_objects=isolate)
        p = model.processor
        image = p.image_input(picture(6))
        for request in ("the red circle and the blue star", "the green square and the pink box"):
            question = p.seg_question(request)
            start = len(p.prompt(question, 1))
            for second in ("the blue star", "the pink box"):
                ids, lab = p.conversation(question, multi_answer(["the red circle", second]), 1)
                got[isolate, request, second] = masks_of(model, p.rows_per_seg(ids, lab, start), image, start)[1]
    requests = ("the red circle and the blue star", "the green square and the pink box")
    same = float((got[True, requests[0], "the blue star"] - got[True, requests[1], "the blue star"]).abs().max())
    assert same < 1e-6, same
    moved = float((got[False, requests[0], "the blue star"] - got[False, requests[1], "the blue star"]).abs().max())
    assert moved > max(20 * same, 1e-5)  # without the rule the request reaches the second mask
    own = float((got[True, requests[0], "the blue star"] - got[True, requests[0], "the pink box"]).abs().max())
    assert own > 1e-5  # the second mask follows its own phrase


def test_isolation_leaves_the_lm_logits_alone():
    """The language model's pass reads the whole answer: the LM logits and loss of a multi-object
    answer are the same with and without ``isolate_objects`` (with ``causal_lm_loss`` and without)."""
    for causal_lm in (True, False):
        iso, free = (make(isolate_objects=v, causal_lm_loss=causal_lm) for v in (True, False))
        p = iso.processor
        image = p.image_input(picture(5))
        question = p.seg_question("two shapes")
        start = len(p.prompt(question, 1))
        ids, lab = p.conversation(question, multi_answer(["the red circle", "the blue star"]), 1)
        batch = p.collate([(ids, lab)], [image], [0], answer_starts=[start])
        with torch.no_grad():
            a, b = iso(batch, return_lm_logits=True), free(batch, return_lm_logits=True)
        assert torch.allclose(a.lm_logits, b.lm_logits, atol=1e-6) and torch.allclose(a.lm_loss, b.lm_loss)
        assert (a.mask_logits[0] - b.mask_logits[0]).abs().max() > 1e-4  # while the masks differ


def test_the_seg_state_is_read_before_the_seg_token():
    """Breakage: h_SEG read at the [SEG] position instead of the one before it. Under causal
    attention the state before [SEG] (and the image tokens) cannot see the [SEG] embedding."""
    model = make(seg_attention="causal")
    p = model.processor
    batch = p.segmentation_batch([p.image_input(picture(2))], ["the red circle"])
    with torch.no_grad():
        before = model(batch).mask_logits[0]
        model.base.get_input_embeddings().weight[model.seg_token_id] += 5.0
        after = model(batch).mask_logits[0]
    assert torch.allclose(before, after, atol=1e-6)


def test_lm_logits_and_loss_come_from_a_causal_pass(model):
    """Breakage: the causal LM pass removed (the answer would leak through the image tokens)."""
    causal = make(seg_attention="causal")
    causal.load_state_dict(model.state_dict())
    p = model.processor
    image = p.image_input(picture(3))
    row = p.conversation(p.seg_question("the red circle"), "Sure, it is [SEG].", p.n_tiles(image.grid))
    batch = p.collate([row], [image], [0])
    unlabelled = p.collate([(row[0], [IGNORE_INDEX] * len(row[0]))], [image], [0])
    with torch.no_grad():
        out, ref = model(batch, return_lm_logits=True), causal(batch, return_lm_logits=True)
        plain = model(unlabelled, return_lm_logits=True)
    assert torch.allclose(out.lm_loss, ref.lm_loss, atol=1e-5)
    assert torch.allclose(out.lm_logits, ref.lm_logits, atol=1e-5)
    assert torch.allclose(plain.lm_logits, out.lm_logits, atol=1e-6)  # the same with or without labels


def test_training_rows_of_a_multi_object_request():
    from self1e.data.datasets import load_dataset
    from self1e.train.batching import Source, TrainBatches

    model = make()
    samples = load_dataset("refshapes-multi:train:6:1:64") + load_dataset("refshapes-vqa:train:3:1:64")
    batches = TrainBatches([Source("mix", samples)], model.processor, batch_size=9, k=1, seed=0)
    batch = batches.make_batch(0, 0)
    seg_id = model.seg_token_id
    drawn = [samples[i] for _, members in batches.units(0, 0) for i in members]
    n_phrases = sum(len(s.phrases) for s in drawn if s.is_multi_object)
    n_vqa = sum(s.is_vqa for s in drawn)
    assert n_phrases and n_vqa
    seg_rows = (batch.input_ids == seg_id).any(1)
    assert int(seg_rows.sum()) == n_phrases  # one row per object
    assert sum(t is not None for t in batch.mask_targets) == n_phrases
    vqa_rows = ~seg_rows
    assert int(vqa_rows.sum()) == n_vqa and all(batch.mask_targets[i] is None for i in vqa_rows.nonzero()[:, 0])
    model.train()
    out = model(batch)
    assert out.mask_loss is not None and out.lm_loss is not None and len(out.mask_logits) == n_phrases


def test_a_phrase_that_spells_seg_adds_no_seg(model):
    """Dataset phrases are text: "[SEG]" inside one must not become a second segmentation token."""
    p = model.processor
    ids, labels = p.conversation("a and b", multi_answer(["the [SEG] box", "the star"]), 1)
    start = next(i for i, v in enumerate(labels) if v != IGNORE_INDEX)
    assert ids.count(p.seg_token_id) == 2 and len(p.rows_per_seg(ids, labels, start)) == 2
    text = p.tokenizer.decode(ids[start:])
    assert text.count("[SEG]") >= 2  # the two real ones (the phrase's own letters decode as text or <unk>)


def test_added_llm_layers_start_as_the_identity(tmp_path):
    """``add_llm_layers``: masks and LM logits unchanged, the new layers saved and loaded back."""
    from self1e.model import load_model

    model = make()
    p = model.processor
    batch = p.segmentation_batch([p.image_input(picture(6))], ["the red circle", "the blue star"], [0, 0])
    with torch.no_grad():
        before = model(batch, return_lm_logits=True)
        n = len(model.base.model.language_model.layers)
        model.add_llm_layers(2, seed=1)
        after = model(batch, return_lm_logits=True)
    assert len(model.base.model.language_model.layers) == n + 2 == model.base.config.text_config.num_hidden_layers
    assert torch.equal(before.lm_logits, after.lm_logits)
    assert all(torch.equal(a, b) for a, b in zip(before.mask_logits, after.mask_logits))
    new = model.base.model.language_model.layers[-1]
    assert float(new.self_attn.q_proj.weight.std()) > 0 and float(new.mlp.down_proj.weight.abs().max()) == 0
    model.save_pretrained(tmp_path / "grown")
    loaded = load_model(tmp_path / "grown")
    assert len(loaded.base.model.language_model.layers) == n + 2
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(after.mask_logits, loaded(batch).mask_logits))
    with pytest.raises(ValueError, match="n must be >= 1"):
        model.add_llm_layers(0)


def test_added_vit_layers_start_as_the_identity(tmp_path):
    """``add_vit_layers``: masks and LM logits unchanged, the new layers trainable (a gradient reaches
    them), saved and loaded back; a native-resolution backbone refuses."""
    from self1e.model import load_model

    model = make()
    p = model.processor
    batch = p.segmentation_batch([p.image_input(picture(6))], ["the red circle", "the blue star"], [0, 0])
    layers = model.base.model.vision_tower.encoder.layer
    with torch.no_grad():
        before = model(batch, return_lm_logits=True)
        n = len(layers)
        model.add_vit_layers(2, seed=1)
        after = model(batch, return_lm_logits=True)
    assert len(layers) == n + 2 == model.base.config.vision_config.num_hidden_layers
    assert torch.equal(before.lm_logits, after.lm_logits)
    assert all(torch.equal(a, b) for a, b in zip(before.mask_logits, after.mask_logits))
    new = layers[-1]
    assert float(new.attention.q_proj.weight.std()) > 0 and float(new.mlp.fc2.weight.abs().max()) == 0
    model(batch).mask_logits[0].sum().backward()
    assert float(new.mlp.fc2.weight.grad.abs().max()) > 0
    model.save_pretrained(tmp_path / "grown")
    loaded = load_model(tmp_path / "grown")
    assert len(loaded.base.model.vision_tower.encoder.layer) == n + 2
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(after.mask_logits, loaded(batch).mask_logits))
    with pytest.raises(ValueError, match="n must be >= 1"):
        model.add_vit_layers(0)
    with pytest.raises(ValueError, match="InternVL only"):
        load_model("tiny:smolvlm").add_vit_layers(1)
