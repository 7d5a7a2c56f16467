"""The semantic and part segmentation sets of the training mix (COCO-Stuff, Pascal-Part, PACO-LVIS,
Mapillary Vistas, ADE20K under its own name), on fixture trees written in their real formats."""
from __future__ import annotations

import argparse
import json
import logging
import re
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from data.fixture_tree import (
    MAPILLARY_LABELS,
    write_cocostuff,
    write_mapillary,
    write_paco_lvis,
    write_pascal_part,
)
from data_fixtures import ADE_LABELS, H, W, write_ade20k
from self1e.common.errors import DataError
from self1e.data import datasets
from self1e.data.datasets import load_dataset
from self1e.data.jsonl import read_jsonl, validate
from self1e.data.semseg_sets import (
    READERS,
    cocostuff_classes,
    load_cocostuff,
    load_mapillary,
    load_paco_lvis,
    load_pascal_part,
    part_class_name,
)

REPO = Path(__file__).resolve().parents[2]


def _by_id(samples):
    ids = [s.id for s in samples]
    assert len(ids) == len(set(ids))
    return {s.id: s for s in samples}


# ---------------------------------------------------------------- COCO-Stuff

def test_cocostuff_class_list_facts():
    c = cocostuff_classes()
    assert len(c) == 182
    assert (c[0], c[1], c[11], c[12], c[71], c[90]) == ("person", "bicycle", "street sign", "stop sign", "tv",
                                                        "hair brush")
    assert (c[91], c[95], c[148], c[149], c[170], c[181]) == ("banner", "building-other", "road", "rock",
                                                              "wall-brick", "wood")
    hyphen = [k for k, name in enumerate(c) if "-" in name]
    assert len(hyphen) == 29 and min(hyphen) >= 91  # only stuff classes carry a "-"
    assert len(set(c)) == 182


def test_cocostuff_class_list_ships_as_package_data():
    rel = "data/classes/cocostuff.txt"
    assert resources.files("self1e").joinpath(rel).is_file()
    section = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    patterns = json.loads(re.search(r"^self1e\s*=\s*(\[.*\])\s*$", section, re.M).group(1))
    assert any(fnmatch(rel, p) for p in patterns), patterns


def test_cocostuff_pixel_exact_with_255_and_hyphen_classes_ignored(tmp_path, caplog):
    labels = write_cocostuff(tmp_path)
    with caplog.at_level(logging.INFO):
        samples = _by_id(load_cocostuff(tmp_path, "train2017"))
    assert {k: s.text for k, s in samples.items()} == {
        "000000000009_0": "segment the person", "000000000009_148": "segment the road",
        "000000000009_181": "segment the wood", "000000000025_90": "segment the hair brush"}
    assert "1 label maps with no class skipped" in caplog.text
    assert "2 (image, class) pairs of ignored classes" in caplog.text  # 95 and 170 (255 is no class)
    for sid, s in samples.items():
        stem, k = sid.rsplit("_", 1)
        lab = labels[stem].astype(int)
        assert s.image == tmp_path / "coco" / "train2017" / f"{stem}.jpg" and s.kind is None and not s.exif
        size = s.load_image().size
        assert size == (W, H)
        np.testing.assert_array_equal(s.load_mask(size), lab == int(k))
        np.testing.assert_array_equal(s.load_ignore(size), np.isin(lab, [255, 95, 170]))
        assert callable(s.mask) and callable(s.ignore)  # lazy


def test_cocostuff_any_split_name(tmp_path):
    write_cocostuff(tmp_path, split="val2017")
    assert len(load_dataset(f"cocostuff:val2017@{tmp_path}")) == 4
    with pytest.raises(DataError, match=r"folder not found: .*cocostuff[/\\]train2017"):
        load_cocostuff(tmp_path, "train2017")


def test_cocostuff_bad_input(tmp_path):
    write_cocostuff(tmp_path)
    ann = tmp_path / "cocostuff" / "train2017" / "000000000025.png"
    lab = np.zeros((H, W), dtype=np.uint8)
    lab[0, 0] = 200
    from PIL import Image
    Image.fromarray(lab).save(ann)
    with pytest.raises(DataError, match=r"000000000025\.png: label 200 but only 182 class names"):
        load_cocostuff(tmp_path, "train2017")
    ann.write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    with pytest.raises(DataError, match=r"cannot read label map .*000000000025\.png"):
        load_cocostuff(tmp_path, "train2017")
    ann.unlink()
    (tmp_path / "coco" / "train2017" / "000000000009.jpg").unlink()
    with pytest.raises(DataError, match=r"000000000009\.png: no image 000000000009\.jpg"):
        load_cocostuff(tmp_path, "train2017")
    (tmp_path / "coco" / "train2017").rename(tmp_path / "coco" / "elsewhere")
    with pytest.raises(DataError, match=r"COCO-Stuff train2017 folder not found: .*coco[/\\]train2017"):
        load_cocostuff(tmp_path, "train2017")


