"""Evaluation of multi-object requests: every object is a sample; saved and supplied masks are
<id>_<k>.png; the free answer's [SEG] count is reported."""
import numpy as np

from self1e.common.images import write_mask_png
from self1e.data.jsonl import read_jsonl
from self1e.data.refshapes import generate
from self1e.eval.evaluate import FolderSource, PredictorSource, evaluate
from self1e.eval.metrics import IoUAccumulator


def test_every_object_is_scored_from_its_own_file(tmp_path):
    samples = read_jsonl(generate(tmp_path / "d", "test", 6, seed=3, size=64, progress=False, kind="multi"))
    preds = tmp_path / "p"
    expected = IoUAccumulator()
    for s in samples:
        size = s.load_image().size
        for k in range(len(s.phrases)):
            truth = s.load_instance(k, size)
            guess = truth if k == 0 else np.zeros_like(truth)  # the first object right, the others empty
            write_mask_png(guess, preds / f"{s.id}_{k}.png")
            expected.update(guess, truth)
    result = evaluate(FolderSource(preds), samples, progress=False)
    assert result.n == sum(len(s.phrases) for s in samples) == expected.n
    assert result.metrics["cIoU"] == expected.ciou and result.missing_predictions == 0
    places = {f"multi-object #{k + 1}" for s in samples for k in range(len(s.phrases))}
    assert set(result.metrics["kinds"]) == places and "multi-object #2" in places
    first = result.metrics["kinds"]["multi-object #1"]  # the first objects were right, the later ones empty
    assert first["cIoU"] == 1.0 and result.metrics["kinds"]["multi-object #2"]["cIoU"] == 0.0
    saved = tmp_path / "saved"
    again = evaluate(FolderSource(preds), samples, save_masks=saved, progress=False)
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in preds.iterdir())
    assert again.metrics["cIoU"] == expected.ciou


def test_the_model_source_counts_the_seg_it_writes(tiny_model_dir, tmp_path):
    from self1e.inference import Self1ePredictor

    samples = read_jsonl(generate(tmp_path / "d", "test", 3, seed=4, size=64, progress=False, kind="multi"))
    predictor = Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")
    source = PredictorSource(predictor)
    result = evaluate(source, samples, batch_size=2, progress=False)
    assert result.n == sum(len(s.phrases) for s in samples)
    e = result.emission
    assert e["requests"] == 3 and e["objects"] == result.n and 0 <= e["right_count"] <= 3
    image = samples[0].load_image()
    predictor.set_image(image)
    together = predictor.predict_objects(samples[0].text, samples[0].phrases)
    assert len(together) == len(samples[0].phrases) and together[0].mask.shape == (image.height, image.width)
