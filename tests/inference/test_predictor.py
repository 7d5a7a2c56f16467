
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


def test_chat_answers_and_segments_when_seg_is_emitted(predictor):
    predictor.set_image(np.zeros((20, 20, 3), np.uint8))
    answer, result = predictor.chat("What color is the star?", max_new_tokens=4)
    assert isinstance(answer, str)
    model = predictor.model
    # Force the model to emit [SEG] first: its mask then has the image's size.
    with torch.no_grad():
        model.base.lm_head.bias = torch.nn.Parameter(torch.zeros(model.base.lm_head.out_features))
        model.base.lm_head.bias[model.seg_token_id] = 1e4
    try:
        answer, result = predictor.chat("Where is the star?", max_new_tokens=2)
    finally:
        model.base.lm_head.bias = None
    assert "[SEG]" in answer and result is not None and result.mask.shape == (20, 20)
