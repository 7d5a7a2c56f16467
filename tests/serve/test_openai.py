"""POST /v1/chat/completions: OpenAI's format over the predictor's chat, by plain HTTP (TestClient)
and with the `openai` client package against a loopback server."""
import json

import numpy as np
import pytest

from self1e.serve.codec import Limits

from .conftest import b64, client_for, live_server, png_bytes, scene
from .test_api import decode


def data_url(image) -> str:
    return "data:image/png;base64," + b64(png_bytes(image))


def user(text: str, image=None) -> dict:
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"role": "user", "content": parts}


def sse(text: str) -> list:
    """The data of each server-sent event; the closing [DONE] as the string itself."""
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def expected(predictor, image, message, history=None, **kwargs):
    predictor.set_image(image)
    return predictor.chat(message, history=history, **kwargs)


def test_a_completion_is_the_predictors_chat_with_one_mask_per_seg(predictor):
    image = scene(11)
    message = predictor.processor.seg_question("the red circle")
    with client_for(predictor) as c:
        r = c.post("/v1/chat/completions", json={"model": "anything", "messages": [user(message, image)],
                                                 "max_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    want = expected(predictor, image, message, max_new_tokens=12)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    assert isinstance(body["created"], int) and len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == want.text
    generated = len(want.token_ids)
    assert choice["finish_reason"] == ("length" if generated >= 12 else "stop")
    prompt = predictor.processor.prompt(message, predictor.processor.n_tiles(predictor._current()[0].grid))
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": generated,
                             "total_tokens": len(prompt) + generated}
    segments = choice["message"]["segments"]
    assert len(segments) == len(want.segments) == want.text.count("[SEG]")
    for item, seg in zip(segments, want.segments):
        assert np.array_equal(decode(item["rle"]), seg.mask) and abs(item["score"] - seg.score) < 1e-3
        assert set(item) == {"text", "score", "empty", "pixels", "bbox", "rle"}


def test_every_seg_gets_its_mask_when_the_model_writes_some(predictor, monkeypatch):
    """The random tiny model rarely writes [SEG] by itself: force an answer with two and check both masks."""
    image = scene(12)
    seg = predictor.model.seg_token_id
    real_generate = predictor.model.base.generate

    def two_segs(**kwargs):
        out = real_generate(**kwargs)
        return out[:, :0].new_tensor([[seg, seg]])

    monkeypatch.setattr(predictor.model.base, "generate", two_segs)
    with client_for(predictor) as c:
        body = c.post("/v1/chat/completions", json={"messages": [user("segment them", image)],
                                                    "max_tokens": 4}).json()
    want = expected(predictor, image, "segment them", max_new_tokens=4)
    assert want.text.count("[SEG]") == 2
    segments = body["choices"][0]["message"]["segments"]
    assert len(segments) == 2
    for item, s in zip(segments, want.segments):
        assert np.array_equal(decode(item["rle"]), s.mask)


def test_earlier_turns_become_the_history_and_the_image_may_come_as_a_string_part(predictor):
    image = scene(13)
    history = [{"role": "user", "content": "What is in the image?"}, {"role": "assistant", "content": "Shapes."}]
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": data_url(image)},
                                             {"type": "text", "text": "What is in the image?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Shapes."}]},
                {"role": "user", "content": "Which colour is the star?"}]
    with client_for(predictor) as c:
        body = c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6}).json()
    want = expected(predictor, image, "Which colour is the star?", history=history, max_new_tokens=6)
    assert body["choices"][0]["message"]["content"] == want.text
    alone = expected(predictor, image, "Which colour is the star?", max_new_tokens=6)
    prompt_with, prompt_alone = body["usage"]["prompt_tokens"], len(predictor.processor.prompt(
        "Which colour is the star?", predictor.processor.n_tiles(predictor._current()[0].grid)))
    assert prompt_with > prompt_alone  # the history is in the prompt
    assert alone.history != want.history


def test_temperature_samples_and_zero_is_greedy(predictor):
    image = scene(14)
    with client_for(predictor) as c:
        def ask(**kw):
            r = c.post("/v1/chat/completions", json={"messages": [user("Describe the image.", image)],
                                                     "max_tokens": 10, **kw})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

        sampled, greedy = ask(temperature=1.5, seed=3), ask(temperature=0)
        assert ask() == greedy
    want_sampled = expected(predictor, image, "Describe the image.", max_new_tokens=10, do_sample=True,
                            temperature=1.5, seed=3)
    want_greedy = expected(predictor, image, "Describe the image.", max_new_tokens=10)
    assert sampled == want_sampled.text and greedy == want_greedy.text and sampled != greedy