# ---------------------------------------------------------------- class names of the part sets

@pytest.mark.parametrize("name, text", [
    ("dog:head", "head of the dog"),
    ("aeroplane:left_wing", "left wing of the aeroplane"),
    ("trash_can", "trash can"),
    ("bow_(weapon)", "bow"),
    ("car_(automobile):wheel", "wheel of the car"),
    ("bottle:cap_(bottle_cap)", "cap of the bottle"),
    ("  mug : handle ", "handle of the mug"),
])
def test_part_class_name(name, text):
    assert part_class_name(name) == text


@pytest.mark.parametrize("name", ["a:b:c", "dog:", ":head", "(weapon)", ""])
def test_part_class_name_refuses(name):
    with pytest.raises(DataError, match="category name"):
        part_class_name(name)


# ---------------------------------------------------------------- Pascal-Part

def test_pascal_part_pixel_exact(tmp_path, caplog):
    wrote = write_pascal_part(tmp_path)
    with caplog.at_level(logging.INFO):
        samples = _by_id(load_pascal_part(tmp_path, "train"))
    assert {k: s.text for k, s in samples.items()} == {
        "2008_000002_1": "segment the head of the dog", "2008_000002_7": "segment the hair of the person",
        "2008_000003_5": "segment the pot of the pottedplant"}
    assert "3 images, 3 samples; 1 images without annotations skipped" in caplog.text
    jpegs = tmp_path / "vlpart" / "pascal_part" / "VOCdevkit" / "VOC2010" / "JPEGImages"
    for sid, s in samples.items():
        assert s.image == jpegs / f"{sid.rsplit('_', 1)[0]}.jpg" and s.kind is None and s.ignore is None
        size = s.load_image().size
        np.testing.assert_array_equal(s.load_mask(size), wrote["masks"][sid])
        assert callable(s.mask)


