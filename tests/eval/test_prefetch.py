"""Evaluation reads the next batches in a background thread: the same metrics, the same mask files
and the same errors as reading in line."""
from __future__ import annotations

import dataclasses

import pytest

from self1e.common.errors import DataError
from self1e.data.datasets import load_dataset
from self1e.data.refshapes import generate
from self1e.eval.evaluate import PredictorSource, evaluate
from self1e.inference import Self1ePredictor


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefetch")
    refer = load_dataset(str(generate(root, "test", 21, 5, size=64, progress=False)))
    multi = load_dataset(str(generate(root, "test", 6, 6, size=64, progress=False, kind="multi")))
    multi = [dataclasses.replace(s, id=f"multi-{s.id}") for s in multi]  # ids distinct from the referring ones
    return refer + multi, Self1ePredictor.from_pretrained("tiny:tiny", device="cpu")


@pytest.mark.parametrize("prefetch,batch_size", [(1, 4), (3, 5), (1, 64)])
def test_prefetch_changes_nothing_but_the_timing(on_disk, tmp_path, prefetch, batch_size):
    samples, predictor = on_disk
    inline = evaluate(PredictorSource(predictor), samples, batch_size=4, prefetch=0, progress=False,
                      save_masks=tmp_path / "inline")
    ahead = evaluate(PredictorSource(predictor), samples, batch_size=batch_size, prefetch=prefetch, progress=False,
                     save_masks=tmp_path / "ahead")
    assert ahead.n == inline.n > len(samples)  # multi-object requests are scored per object
    assert ahead.metrics == inline.metrics and ahead.accumulator.state_dict() == inline.accumulator.state_dict()
    names = sorted(p.name for p in (tmp_path / "inline").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ahead").iterdir()) and len(names) == inline.n
    for name in names:
        assert (tmp_path / "inline" / name).read_bytes() == (tmp_path / "ahead" / name).read_bytes()


def test_an_unreadable_image_in_a_later_batch_is_named(on_disk, tmp_path):
    samples, predictor = on_disk
    broken = samples[9]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    samples = [*samples[:9], dataclasses.replace(broken, image=bad), *samples[10:]]
    for prefetch in (0, 2):
        with pytest.raises(DataError, match="broken.png"):
            evaluate(PredictorSource(predictor), samples, batch_size=4, prefetch=prefetch, progress=False)
