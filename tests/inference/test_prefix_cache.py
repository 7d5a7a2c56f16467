"""Prompt-prefix reuse under ``seg_attention="causal"``: the language model's keys, values and outputs
for the prompt up to and including the image are computed once per image and reused by every later
segmentation call on it; the masks equal the uncached pass's. Bidirectional models never use it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from self1e.inference import Self1ePredictor
from self1e.model import Self1eConfig, Self1eModel
from self1e.model.tiny import build_tiny_base

# Different lengths (one word to a full sentence, which gets the sentence template), so rows pad.
TEXTS = ["star", "the red circle", "all the blue boxes on the left of the big green star",
         "Find the small yellow triangle that sits right below the circle."]
ATOL = 1e-6  # float32 rounding between the two paths is about 1e-8 here; the expressions move masks by 1e-4


def tiny_model(seg_attention: str, **settings) -> Self1eModel:
    base, tok = build_tiny_base("tiny", seed=3)
    return Self1eModel.from_base(base, tok, Self1eConfig(seg_attention=seg_attention, **settings)).eval()


@pytest.fixture(scope="module")
def causal():
    return tiny_model("causal")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(11)
    return [rng.integers(0, 255, (37, 61, 3), dtype=np.uint8), rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)]


class LLMCalls:
    """Records each language-model call: its input length, the cache it got (its length at the
    call) and its first position per row."""

    def __init__(self, model: Self1eModel) -> None:
        self.lm = model.base.model.language_model
        self.calls: list[dict] = []

    def _pre(self, module, args, kwargs) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.calls.append({"length": kwargs["inputs_embeds"].shape[1], "rows": kwargs["inputs_embeds"].shape[0],
                           "cached": None if cache is None else cache.get_seq_length(),
                           "first_position": kwargs["position_ids"][:, 0].tolist()})

    def __enter__(self) -> LLMCalls:
        self.handle = self.lm.register_forward_pre_hook(self._pre, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def prefix_length(predictor: Self1ePredictor) -> int:
    """Tokens up to and including </img> in the current image's prompt."""
    p, image = predictor.processor, predictor._image
    ids = p.prompt(p.seg_question("x"), p.n_tiles(image.grid))
    return ids.index(p.img_end_id) + 1


def sequence_length(predictor: Self1ePredictor, texts: list[str]) -> int:
    p, image = predictor.processor, predictor._image
    return int(p.segmentation_batch([image], texts, [0] * len(texts)).input_ids.shape[1])


@pytest.mark.parametrize("settings", [{}, {"max_tiles": 4}], ids=["one_tile", "tiles_and_thumbnail"])
def test_cached_prefix_gives_the_uncached_masks(settings, images):
    model = tiny_model("causal", **settings)
    cached, uncached = Self1ePredictor(model), Self1ePredictor(model, reuse_prefix=False)
    for predictor in (cached, uncached):
        predictor.set_image(images[0])
    with LLMCalls(model) as seen:
        got = cached.predict_torch(TEXTS)
        got_grid = cached.predict_torch(TEXTS, original_size=False)
    want = uncached.predict_torch(TEXTS)
    want_grid = uncached.predict_torch(TEXTS, original_size=False)
    p, length = prefix_length(cached), sequence_length(cached, TEXTS)
    assert p > model.processor.tokens_per_tile * model.processor.n_tiles(cached._image.grid)  # the whole image
    # the prefix once, then only the tokens after it, on a cache of the prefix, at positions P, P+1, ...
    assert seen.calls == [{"length": p, "rows": 1, "cached": 0, "first_position": [0]},
                          {"length": length - p, "rows": len(TEXTS), "cached": p, "first_position": [p] * len(TEXTS)},
                          {"length": length - p, "rows": len(TEXTS), "cached": p, "first_position": [p] * len(TEXTS)}]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_grid, want_grid, atol=ATOL, rtol=0)
    for text, row in zip(TEXTS, got):  # one at a time (no padding) on the same cached prefix
        torch.testing.assert_close(torch.from_numpy(cached.predict(text).logits), row, atol=ATOL, rtol=0)
    assert (got[0] - got[2]).abs().max() > 100 * ATOL  # the expressions do change the masks, well beyond ATOL


def test_hidden_states_and_lm_logits_match_with_the_prefix(causal, images):
    """The model hook itself: every position's LM logits (prefix outputs stitched to the suffix's)."""
    p = causal.processor
    image = p.image_input(images[1])
    batch = p.segmentation_batch([image], TEXTS, [0] * len(TEXTS))
    with torch.inference_mode():
        feats = causal.encode_images(batch.pixel_values, batch.grids)
        n = int((batch.input_ids[0] == p.img_end_id).nonzero()[0]) + 1
        prefix = causal.encode_prefix(batch.input_ids[0, :n], feats)
        plain = causal(batch, image_features=feats, return_lm_logits=True)
        reused = causal(batch, image_features=feats, return_lm_logits=True, prefix=prefix)
    assert prefix.length == n and prefix.hidden.shape[:2] == (1, n)
    assert len(prefix.key_values) == causal.base.config.text_config.num_hidden_layers
    assert all(k.shape[0] == 1 and k.shape[2] == n and v.shape == k.shape for k, v in prefix.key_values)
    torch.testing.assert_close(reused.lm_logits, plain.lm_logits, atol=ATOL, rtol=0)
    for a, b in zip(reused.mask_logits, plain.mask_logits):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_the_prefix_is_computed_once_per_image(causal, images):
    predictor = Self1ePredictor(causal)
    predictor.set_image(images[0])
    assert predictor._prefix is None  # lazily, on the first segmentation call
    with LLMCalls(causal) as seen:
        predictor.predict_batch(TEXTS[:2])
        first = predictor._prefix
        predictor.predict("the star")
        predictor.predict_batch(TEXTS)
    assert first is not None and predictor._prefix is first
    assert [c["cached"] for c in seen.calls] == [0, first.length, first.length, first.length]
    assert [c["rows"] for c in seen.calls] == [1, 2, 1, len(TEXTS)]


