"""Readers of the real datasets, on fixtures written in their official on-disk formats."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from data_fixtures import (
    ADE_LABELS,
    COCO_NAME,
    EXPECTED,
    GEXPECTED,
    H,
    W,
    reasonseg_expected,
    rect,
    write_ade20k,
    write_grefcoco,
    write_reasonseg,
    write_refcoco,
)
from self1e.data import safe_pickle
from self1e.data.datasets import load_dataset
from self1e.data.reasonseg import load_reasonseg
from self1e.data.refer import load_refer
from self1e.data.sample import DataError
from self1e.data.semseg import load_semseg
from self1e.data.vqa import load_llava


@pytest.mark.parametrize("dataset", ["refcoco", "refcoco+", "refcocog", "refclef"])
def test_refer_masks_pixel_exact(tmp_path, dataset):
    split_by = "umd" if dataset == "refcocog" else "unc"
    write_refcoco(tmp_path, dataset, split_by)
    samples = load_refer(tmp_path, dataset, "val", split_by)
    assert {s.id for s in samples} == set(EXPECTED)  # every sentence of every val ref, no train ref
    texts = {s.id: s.text for s in samples}
    assert texts["1_10"] == "left thing" and texts["1_11"] == "the small one"
    for s in samples:
        img = s.load_image()
        assert img.size == (W, H)
        np.testing.assert_array_equal(s.load_mask(img.size), rect(EXPECTED[s.id]))
        assert callable(s.mask)  # lazy
    if dataset != "refclef":  # the instances.json name, not the ref's "_<n>" file_name
        assert all(str(s.image).endswith("train2014/" + COCO_NAME) for s in samples)


def test_sentences_of_one_ref_share_a_mask(tmp_path):
    write_refcoco(tmp_path)
    by_id = {s.id: s for s in load_refer(tmp_path, "refcoco", "val")}
    assert by_id["1_10"].mask is by_id["1_11"].mask


def test_refer_unknown_split_lists_splits(tmp_path):
    write_refcoco(tmp_path)
    with pytest.raises(DataError, match=r"no refs in split 'testA'.*train, val"):
        load_refer(tmp_path, "refcoco", "testA")


def test_refer_missing_folder_and_files(tmp_path):
    with pytest.raises(DataError, match="refcoco folder not found"):
        load_refer(tmp_path, "refcoco", "val")
    write_refcoco(tmp_path)
    os.remove(tmp_path / "refcoco" / "instances.json")
    with pytest.raises(DataError, match="instances file not found"):
        load_refer(tmp_path, "refcoco", "val")
    with pytest.raises(DataError, match=r"refs\(umd\).p"):
        load_refer(tmp_path, "refcoco", "val", split_by="umd")


def test_grefcoco_no_target_and_multi(tmp_path):
    write_grefcoco(tmp_path)
    samples = {s.id: s for s in load_refer(tmp_path, "grefcoco", "val")}
    assert set(samples) == set(GEXPECTED)
    assert samples["11_110"].mask is None and samples["11_110"].kind == "none"
    assert not samples["11_110"].load_mask((W, H)).any()
    multi = samples["12_120"]
    assert multi.kind == "multi" and len(multi.instances) == 2
    np.testing.assert_array_equal(multi.load_mask((W, H)), GEXPECTED["12_120"])
    union = np.logical_or(*[np.asarray(f()) for f in multi.instances])
    np.testing.assert_array_equal(union, GEXPECTED["12_120"])
    np.testing.assert_array_equal(samples["13_130"].load_mask((W, H)), GEXPECTED["13_130"])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    write_refcoco(tmp_path)
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([_Evil(marker)], protocol=2))
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"refusing.*system"):
        load_refer(tmp_path, "refcoco", "val")
    assert not marker.exists()
    for proto in (0, 2, 4):  # every protocol goes through find_class for globals
        with pytest.raises(safe_pickle.UnsafePickleError):
            safe_pickle.loads(pickle.dumps(_Evil(marker), protocol=proto))
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Evil(marker)))  # control: the plain unpickler does run it
    assert marker.exists()


def test_safe_pickle_admits_plain_data_and_rejects_garbage(tmp_path):
    data = [{"a": 1, "b": [1.5, "x", None, True], "c": (1, 2)}, {"s": {1, 2}}]
    assert safe_pickle.loads(pickle.dumps(data, protocol=4)) == data
    assert safe_pickle.loads(pickle.dumps(data[:1], protocol=0)) == data[:1]
    with pytest.raises(DataError, match="not a valid pickle"):
        safe_pickle.loads(b"\x80\x02garbage", "bad.p")


def test_reasonseg_target_and_ignore(tmp_path):
    write_reasonseg(tmp_path)
    target, ignore = reasonseg_expected()
    first = load_reasonseg(tmp_path, "val")
    assert len(first) == 1 and first[0].text == "what holds the coffee?" and first[0].kind == "long"
    size = first[0].load_image().size
    np.testing.assert_array_equal(first[0].load_mask(size), target)
    np.testing.assert_array_equal(first[0].load_ignore(size), ignore)
    every = load_reasonseg(tmp_path, "val", all_texts=True)
    assert [s.text for s in every] == ["what holds the coffee?", "second text"]
    assert len({s.id for s in every}) == 2


@pytest.mark.parametrize("texts", [[], ["  "], "", None])
def test_reasonseg_empty_text_is_an_error(tmp_path, texts):
    write_reasonseg(tmp_path, texts=texts if texts is not None else [])
    if texts is None:  # field missing altogether
        p = tmp_path / "reason_seg/ReasonSeg/val/img1.json"
        anno = json.loads(p.read_text())
        del anno["text"]
        p.write_text(json.dumps(anno))
    with pytest.raises(DataError, match=r"img1\.json.*'text'"):
        load_reasonseg(tmp_path, "val")


def test_ade20k_one_sample_per_class_and_zero_ignored(tmp_path):
    write_ade20k(tmp_path)
    samples = {s.id: s for s in load_semseg(tmp_path, "validation")}
    assert set(samples) == {"ADE_val_00000001_3", "ADE_val_00000001_7"}
    sky, road = samples["ADE_val_00000001_3"], samples["ADE_val_00000001_7"]
    assert sky.text == "segment the sky" and road.text == "segment the road"
    np.testing.assert_array_equal(sky.load_mask((W, H)), ADE_LABELS == 3)
    np.testing.assert_array_equal(road.load_mask((W, H)), ADE_LABELS == 7)
    np.testing.assert_array_equal(road.load_ignore((W, H)), ADE_LABELS == 0)


def test_ade20k_uint16_and_class_file(tmp_path):
    write_ade20k(tmp_path)
    ann = tmp_path / "ade20k/annotations/validation/ADE_val_00000001.png"
    labels = np.zeros((H, W), dtype=np.uint16)
    labels[:5, :5] = 300
    Image.fromarray(labels).save(ann)
    with pytest.raises(DataError, match="label 300"):
        load_semseg(tmp_path, "validation")
    (tmp_path / "ade20k/classes.txt").write_text("\n".join(f"k{i}" for i in range(1, 301)))
    [s] = load_semseg(tmp_path, "validation")
    assert s.text == "segment the k300"
    np.testing.assert_array_equal(s.load_mask((W, H)), labels == 300)


def test_llava_vqa(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    conv = [{"id": "x1", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Black."}]},
        {"id": "t", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]}]
    (tmp_path / "llava.json").write_text(json.dumps(conv))
    samples = load_llava(tmp_path / "llava.json", tmp_path)
    assert [(s.id, s.question, s.answer) for s in samples] == [
        ("x1_0", "What is it?", "A cat."), ("x1_1", "Colour?", "Black.")]
    assert all(s.is_vqa for s in samples)
    assert load_dataset(f"vqa:{tmp_path / 'llava.json'}@{tmp_path}") == samples


def test_load_dataset_specs(tmp_path):
    write_refcoco(tmp_path)
    write_grefcoco(tmp_path)
    write_reasonseg(tmp_path)
    write_ade20k(tmp_path)
    assert {s.id for s in load_dataset(f"refcoco:unc:val@{tmp_path}")} == set(EXPECTED)
    assert {s.id for s in load_dataset(f"refcoco:val@{tmp_path}")} == set(EXPECTED)
    assert len(load_dataset(f"grefcoco:unc:val@{tmp_path}")) == 3
    assert len(load_dataset(f"reasonseg:val@{tmp_path}")) == 1
    assert len(load_dataset(f"reasonseg:val:all@{tmp_path}")) == 2
    assert len(load_dataset(f"semseg:validation@{tmp_path}")) == 2
    assert len(load_dataset("refshapes:val:5:0:64")) == 5
    with pytest.raises(DataError, match="unknown dataset name 'refcocox'"):
        load_dataset(f"refcocox:unc:val@{tmp_path}")
    with pytest.raises(DataError, match="missing '@ROOT'"):
        load_dataset("refcoco:unc:val")
    with pytest.raises(DataError, match="root folder not found"):
        load_dataset(f"refcoco:unc:val@{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "missing.jsonl"))
