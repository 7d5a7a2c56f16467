"""RefShapes beyond referring expressions: VQA-only and multi-object datasets, styled scenes, and
the JSONL round trip of multi-object requests (phrases + one instance mask per phrase, null = absent)."""
import numpy as np
import pytest

from self1e.data.datasets import load_dataset
from self1e.data.jsonl import read_jsonl, validate
from self1e.data.refshapes import LazyImage, generate, render, scene_at
from self1e.data.refshapes_text import COLOURS, NUMBERS


def test_vqa_dataset_has_only_answerable_questions():
    samples = load_dataset("refshapes-vqa:train:60:3:96")
    assert len(samples) == 60 and all(s.is_vqa for s in samples)
    opening = {"vqa-colour": ("What color", "What colour"), "vqa-count": ("How many",), "vqa-exists": ("Is there",)}
    assert {s.kind for s in samples} == set(opening)  # the kind of question, for the training mix's `kinds`
    assert all(s.question.startswith(opening[s.kind]) for s in samples)
    counting = load_dataset("refshapes-vqa:train:60:3:96", kinds=["vqa-count"])
    assert [s.question for s in counting] == [s.question for s in samples if s.question.startswith("How many")]
    answers = {s.answer.rstrip(".").lower() for s in samples}
    assert answers <= {*COLOURS, *NUMBERS, "yes", "no"} and len(answers) > 4
    for s in samples:  # recount against the scene itself: the answers are true
        objs = s.image.scene().objects
        if s.question.startswith("Is there"):
            words = s.question.rstrip("?").split()
            colour, noun = words[-2], words[-1]
            present = any(o.colour == colour and noun in (o.shape, {"circle": "ball", "square": "box"}.get(o.shape))
                          for o in objs)
            assert s.answer == ("Yes." if present else "No."), s.question
    again = load_dataset("refshapes-vqa:train:60:3:96")
    assert [(s.question, s.answer) for s in again] == [(s.question, s.answer) for s in samples]


def test_multi_object_requests_have_one_true_mask_per_phrase():
    samples = load_dataset("refshapes-multi:train:40:5:96")
    assert len(samples) == 40 and all(s.is_multi_object for s in samples)
    counts = {len(s.phrases) for s in samples}
    assert counts == {2, 3}
    absent = 0
    for s in samples:
        size = s.load_image().size
        masks = [s.load_instance(k, size) for k in range(len(s.phrases))]
        assert any(m.any() for m in masks), "at least one object of a request is present"
        absent += sum(not m.any() for m in masks)
        union = np.logical_or.reduce(masks)
        assert np.array_equal(union, s.load_mask(size))
        for a in range(len(masks)):  # distinct objects: no two phrases share pixels
            for b in range(a + 1, len(masks)):
                assert not (masks[a] & masks[b]).any()
        assert all(p in s.text for p in s.phrases)
    assert absent > 0  # absent objects do occur


def test_styled_scenes_keep_masks_exact_and_change_the_look():
    plain = scene_at("train", 0, 3, 128)
    styled = scene_at("train", 0, 3, 128, styled=True)
    assert [o.colour for o in plain.objects] == [o.colour for o in styled.objects]
    image = LazyImage("train", 0, 3, 128, styled=True)
    a, b = np.asarray(image()), np.asarray(image())
    assert np.array_equal(a, b)  # deterministic
    assert not np.array_equal(a, np.asarray(render(styled)))  # another look than the standard drawing
    labels = styled.ids >> 1
    for i, fill in enumerate(styled.fills):  # colours stay near their names inside each object
        inside = (labels == i + 1) & ((styled.ids & 1) == 0)
        if inside.sum() > 50:
            assert np.abs(a[inside].mean(0) - np.asarray(fill)).max() < 45
    s = load_dataset("refshapes:train:8:0:128:styled")[0]
    assert s.image.styled and s.load_mask(s.load_image().size).shape == (128, 128)


def test_multi_object_jsonl_round_trip(tmp_path):
    path = generate(tmp_path, "val", 12, seed=2, size=64, progress=False, kind="multi", styled=True)
    assert path.name == "val-multi-styled.jsonl"
    samples = read_jsonl(path)
    memory = load_dataset("refshapes-multi:val:12:2:64:styled")
    assert [s.phrases for s in samples] == [s.phrases for s in memory]
    assert validate(samples) == []
    for disk, mem in zip(samples, memory):
        size = disk.load_image().size
        for k in range(len(disk.phrases)):
            assert np.array_equal(disk.load_instance(k, size), mem.load_instance(k, size))
    vqa = read_jsonl(generate(tmp_path, "val", 9, seed=2, size=64, progress=False, kind="vqa"))
    assert len(vqa) == 9 and all(s.is_vqa for s in vqa)


@pytest.mark.parametrize("line, field", [
    ('{"image": "i.png", "text": "a and b", "phrases": ["a", "b"], "instances": ["m.png"]}', "instances"),
    ('{"image": "i.png", "text": "a and b", "phrases": ["a", ""], "instances": ["m.png", null]}', "phrases"),
    ('{"image": "i.png", "text": "a", "instances": ["m.png", null]}', "instances"),
])
def test_bad_multi_object_lines_name_the_field(tmp_path, line, field):
    from PIL import Image

    from self1e.common.errors import DataError

    Image.new("RGB", (4, 4)).save(tmp_path / "i.png")
    Image.new("L", (4, 4)).save(tmp_path / "m.png")
    (tmp_path / "d.jsonl").write_text(line + "\n")
    with pytest.raises(DataError, match=field):
        read_jsonl(tmp_path / "d.jsonl")