def test_set_image_of_another_image_drops_the_prefix(causal, images):
    cached, uncached = Self1ePredictor(causal), Self1ePredictor(causal, reuse_prefix=False)
    cached.set_image(images[0])
    first = cached.predict_torch(TEXTS, original_size=False)
    old = cached._prefix
    assert old is not None
    for predictor in (cached, uncached):
        predictor.set_image(images[1])
    assert cached._prefix is None
    second = cached.predict_torch(TEXTS, original_size=False)
    assert cached._prefix is not None and cached._prefix is not old
    torch.testing.assert_close(second, uncached.predict_torch(TEXTS, original_size=False), atol=ATOL, rtol=0)
    assert (first - second).abs().max() > 100 * ATOL  # so a stale prefix of the first image would show
    # a stale prefix really would show: the second image's features with the first image's prefix
    batch = causal.processor.segmentation_batch([cached._image], TEXTS, [0] * len(TEXTS))
    with torch.inference_mode():
        stale = torch.stack(causal(batch, image_features=cached._features, prefix=old).mask_logits)
    assert (stale - second).abs().max() > 100 * ATOL
    cached.set_image(images[1])  # even the same image again: a fresh prefix, computed again
    assert cached._prefix is None


def test_reset_image_drops_the_prefix(causal, images):
    predictor = Self1ePredictor(causal)
    predictor.set_image(images[0])
    predictor.predict("the red circle")
    assert predictor._prefix is not None
    predictor.reset_image()
    assert predictor._prefix is None and not predictor.is_image_set
    with pytest.raises(ValueError, match="set_image"):
        predictor.predict("the red circle")


def test_predict_objects_reuses_the_prefix(causal, images):
    cached, uncached = Self1ePredictor(causal), Self1ePredictor(causal, reuse_prefix=False)
    for predictor in (cached, uncached):
        predictor.set_image(images[1])
    phrases = ["the red circle", "the blue box", "the star"]
    with LLMCalls(causal) as seen:
        got = cached.predict_objects("the red circle, the blue box and the star", phrases)
    assert [c["cached"] for c in seen.calls] == [0, cached._prefix.length]
    want = uncached.predict_objects("the red circle, the blue box and the star", phrases)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.logits, b.logits, atol=ATOL, rtol=0)


def test_rows_that_do_not_start_with_the_prefix_run_uncached(causal, images):
    cached, uncached = Self1ePredictor(causal), Self1ePredictor(causal, reuse_prefix=False)
    for predictor in (cached, uncached):
        predictor.set_image(images[0])
    cached.predict("the star")
    stale = cached._prefix
    ids = stale.input_ids.clone()
    ids[0] = (int(ids[0]) + 1) % causal.base.config.text_config.vocab_size
    cached._prefix = type(stale)(ids, stale.image_index, stale.key_values, stale.hidden)
    with LLMCalls(causal) as seen:
        got = cached.predict_torch(TEXTS)
    assert [c["cached"] for c in seen.calls] == [None]  # one full, uncached pass
    assert seen.calls[0]["length"] == sequence_length(cached, TEXTS)
    torch.testing.assert_close(got, uncached.predict_torch(TEXTS), atol=ATOL, rtol=0)
    p = causal.processor
    batch = p.segmentation_batch([cached._image], TEXTS, [0] * len(TEXTS))
    with pytest.raises(ValueError, match="start with"), torch.inference_mode():
        causal(batch, image_features=cached._features, prefix=cached._prefix)


def test_bidirectional_models_never_use_the_prefix(causal, images):
    model = tiny_model("bidirectional")
    assert not model.supports_prefix_cache and causal.supports_prefix_cache
    predictor = Self1ePredictor(model)
    predictor.set_image(images[0])
    length = sequence_length(predictor, TEXTS)
    with LLMCalls(model) as seen:
        predictor.predict_batch(TEXTS)
        predictor.predict_batch(TEXTS)
        predictor.predict_objects("the circle and the star", ["the circle", "the star"])
    assert predictor._prefix is None
    assert all(c["cached"] is None for c in seen.calls)
    assert [c["length"] for c in seen.calls[:2]] == [length, length]
    p = model.processor
    image = p.image_input(images[0])
    batch = p.segmentation_batch([image], TEXTS, [0] * len(TEXTS))
    n = int((batch.input_ids[0] == p.img_end_id).nonzero()[0]) + 1
    with torch.inference_mode():
        feats = model.encode_images(batch.pixel_values, batch.grids)
        with pytest.raises(ValueError, match="causal"):
            model.encode_prefix(batch.input_ids[0, :n], feats)
        twin = causal.encode_prefix(batch.input_ids[0, :n], causal.encode_images(batch.pixel_values, batch.grids))
        with pytest.raises(ValueError, match="causal"):
            model(batch, image_features=feats, prefix=twin)