def test_stream_sends_openai_chunks_that_join_to_the_answer(predictor):
    image = scene(15)
    body = {"messages": [user("Describe the image.", image)], "max_tokens": 10}
    with client_for(predictor) as c:
        whole = c.post("/v1/chat/completions", json=body).json()
        r = c.post("/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == chunks[0]["id"] for e in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    with_choices = [e for e in chunks if e["choices"]]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in with_choices)
    assert text == whole["choices"][0]["message"]["content"] and len(with_choices) >= 3
    last = with_choices[-1]["choices"][0]
    assert last["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert last["delta"]["segments"] == whole["choices"][0]["message"]["segments"]
    assert all(e["choices"][0]["finish_reason"] is None for e in with_choices[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


IMG = scene(16)
BAD = {
    "web image": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
        422, "fetches nothing"),
    "no image": ({"messages": [{"role": "user", "content": "hi"}]}, 422, "holds 0 images"),
    "two images": ({"messages": [user("a", IMG), {"role": "assistant", "content": "ok"}, user("b", IMG)]}, 422,
                   "holds 2 images"),
    "not a data url": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, {"type": "text", "text": "hi"}]}]},
        422, "base64 data URL"),
    "bad base64": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}, {"type": "text", "text": "x"}]}]},
        422, "not valid base64"),
    "not an image": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(b"hello")}},
        {"type": "text", "text": "x"}]}]}, 422, "cannot read the uploaded image"),
    "system message": ({"messages": [{"role": "system", "content": "be nice"}, user("hi", IMG)]}, 422,
                       "system messages are not supported"),
    "last is assistant": ({"messages": [user("hi", IMG), {"role": "assistant", "content": "ok"}]}, 422,
                          "last message must be the user's"),
    "no question": ({"messages": [user("  ", IMG)]}, 422, "has no text"),
    "no messages": ({"model": "x"}, 422, "'messages' must be a non-empty list"),
    "max tokens": ({"messages": [user("hi", IMG)], "max_tokens": 10_000}, 422, "between 1 and 256"),
    "temperature": ({"messages": [user("hi", IMG)], "temperature": -1}, 422, "'temperature' must be a number"),
    "n": ({"messages": [user("hi", IMG)], "n": 2}, 422, "'n' must be 1"),
    "tools": ({"messages": [user("hi", IMG)], "tools": [{"type": "function"}]}, 422, "'tools' is not supported"),
    "bad part": ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 422, "a content part must be"),
    "too long": ({"messages": [user("a" * 2001, IMG)]}, 422, "2,000 characters"),
    "too many bytes": ({"messages": [user("hi", scene(17, size=(300, 300)))]}, 413, "bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_completions_get_the_apps_json_error(predictor, case):
    body, status, words = BAD[case]
    with client_for(predictor, limits=Limits(max_upload_bytes=100_000)) as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == status, r.text
        assert r.json() == {"error": {"status": status, "message": r.json()["error"]["message"]}}
        assert words in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "not JSON" in r.json()["error"]["message"]


def test_models_and_openapi_list_the_route(predictor):
    with client_for(predictor) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "tiny"
        assert "messages" in c.get("/openapi.json").json()["paths"]["/v1/chat/completions"]["post"][
            "requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert "/v1/chat/completions" in c.get("/api").text


def test_the_openai_client_package_talks_to_the_loopback_server(predictor):
    openai = pytest.importorskip("openai")
    image = scene(18)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe the image."},
                                             {"type": "image_url", "image_url": {"url": data_url(image)}}]}]
    with live_server(predictor) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-used", max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
        assert [m.id for m in client.models.list()] == ["tiny"]
        stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, stream=True)
        chunks = list(stream)
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            client.chat.completions.create(model="tiny", max_tokens=8, messages=[{"role": "user", "content": [
                {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    want = expected(predictor, image, "Describe the image.", max_new_tokens=8)
    message = answer.choices[0].message
    assert answer.object == "chat.completion" and message.role == "assistant" and message.content == want.text
    assert answer.usage.completion_tokens == len(want.token_ids)
    assert [decode(s["rle"]).shape for s in message.segments] == [s.mask.shape for s in want.segments]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert refused.value.status_code == 422 and "fetches nothing" in refused.value.body["message"]
