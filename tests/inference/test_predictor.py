
import numpy as np
import pytest
import torch
from PIL import Image

from self1e import Self1ePredictor


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")


def test_predict_gives_masks_at_original_size_for_any_input_kind(predictor, tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (37, 91, 3), dtype=np.uint8)
    path = tmp_path / "im.png"
    Image.fromarray(arr).convert("P").save(path)  # palette mode on disk
    for src in (arr, Image.fromarray(arr).convert("LA"), str(path), arr[..., 0]):
        predictor.set_image(src)
        r = predictor.predict("the red circle")
        assert r.mask.shape == (37, 91) and r.mask.dtype == bool and r.logits.shape == (37, 91)
        assert np.array_equal(r.mask, r.logits > 0) and 0.0 <= r.score <= 1.0


def test_predict_batch_equals_single_predictions(predictor):
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    texts = ["the red circle", "all the blue boxes on the left", "the star"]
    batch = predictor.predict_batch(texts)
    for t, r in zip(texts, batch):
        single = predictor.predict(t)
        assert np.allclose(single.logits, r.logits, atol=1e-4)


def test_predict_many_matches_per_image_calls(predictor):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (30 + 10 * i, 50, 3), dtype=np.uint8) for i in range(3)]
    texts = ["the circle", "the box", "the star"]
    many = predictor.predict_many(images, texts)
    for im, t, r in zip(images, texts, many):
        predictor.set_image(im)
        assert np.allclose(predictor.predict(t).logits, r.logits, atol=1e-4)


def test_bad_inputs_raise_clear_errors(predictor, tmp_path):
    fresh = Self1ePredictor(predictor.model)
    with pytest.raises(ValueError, match="set_image"):
        fresh.predict("the circle")
    predictor.set_image(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        predictor.predict("   ")
    with pytest.raises(ValueError, match="not found"):
        predictor.set_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="shape"):
        predictor.set_image(np.zeros((4, 4, 7), np.uint8))


def forced(predictor, answer: str, monkeypatch):
    """Make generation return ``answer`` (then end-of-turn), as a trained model would."""
    p = predictor.processor
    ids = p.encode_answer(answer) + [p.tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def generate(**kwargs):
        assert "inputs_embeds" in kwargs and "pixel_values" not in kwargs  # the cached image features
        return torch.tensor([ids])

    monkeypatch.setattr(predictor.model.base, "generate", generate)


def test_chat_with_the_canonical_answer_gives_predicts_mask(predictor, monkeypatch):
    """The chat mask pass runs under the segmentation attention mask, exactly as predict() does."""
    image = np.random.default_rng(5).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    predictor.set_image(image)
    forced(predictor, "[SEG].", monkeypatch)
    response = predictor.chat(predictor.processor.seg_question("the red circle"))
    assert response.text == "[SEG]." and len(response.segments) == 1
    expected = predictor.predict("the red circle")
    np.testing.assert_allclose(response.segments[0].logits, expected.logits, atol=1e-5)
    assert np.array_equal(response.segments[0].mask, expected.mask)


def test_chat_gives_one_mask_per_seg_with_its_phrase(predictor, monkeypatch):
    image = np.random.default_rng(6).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    predictor.set_image(image)
    answer = "the red circle is [SEG] and the blue star is [SEG]."
    forced(predictor, answer, monkeypatch)
    request = "the red circle and the blue star"
    response = predictor.chat(predictor.processor.seg_question(request))
    assert [seg.text for seg in response.segments] == ["the red circle", "the blue star"]
    expected = predictor.predict_objects(request, ["the red circle", "the blue star"])
    for got, want in zip(response.segments, expected, strict=True):
        np.testing.assert_allclose(got.logits, want.logits, atol=1e-5)
    assert not np.allclose(response.segments[0].logits, response.segments[1].logits)
    assert response.history == [{"role": "user", "content": predictor.processor.seg_question(request)},
                                {"role": "assistant", "content": answer}]


def test_chat_turns_without_seg_and_multi_turn_history(predictor, monkeypatch):
    predictor.set_image(np.zeros((20, 20, 3), np.uint8))
    forced(predictor, "Red.", monkeypatch)
    first = predictor.chat("What color is the star?")
    assert first.text == "red." and first.segments == []  # the tiny tokenizer lower-cases
    forced(predictor, "[SEG].", monkeypatch)
    second = predictor.chat("Where is it?", history=first.history)
    assert len(second.history) == 4 and len(second.segments) == 1
    p = predictor.processor
    prompt = p.prompt("Where is it?", 1, first.history)
    assert prompt.count(p.img_start_id) == 1  # the image sits in the first turn only
    assert prompt.count(p.tokenizer.convert_tokens_to_ids("<|im_start|>")) == 4
    with pytest.raises(ValueError, match="role"):
        p.prompt("x", 1, [{"role": "system", "content": "hi"}])
    with pytest.raises(ValueError, match="empty message"):
        predictor.chat("  ")


def test_free_generation_runs_on_the_cached_image(predictor):
    predictor.set_image(np.zeros((20, 20, 3), np.uint8))
    response = predictor.chat("What color is the star?", max_new_tokens=4)
    assert len(response.token_ids) <= 4 and isinstance(response.text, str)
    sampled = predictor.chat("What color is the star?", max_new_tokens=4, do_sample=True, temperature=0.7, seed=1)
    again = predictor.chat("What color is the star?", max_new_tokens=4, do_sample=True, temperature=0.7, seed=1)
    assert sampled.token_ids == again.token_ids  # seeded sampling repeats


@pytest.mark.parametrize("answer, phrases", [
    ("the red circle is [SEG] and the blue star is [SEG].", ["the red circle", "the blue star"]),
    ("Sure, it is [SEG].", [None]),
    ("[SEG].", [None]),
    ("Sure, the red circle is [SEG], the cross is [SEG] and the star is [SEG].",
     ["the red circle", "the cross", "the star"]),
    ("red.", []),
])
def test_seg_phrases(answer, phrases):
    from self1e.inference import seg_phrases

    assert seg_phrases(answer) == phrases


def test_predict_images_matches_one_image_at_a_time(predictor):
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((40, 60), (56, 56), (30, 20))]
    texts = [["the red circle", "the blue star"], [], ["all the boxes"]]
    together = predictor.predict_images(images, texts)
    assert [len(r) for r in together] == [2, 0, 1]
    for image, group, results in zip(images, texts, together):
        if not group:
            continue
        predictor.set_image(image)
        for alone, joint in zip(predictor.predict_batch(group), results):
            assert joint.mask.shape == image.shape[:2] and joint.text == alone.text
            assert np.allclose(joint.logits, alone.logits, atol=1e-4)
    with pytest.raises(ValueError, match="3 images but 2 lists"):
        predictor.predict_images(images, texts[:2])
