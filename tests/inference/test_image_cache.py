"""Self1ePredictor's image cache: set_image runs the vision side once; every later call on that
image runs only the language model and the head, and gives what an uncached pass gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from self1e.inference import Self1ePredictor

TEXTS = ["the red circle", "all the blue boxes on the left"]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).integers(0, 255, (37, 61, 3), dtype=np.uint8)  # H=37, W=61


class CallCounter:
    def __init__(self, module: torch.nn.Module, pre_kwargs: bool = False) -> None:
        self.calls: list[dict] = []
        if pre_kwargs:
            self.handle = module.register_forward_pre_hook(self._pre, with_kwargs=True)
        else:
            self.handle = module.register_forward_hook(lambda m, args, out: self.calls.append({}))

    def _pre(self, module, args, kwargs):
        self.calls.append(dict(kwargs))

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def test_vision_tower_runs_once_per_image(predictor, image):
    tower = predictor.model.base.model.vision_tower
    with CallCounter(tower) as seen:
        predictor.set_image(image)
        assert len(seen.calls) == 1
        predictor.predict(TEXTS[0])
        predictor.predict_batch(TEXTS)
        predictor.predict_torch(TEXTS)
        predictor.chat("what is the red shape?", max_new_tokens=3)
        assert len(seen.calls) == 1, f"the vision tower ran {len(seen.calls)} times for one set_image"
        predictor.set_image(image)  # a new set_image encodes again: the counter does count
        assert len(seen.calls) == 2
        predictor.predict_many([image, image], TEXTS)  # uncached by design: one batched encoding
        assert len(seen.calls) == 3


def test_cached_features_give_the_uncached_result(predictor, image):
    predictor.set_image(image)
    cached = predictor.predict_batch(TEXTS)
    fresh = predictor.predict_many([image] * len(TEXTS), TEXTS)
    assert [r.text for r in cached] == [r.text for r in fresh] == TEXTS
    for c, f in zip(cached, fresh):
        assert c.logits.shape == f.logits.shape == image.shape[:2]
        assert np.allclose(c.logits, f.logits, atol=1e-5), float(np.abs(c.logits - f.logits).max())
        assert np.array_equal(c.mask, f.mask)
    # the cache belongs to the image: another image gives other logits
    predictor.set_image(255 - image)
    other = predictor.predict_batch(TEXTS)
    assert not np.allclose(other[0].logits, cached[0].logits, atol=1e-5)


def test_reset_image_forgets_the_cache(predictor, image):
    predictor.set_image(image)
    assert predictor.is_image_set
    assert predictor.original_size == (image.shape[1], image.shape[0])
    predictor.reset_image()
    assert not predictor.is_image_set
    for call in (lambda: predictor.predict(TEXTS[0]), lambda: predictor.predict_batch(TEXTS),
                 lambda: predictor.predict_torch(TEXTS), lambda: predictor.chat("hi")):
        with pytest.raises(ValueError, match="set_image"):
            call()
    predictor.set_image(image)
    assert predictor.is_image_set


def test_predict_torch_shapes_and_masks(predictor, image):
    predictor.set_image(image)
    h, w = image.shape[:2]
    full = predictor.predict_torch(TEXTS)
    assert isinstance(full, torch.Tensor) and full.dtype == torch.float32
    assert tuple(full.shape) == (len(TEXTS), h, w)

    grid = predictor.predict_torch(TEXTS, original_size=False)
    vc = predictor.model.base.config.vision_config
    patches = vc.image_size[0] // vc.patch_size[0]  # ViT patch grid of one tile
    side = {"compressed": patches // 2, "hq": patches, "rfr": patches, "rfa": 2 * patches}[
        predictor.model.config.mask_head]
    assert grid.dtype == torch.float32 and tuple(grid.shape) == (len(TEXTS), side, side)
    # the full-size logits are the grid's logits resized bilinearly
    resized = F.interpolate(grid[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(resized, full, atol=1e-5)

    results = predictor.predict_batch(TEXTS)
    for k, r in enumerate(results):
        assert np.array_equal((full[k] > 0).cpu().numpy(), r.mask)
        assert np.allclose(full[k].cpu().numpy(), r.logits, atol=1e-5)


def test_segmentation_passes_disable_the_kv_cache(predictor, image):
    lm = predictor.model.base.model.language_model
    predictor.set_image(image)
    with CallCounter(lm, pre_kwargs=True) as seen:
        predictor.predict(TEXTS[0])
        predictor.predict_batch(TEXTS)
        predictor.predict_torch(TEXTS)
        predictor.predict_many([image], TEXTS[:1])
    assert len(seen.calls) >= 4
    bad = [kw.get("use_cache") for kw in seen.calls if kw.get("use_cache") is not False]
    assert not bad, f"language model called with use_cache={bad} in a segmentation pass"
