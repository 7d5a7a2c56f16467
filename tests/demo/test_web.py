"""The web page's logic (plain functions; gradio itself is not needed)."""
import numpy as np
import pytest

from self1e.common.overlay import draw_masks
from self1e.inference import Self1ePredictor


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")


def test_web_demo_functions_segment_and_chat(predictor):
    from self1e.demo.web import chat_turn, segment_expressions

    arr = np.random.default_rng(3).integers(0, 255, (30, 44, 3), dtype=np.uint8)
    picture, rows = segment_expressions(predictor, arr, "the red circle\n\n  all the boxes  \n")
    assert picture.size == (44, 30) and [r["expression"] for r in rows] == ["the red circle", "all the boxes"]
    predictor.set_image(arr)
    assert rows[1]["pixels"] == int(predictor.predict("all the boxes").mask.sum())
    with pytest.raises(ValueError, match="expression"):
        segment_expressions(predictor, arr, " \n ")
    with pytest.raises(ValueError, match="image"):
        segment_expressions(predictor, None, "the star")
    answer, picture = chat_turn(predictor, arr, "What color is the star?")
    assert isinstance(answer, str)


def test_web_page_draws_masks_with_the_shared_overlay_code(predictor):
    from self1e.demo.web import PALETTE, segment_expressions

    arr = np.random.default_rng(4).integers(0, 255, (30, 44, 3), dtype=np.uint8)
    picture, rows = segment_expressions(predictor, arr, "the red circle\nall the boxes")
    predictor.set_image(arr)
    masks = [r.mask for r in predictor.predict_batch(["the red circle", "all the boxes"])]
    expected = draw_masks(arr_image(arr), masks, PALETTE[:2])
    assert np.array_equal(np.asarray(picture), np.asarray(expected))
    assert [r["colour"] for r in rows] == ["#{:02x}{:02x}{:02x}".format(*c) for c in PALETTE[:2]]


def arr_image(arr):
    from PIL import Image

    return Image.fromarray(arr)