def _rewrite(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_pascal_part_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"Pascal-Part train annotation file not found: .*pascal_part[/\\]train\.json"):
        load_pascal_part(tmp_path, "train")
    write_pascal_part(tmp_path)
    path = tmp_path / "vlpart" / "pascal_part" / "train.json"
    original = path.read_text()
    _rewrite(path, lambda d: d["annotations"].append(
        {"id": 105, "image_id": 99, "category_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5]]}))
    with pytest.raises(DataError, match=r"train\.json: annotation 105: image_id 99 is not among the file's images"):
        load_pascal_part(tmp_path, "train")
    path.write_text(original)
    _rewrite(path, lambda d: d["annotations"].append(
        {"id": 106, "image_id": 1, "category_id": 42, "segmentation": [[0, 0, 5, 0, 5, 5]]}))
    with pytest.raises(DataError, match=r"annotation 106: category_id 42 is not among"):
        load_pascal_part(tmp_path, "train")
    path.write_text(original)
    _rewrite(path, lambda d: d["annotations"][0].update(segmentation=[[0, 0, 5, 0, 5]]))
    with pytest.raises(DataError, match=r"annotation 101: segmentation polygon 0 has 5 coordinates"):
        load_pascal_part(tmp_path, "train")
    path.write_text(original)
    _rewrite(path, lambda d: d["annotations"][1]["segmentation"].update(size=[H + 1, W]))
    with pytest.raises(DataError, match=r"annotation 102: RLE 'size'"):
        load_pascal_part(tmp_path, "train")
    path.write_text(original)
    _rewrite(path, lambda d: d["categories"][0].update(name="dog:head:left"))
    with pytest.raises(DataError, match=r"train\.json: category 1: category name 'dog:head:left'"):
        load_pascal_part(tmp_path, "train")
    path.write_text(original)
    (path.parent / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2008_000003.jpg").unlink()
    with pytest.raises(DataError, match=r"image 2: image file not found: .*JPEGImages[/\\]2008_000003\.jpg"):
        load_pascal_part(tmp_path, "train")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"train\.json: invalid JSON"):
        load_pascal_part(tmp_path, "train")
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"train\.json: not a COCO-format file"):
        load_pascal_part(tmp_path, "train")


# ---------------------------------------------------------------- PACO-LVIS

def test_paco_lvis_pixel_exact(tmp_path):
    wrote = write_paco_lvis(tmp_path)
    samples = _by_id(load_paco_lvis(tmp_path, "train"))
    assert {k: s.text for k, s in samples.items()} == {
        "000000000009_3": "segment the trash can", "000000000009_21": "segment the lid of the trash can",
        "000000000139_11": "segment the bow", "000000000139_20": "segment the wheel of the car"}
    assert samples["000000000009_3"].image == tmp_path / "coco" / "train2017" / "000000000009.jpg"
    assert samples["000000000139_20"].image == tmp_path / "coco" / "val2017" / "000000000139.jpg"
    for sid, s in samples.items():
        np.testing.assert_array_equal(s.load_mask(s.load_image().size), wrote["masks"][sid])


def test_paco_lvis_bad_input(tmp_path):
    write_paco_lvis(tmp_path)
    path = tmp_path / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json"
    with pytest.raises(DataError, match=r"paco_lvis_v1_val\.json"):
        load_paco_lvis(tmp_path, "val")
    original = path.read_text()
    _rewrite(path, lambda d: d["annotations"].append(
        {"id": 7, "image_id": 500, "category_id": 3, "segmentation": [[0, 0, 5, 0, 5, 5]]}))
    with pytest.raises(DataError, match=r"paco_lvis_v1_train\.json: annotation 7: image_id 500"):
        load_paco_lvis(tmp_path, "train")
    path.write_text(original)
    _rewrite(path, lambda d: d["images"][1].update(file_name="val2017/000000000009.jpg"))
    (tmp_path / "coco" / "val2017" / "000000000139.jpg").rename(tmp_path / "coco" / "val2017" / "000000000009.jpg")
    with pytest.raises(DataError, match=r"images 9 and 139 share the file stem '000000000009'"):
        load_paco_lvis(tmp_path, "train")
    path.write_text(original)
    _rewrite(path, lambda d: d["images"][0].update(height=0))
    with pytest.raises(DataError, match=r"image 9: height 0"):
        load_paco_lvis(tmp_path, "train")
    path.write_text(original)
    _rewrite(path, lambda d: d["images"].append(dict(d["images"][0])))
    with pytest.raises(DataError, match=r"image id 9 occurs twice"):
        load_paco_lvis(tmp_path, "train")


def test_shared_class_names_are_logged(tmp_path, caplog):
    write_paco_lvis(tmp_path)
    path = tmp_path / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json"
    _rewrite(path, lambda d: d["categories"].append({"id": 30, "name": "bow_(decorative_ribbon)"}))
    with caplog.at_level(logging.INFO):
        assert len(load_paco_lvis(tmp_path, "train")) == 4
    assert "1 class names are shared by several categories ('bow': [11, 30])" in caplog.text


# ---------------------------------------------------------------- Mapillary Vistas

def test_mapillary_pixel_exact_and_unlabeled_ignored(tmp_path):
    wrote = write_mapillary(tmp_path)
    samples = _by_id(load_mapillary(tmp_path, "training"))
    a, b = "--abc123XYZ", "_Zq9-Pw0"
    assert {k: s.text for k, s in samples.items()} == {
        f"{a}_1": "segment the road", f"{a}_2": "segment the crosswalk - plain", f"{a}_3": "segment the sky",
        f"{b}_0": "segment the bird", f"{b}_1": "segment the road"}
    for sid, s in samples.items():
        stem, k = sid.rsplit("_", 1)
        lab = wrote["labels"][stem]
        assert s.image == tmp_path / "mapillary" / "training" / "images" / f"{stem}.jpg"
        size = s.load_image().size
        np.testing.assert_array_equal(s.load_mask(size), lab == int(k))
        if stem == a:
            np.testing.assert_array_equal(s.load_ignore(size), lab == 4)
        else:
            assert s.ignore is None


def test_mapillary_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"Mapillary Vistas config not found: .*config_v2\.0\.json"):
        load_mapillary(tmp_path, "training")
    write_mapillary(tmp_path)
    config = tmp_path / "mapillary" / "config_v2.0.json"
    labels_dir = tmp_path / "mapillary" / "training" / "v2.0" / "labels"
    with pytest.raises(DataError, match=r"Mapillary Vistas validation folder not found: .*validation.v2\.0.labels"):
        load_mapillary(tmp_path, "validation")
    config.write_text(json.dumps({"labels": MAPILLARY_LABELS[:3]}))  # label 3 (sky) is now beyond the list
    with pytest.raises(DataError, match=r"--abc123XYZ\.png: label 3 but only 3 class names"):
        load_mapillary(tmp_path, "training")
    config.write_text(json.dumps({"labels": [{"name": "x"}]}))
    with pytest.raises(DataError, match=r"config_v2\.0\.json: labels\[0\]: .*'readable'"):
        load_mapillary(tmp_path, "training")
    config.write_text(json.dumps({"labels": MAPILLARY_LABELS}))
    (labels_dir / "_Zq9-Pw0.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read label map .*_Zq9-Pw0\.png"):
        load_mapillary(tmp_path, "training")


# ---------------------------------------------------------------- specs, alias, CLI

def test_specs_and_the_ade20k_alias(tmp_path):
    write_ade20k(tmp_path)
    write_cocostuff(tmp_path)
    write_pascal_part(tmp_path)
    write_paco_lvis(tmp_path)
    write_mapillary(tmp_path)
    ade = load_dataset(f"ade20k:validation@{tmp_path}")
    old = load_dataset(f"semseg:validation@{tmp_path}")
    assert [(s.id, s.text) for s in ade] == [(s.id, s.text) for s in old] == [
        ("ADE_val_00000001_3", "segment the sky"), ("ADE_val_00000001_7", "segment the road")]
    np.testing.assert_array_equal(ade[1].load_ignore((W, H)), ADE_LABELS == 0)
    counts = {name: len(load_dataset(f"{name}:{split}@{tmp_path}")) for name, split in [
        ("cocostuff", "train2017"), ("pascal_part", "train"), ("paco_lvis", "train"), ("mapillary", "training")]}
    assert counts == {"cocostuff": 4, "pascal_part": 3, "paco_lvis": 4, "mapillary": 5}
    for name in READERS:
        assert name in datasets.NAMES and f"    {name}:SPLIT@ROOT " in datasets.GRAMMAR
    with pytest.raises(DataError, match=r"expected cocostuff:SPLIT@ROOT"):
        load_dataset(f"cocostuff:train2017:x@{tmp_path}")


@pytest.mark.parametrize("spec, n", [("cocostuff:train2017", 4), ("pascal_part:train", 3), ("paco_lvis:train", 4),
                                     ("mapillary:training", 5), ("ade20k:validation", 2)])
def test_cli_data_check(tmp_path, capsys, spec, n):
    from self1e.cli import main

    for write in (write_ade20k, write_cocostuff, write_pascal_part, write_paco_lvis, write_mapillary):
        write(tmp_path)
    assert main(["data", "check", f"{spec}@{tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert f"{n} samples" in out and "problems: 0" in out
    (tmp_path / "coco" / "train2017" / "000000000009.jpg").write_bytes(b"not a jpeg")  # used by two sets
    (tmp_path / "vlpart" / "pascal_part" / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2008_000002.jpg").write_bytes(
        b"not a jpeg")
    (tmp_path / "mapillary" / "training" / "images" / "--abc123XYZ.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "ade20k" / "images" / "validation" / "ADE_val_00000001.jpg").write_bytes(b"not a jpeg")
    assert main(["data", "check", f"{spec}@{tmp_path}"]) == 1


def _convert_args(source, root, split, out):
    return argparse.Namespace(source=source, root=str(root), split=split, split_by=None, all_texts=False,
                              out=str(out))


@pytest.mark.parametrize("source, split", [("cocostuff", "train2017"), ("pascal_part", "train"),
                                           ("paco_lvis", "train"), ("mapillary", "training"),
                                           ("ade20k", "validation")])
def test_convert_goes_through_load_dataset(tmp_path, source, split):
    """`self1e data convert`'s body builds ``SOURCE:SPLIT@ROOT`` and exports what load_dataset gives."""
    from self1e.cli.data import run_convert

    root = tmp_path / "root"
    for write in (write_ade20k, write_cocostuff, write_pascal_part, write_paco_lvis, write_mapillary):
        write(root)
    out = tmp_path / f"{source}.jsonl"
    assert run_convert(_convert_args(source, root, split, out)) == 0
    want = load_dataset(f"{source}:{split}@{root}")
    got = read_jsonl(out)
    assert validate(got) == []
    assert [(s.id, s.text) for s in got] == [(s.id, s.text) for s in want]
    for g, w in zip(got, want):
        size = g.load_image().size
        np.testing.assert_array_equal(g.load_mask(size), w.load_mask(size))
        if w.ignore is None:
            assert g.ignore is None
        else:
            np.testing.assert_array_equal(g.load_ignore(size), w.load_ignore(size))


def test_cli_convert_accepts_the_new_names(tmp_path):
    from self1e.cli import main

    write_cocostuff(tmp_path / "root")
    out = tmp_path / "cs.jsonl"
    assert main(["data", "convert", "--from", "cocostuff", "--root", str(tmp_path / "root"), "--split",
                 "train2017", "--out", str(out)]) == 0
    assert len(read_jsonl(out)) == 4
