"""User text over the length limit fails fast, naming the limit and its length, through every door:
the processor, the predictor (predict, predict_batch, predict_many, predict_objects, chat) and the CLI."""
from __future__ import annotations

import random

import numpy as np
import pytest

from self1e.model.processing import MAX_TEXT_CHARS, TEMPLATE_CHARS, check_text

LONG = 100_000


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    from self1e.inference import Self1ePredictor

    p = Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")
    p.set_image(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    return p


@pytest.fixture
def no_tokenizing(predictor, monkeypatch):
    """Fail the test if the tokenizer sees any text (the limit is checked before tokenising)."""
    tokenizer = predictor.processor.tokenizer

    class Refuse:
        def __call__(self, text, *a, **k):
            raise AssertionError(f"tokenised {len(text)} characters")

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    monkeypatch.setattr(predictor.processor, "tokenizer", Refuse())


def assert_names_limit(message: str, length: int, limit: int = MAX_TEXT_CHARS) -> None:
    assert f"{length:,} characters long" in message and f"the limit is {limit:,} characters" in message
    assert "MAX_TEXT_CHARS = 2,000" in message


def test_the_limit_is_the_documented_one():
    assert MAX_TEXT_CHARS == 2000 and 0 < TEMPLATE_CHARS < 100


@pytest.mark.parametrize("length, ok", [(0, True), (1999, True), (2000, True), (2001, False), (LONG, False)])
@pytest.mark.parametrize("char", ["a", "\u00e9", "\U0001f600"])  # the limit counts characters, not bytes
def test_check_text_boundary(length, ok, char):
    text = char * length
    if ok:
        assert check_text(text, "the expression") is text
    else:
        with pytest.raises(ValueError) as e:
            check_text(text, "the expression")
        assert str(e.value).startswith("the expression is")
        assert_names_limit(str(e.value), length)


@pytest.mark.parametrize("length, ok", [(MAX_TEXT_CHARS, True), (MAX_TEXT_CHARS + 1, False)])
def test_seg_question_checks_the_expression(predictor, length, ok):
    p = predictor.processor
    text = "x" * (length - 1) + "."
    if ok:  # the longest allowed expression also fits every question template and the prompt
        for template_rng in (None, *[random.Random(seed) for seed in range(8)]):
            ids, _ = p.conversation(p.seg_question(text, template_rng), "[SEG].", 1)
            assert ids
    else:
        with pytest.raises(ValueError) as e:
            p.seg_question(text)
        assert_names_limit(str(e.value), length)


@pytest.mark.parametrize("extra, ok", [(0, True), (1, False)])
@pytest.mark.parametrize("where", ["message", "history"])
def test_prompt_checks_every_user_turn(predictor, extra, ok, where):
    p, limit = predictor.processor, MAX_TEXT_CHARS + TEMPLATE_CHARS
    text = "y" * (limit + extra)
    history = [{"role": "user", "content": text}, {"role": "assistant", "content": "Red."}]
    history = history if where == "history" else []
    message = "What color is it?" if where == "history" else text
    if ok:
        assert p.prompt(message, 1, history)
    else:
        with pytest.raises(ValueError) as e:
            p.prompt(message, 1, history)
        assert_names_limit(str(e.value), limit + 1, limit)
        assert ("history turn 0" if where == "history" else "the message") in str(e.value)
        assert f"+ {TEMPLATE_CHARS} for a question template" in str(e.value)


CALLS = {
    "predict": lambda pr, t: pr.predict(t),
    "predict_batch_first": lambda pr, t: pr.predict_batch([t, "the circle"]),
    "predict_batch_last": lambda pr, t: pr.predict_batch(["the circle", t]),
    "predict_torch": lambda pr, t: pr.predict_torch([t]),
    "predict_many": lambda pr, t: pr.predict_many([np.zeros((8, 8, 3), np.uint8)], [t]),
    "predict_objects_request": lambda pr, t: pr.predict_objects(t, ["the circle"]),
    "predict_objects_phrase": lambda pr, t: pr.predict_objects("the circle and the box", ["the circle", t]),
}


@pytest.mark.parametrize("call", CALLS)
def test_the_predictor_refuses_a_long_expression_before_tokenising(predictor, no_tokenizing, call):
    with pytest.raises(ValueError) as e:
        CALLS[call](predictor, "the red circle " * (LONG // 15))
    assert_names_limit(str(e.value), 15 * (LONG // 15))
    assert "expression" in str(e.value)


@pytest.mark.parametrize("where", ["message", "history"])
def test_chat_refuses_a_long_message_before_tokenising(predictor, no_tokenizing, where):
    long = "z" * LONG
    history = [{"role": "user", "content": long}, {"role": "assistant", "content": "Sure."}]
    with pytest.raises(ValueError) as e:
        if where == "message":
            predictor.chat(long)
        else:
            predictor.chat("and now?", history=history)
    assert_names_limit(str(e.value), LONG, MAX_TEXT_CHARS + TEMPLATE_CHARS)


def test_the_longest_expression_still_segments(predictor):
    r = predictor.predict("the circle " + "x" * (MAX_TEXT_CHARS - 11))
    assert r.mask.shape == (20, 30)


@pytest.mark.parametrize("position", [0, 1])
def test_segment_cli_refuses_a_long_text_with_one_line(tmp_path, cli, picture, tiny_model_dir, position):
    texts = ["the circle", "w" * LONG]
    if position == 0:
        texts.reverse()
    argv = ["segment", "--model", tiny_model_dir, "--image", picture(), "--out", tmp_path / "out"]
    for t in texts:
        argv += ["--text", t]
    line = cli.error(*argv)
    assert_names_limit(line, LONG)
    assert len(line) < 300 and not (tmp_path / "out").exists()  # the text itself is not echoed


def test_chat_cli_refuses_a_long_message_with_one_line(tmp_path, cli, picture, tiny_model_dir):
    line = cli.error("chat", "--model", tiny_model_dir, "--image", picture(), "--device", "cpu",
                     "--message", "m" * LONG, "--out", tmp_path / "out")
    assert_names_limit(line, LONG, MAX_TEXT_CHARS + TEMPLATE_CHARS)
    assert not (tmp_path / "out").exists()
