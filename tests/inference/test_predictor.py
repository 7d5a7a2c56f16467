import json

import numpy as np
import pytest
import torch
from PIL import Image

from self1e import Self1ePredictor
from self1e.cli import main


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


def write_image(path, w=90, h=40):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_segment_cli_writes_masks_overlay_and_rle(tiny_model_dir, tmp_path):
    from pycocotools import mask as mask_utils

    img = write_image(tmp_path / "wide.jpg")
    rc = main(["segment", "--model", str(tiny_model_dir), "--image", str(img), "--text", "the red circle",
               "--out", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "o.png"),
               "--json", str(tmp_path / "r.json")])
    assert rc == 0
    mask = np.asarray(Image.open(tmp_path / "m.png"))
    assert mask.shape == (40, 90) and set(np.unique(mask)) <= {0, 255}
    ov = Image.open(tmp_path / "o.png")
    assert ov.width == 90 and ov.height >= 40  # the overlay may add a caption band
    data = json.loads((tmp_path / "r.json").read_text())
    seg = data["results"][0]["segmentation"]
    decoded = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask > 0)

    rc = main(["segment", "--model", str(tiny_model_dir), "--image", str(img), "--text", "the circle",
               "--text", "the box", "--out", str(tmp_path / "many")])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "many").iterdir()) == ["0.png", "1.png"]


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty_text", "missing_model"])
def test_segment_cli_bad_input_exits_nonzero_without_traceback(case, tiny_model_dir, tmp_path, capsys):
    img = write_image(tmp_path / "ok.png")
    model, text = str(tiny_model_dir), "the circle"
    if case == "missing":
        img = tmp_path / "nope.png"
    elif case == "corrupt":
        img = tmp_path / "bad.png"
        img.write_bytes(write_image(tmp_path / "src.png").read_bytes()[:60])
    elif case == "empty_text":
        text = "  "
    else:
        model = str(tmp_path / "no_model")
    rc = main(["segment", "--model", model, "--image", str(img), "--text", text, "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and "error:" in err
    expected = {"missing": "nope.png", "corrupt": "bad.png", "empty_text": "empty", "missing_model": "no_model"}[case]
    assert expected in err
    assert not (tmp_path / "m.png").exists()


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
