"""The API's contract: shapes, RLE equal to the predictor's masks, limits, errors, chat."""
import base64
import io
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from self1e.serve.codec import Limits

from .conftest import b64, client_for, png_bytes, scene

TEXTS = ["the red circle", "all the blue boxes on the left"]


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_health_info_and_examples(predictor):
    with client_for(predictor) as c:
        health = c.get("/healthz").json()
        assert health["ready"] is True and health["model"] == "tiny" and health["device"] == "cpu"
        info = c.get("/v1/info").json()
        assert info["limits"]["max_texts"] == 16 and "note" in info["model"]
        examples = c.get("/v1/examples").json()
        assert len(examples) >= 4 and all(e["expressions"] and e["image"].startswith("/examples/") for e in examples)
        picture = c.get(examples[0]["image"])
        assert picture.status_code == 200 and Image.open(io.BytesIO(picture.content)).size == (224, 224)
        assert c.get("/").status_code == 200 and "self1e" in c.get("/").text
        assert "/v1/segment" in c.get("/openapi.json").json()["paths"] and "/v1/chat" in c.get("/api").text


@pytest.mark.parametrize("form", [False, True])
def test_segment_returns_the_predictors_masks_as_rle(predictor, form):
    image = scene(1)
    data = png_bytes(image)
    with client_for(predictor) as c:
        if form:
            r = c.post("/v1/segment", files={"image": ("x.png", data, "image/png")},
                       data={"text": TEXTS})
        else:
            r = c.post("/v1/segment", json={"image": b64(data), "texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (72, 56) and [x["text"] for x in body["results"]] == TEXTS
    predictor.set_image(image)
    for item, want in zip(body["results"], predictor.predict_batch(TEXTS)):
        mask = decode(item["rle"])
        assert mask.shape == (56, 72) and np.array_equal(mask, want.mask)
        assert item["empty"] == want.empty and abs(item["score"] - want.score) < 1e-3
        assert item["pixels"] == int(want.mask.sum())
        if not want.empty:
            ys, xs = np.nonzero(want.mask)
            assert item["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_render_adds_the_pages_pictures(predictor):
    with client_for(predictor) as c:
        body = c.post("/v1/segment", json={"image": b64(png_bytes(scene(2))), "texts": TEXTS, "render": True}).json()
    colours = [x["colour"] for x in body["results"]]
    assert len(set(colours)) == 2 and all(len(c) == 7 and c.startswith("#") for c in colours)
    for key in ("overlay", "mask_view"):
        png = Image.open(io.BytesIO(base64.b64decode(body[key].split(",", 1)[1])))
        assert png.size == (72, 56)
    first = Image.open(io.BytesIO(base64.b64decode(body["results"][0]["mask_png"].split(",", 1)[1])))
    assert np.array_equal(np.asarray(first) > 0, decode(body["results"][0]["rle"]))


def test_large_uploads_are_downscaled_for_the_model_with_masks_at_full_size(predictor):
    image = scene(3, size=(200, 150))
    with client_for(predictor, limits=Limits(model_pixels=5000)) as c:
        body = c.post("/v1/segment", json={"image": b64(png_bytes(image)), "texts": TEXTS[:1]}).json()
    assert (body["width"], body["height"]) == (200, 150)
    w, h = body["model_size"]
    assert w * h <= 5000 and abs(w / h - 200 / 150) < 0.05
    small = Image.fromarray(image).resize((w, h), Image.BILINEAR)
    predictor.set_image(small)
    want = np.asarray(Image.fromarray(predictor.predict(TEXTS[0]).mask.astype(np.uint8) * 255)
                      .resize((200, 150), Image.NEAREST)) > 127
    assert np.array_equal(decode(body["results"][0]["rle"]), want)


BAD = {
    "not an image": ({"image": b64(b"hello, not a picture"), "texts": TEXTS}, 422, "cannot read the uploaded image"),
    "truncated png": ({"image": b64(png_bytes(scene(4))[:60]), "texts": TEXTS}, 422, "uploaded image"),
    "empty image": ({"image": "", "texts": TEXTS}, 422, "'image' must be a non-empty base64"),
    "bad base64": ({"image": "@@@not base64@@@", "texts": TEXTS}, 422, "not valid base64"),
    "no texts": ({"image": b64(png_bytes(scene(4))), "texts": ["  "]}, 422, "no expression"),
    "texts not a list": ({"image": b64(png_bytes(scene(4))), "texts": 3}, 422, "list of strings"),
    "too many texts": ({"image": b64(png_bytes(scene(4))), "texts": ["the red circle"] * 17}, 422,
                       "the limit is 16"),
    "text too long": ({"image": b64(png_bytes(scene(4))), "texts": ["a" * 2001]}, 422, "2,000 characters"),
    "too many bytes": ({"image": b64(png_bytes(scene(5, size=(300, 300)))), "texts": TEXTS}, 413, "bytes"),
    "too many pixels": ({"image": b64(png_bytes(Image.new("RGB", (120, 100)))), "texts": TEXTS}, 413,
                        "over the limit of 10,000 pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_a_json_error_naming_the_problem(predictor, case, caplog):
    body, status, words = BAD[case]
    with caplog.at_level(logging.WARNING), client_for(predictor, limits=Limits(max_upload_bytes=100_000,
                                                                                max_pixels=10_000)) as c:
        r = c.post("/v1/segment", json=body)
        assert r.status_code == status, r.text
        assert words in r.json()["error"]["message"] and r.json()["error"]["status"] == status
        assert c.get("/healthz").json()["pending"] == 0
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]  # no traceback for bad input


def test_non_json_body_and_form_without_image(predictor):
    with client_for(predictor) as c:
        r = c.post("/v1/segment", content=b"{oops", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "not JSON" in r.json()["error"]["message"]
        r = c.post("/v1/segment", data={"text": "the red circle"}, files={"other": ("a", b"x")})
        assert r.status_code == 422 and "'image' file" in r.json()["error"]["message"]


def test_chat_answers_and_masks_every_seg(predictor):
    image = scene(6)
    message = predictor.processor.seg_question("the red circle")
    with client_for(predictor) as c:
        body = c.post("/v1/chat", json={"image": b64(png_bytes(image)), "message": message,
                                        "max_new_tokens": 8}).json()
        predictor.set_image(image)
        want = predictor.chat(message, max_new_tokens=8)
        assert body["answer"] == want.text and body["history"] == want.history
        assert len(body["results"]) == len(want.segments) == want.text.count("[SEG]")
        for item, seg in zip(body["results"], want.segments):
            assert np.array_equal(decode(item["rle"]), seg.mask)
        again = c.post("/v1/chat", json={"image": b64(png_bytes(image)), "message": "What color is the star?",
                                         "history": body["history"], "max_new_tokens": 4}).json()
        assert len(again["history"]) == 4
        for bad, words in (({"message": " "}, "non-empty string"), ({"message": "hi", "history": "x"}, "'history'"),
                           ({"message": "hi", "max_new_tokens": 10_000}, "between 1 and 256")):
            r = c.post("/v1/chat", json={"image": b64(png_bytes(image)), **bad})
            assert r.status_code == 422 and words in r.json()["error"]["message"]
