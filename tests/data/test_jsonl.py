"""The JSONL format: reading, writing, validation and error messages (docs/data.md)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from self1e.data.jsonl import read_jsonl, validate, write_jsonl
from self1e.data.sample import DataError, Sample


def _png(path, w=12, h=8, mode="RGB", fill=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if fill is None:
        Image.new(mode, (w, h), 128 if mode != "RGB" else (10, 20, 30)).save(path)
    else:
        Image.fromarray(fill).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    _png(tmp_path / "images" / "a.png")
    m = np.zeros((8, 12), dtype=np.uint8)
    m[2:5, 3:9] = 7  # any non-zero value is foreground
    _png(tmp_path / "masks" / "a.png", fill=m)
    _png(tmp_path / "masks" / "big.png", w=13, h=8, mode="L")
    return tmp_path


def _write(folder, lines, name="d.jsonl"):
    p = folder / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_read_fields_ids_and_blank_lines(folder):
    p = _write(folder, [
        json.dumps({"image": "images/a.png", "text": "the thing", "mask": "masks/a.png",
                    "kind": "attribute"}),
        "",
        json.dumps({"image": str(folder / "images/a.png"), "text": "nothing", "mask": None}),
        "   ",
        json.dumps({"image": "images/a.png", "question": "What?", "answer": "Red.", "id": "q7"}),
        json.dumps({"image": "images/a.png", "text": "über ✓", "id": 42}),
    ])
    s = read_jsonl(p)
    assert [x.id for x in s] == ["0", "1", "q7", "42"]  # index among non-blank lines, or given
    assert s[0].kind == "attribute" and s[0].where == f"{p}:1"
    assert s[1].where == f"{p}:3"  # messages count editor lines, blank ones included
    expected = np.zeros((8, 12), dtype=bool)
    expected[2:5, 3:9] = True
    np.testing.assert_array_equal(s[0].load_mask((12, 8)), expected)
    assert s[1].mask is None and not s[1].load_mask((12, 8)).any()
    assert s[2].is_vqa and s[2].question == "What?" and s[2].answer == "Red."
    assert s[3].text == "über ✓"
    assert validate(s) == []


@pytest.mark.parametrize("line, field", [
    ('{"image": "images/a.png", "text": "x"', None),          # invalid JSON
    ('["images/a.png"]', None),                               # not an object
    ('{"text": "x"}', "image"),
    ('{"image": "images/a.png"}', "text"),
    ('{"image": "images/a.png", "text": "   "}', "text"),
    ('{"image": "images/a.png", "text": 3}', "text"),
    ('{"image": "images/missing.png", "text": "x"}', "image"),
    ('{"image": "images/a.png", "text": "x", "mask": "masks/missing.png"}', "mask"),
    ('{"image": "images/a.png", "text": "x", "ignore": "nope.png"}', "ignore"),
    ('{"image": "images/a.png", "question": "q"}', "answer"),
    ('{"image": "images/a.png", "text": "x", "id": ""}', "id"),
])
def test_bad_lines_name_file_line_and_field(folder, line, field):
    ok = json.dumps({"image": "images/a.png", "text": "fine"})
    p = _write(folder, [ok, "", line])
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    msg = str(e.value)
    assert f"{p}:3" in msg
    if field:
        assert f"'{field}'" in msg


def test_duplicate_ids(folder):
    line = json.dumps({"image": "images/a.png", "text": "x", "id": "same"})
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'id': duplicate id 'same'.*line 1"):
        read_jsonl(_write(folder, [line, line]))


def test_skip_bad_reports_count_and_reasons(folder, caplog):
    p = _write(folder, [json.dumps({"image": "images/a.png", "text": "ok"}), "{oops",
                        json.dumps({"image": "images/zz.png", "text": "x"}),
                        json.dumps({"image": "images/a.png", "text": "ok2"})])
    problems: list[str] = []
    with caplog.at_level(logging.WARNING):
        s = read_jsonl(p, skip_bad=True, problems=problems)
    assert [x.text for x in s] == ["ok", "ok2"]
    assert [x.id for x in s] == ["0", "3"]  # ids stay the line index, skipped lines included
    assert len(problems) == 2 and ":2:" in problems[0] and "'image'" in problems[1]
    assert "skipped 2 bad line(s)" in caplog.text


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "none.jsonl")


def test_validate_wrong_size_mask_and_truncated_image(folder):
    full = (folder / "images/a.png").read_bytes()
    (folder / "images/half.png").write_bytes(full[: len(full) // 2])
    p = _write(folder, [
        json.dumps({"image": "images/a.png", "text": "x", "mask": "masks/big.png"}),
        json.dumps({"image": "images/half.png", "text": "y"}),
        json.dumps({"image": "images/a.png", "text": "z", "ignore": "masks/big.png"}),
        json.dumps({"image": "images/a.png", "text": "w", "mask": "masks/a.png"}),
    ])
    samples = read_jsonl(p)  # structure and existence are fine: nothing decoded yet
    problems = validate(samples)
    assert len(problems) == 3
    assert problems[0].startswith(f"{p}:1") and "mask is 13x8" in problems[0]
    assert problems[1].startswith(f"{p}:2") and "cannot read image" in problems[1]
    assert problems[2].startswith(f"{p}:3") and "ignore" in problems[2]
    with pytest.raises(DataError, match="masks must match"):
        samples[0].load_mask((12, 8))


def test_validate_instances_union(folder):
    m = np.zeros((8, 12), dtype=np.uint8)
    m[0:2, 0:2] = 255
    _png(folder / "masks/other.png", fill=m)
    p = _write(folder, [
        json.dumps({"image": "images/a.png", "text": "both", "mask": "masks/a.png",
                    "instances": ["masks/a.png"]}),
        json.dumps({"image": "images/a.png", "text": "bad", "mask": "masks/a.png",
                    "instances": ["masks/other.png"]}),
    ])
    problems = validate(read_jsonl(p))
    assert len(problems) == 1 and ":2" in problems[0] and "instances" in problems[0]


def test_write_then_read_round_trip(folder):
    records = [
        {"image": folder / "images/a.png", "text": "the thing", "mask": folder / "masks/a.png",
         "kind": "size", "id": "s1"},
        {"image": "images/a.png", "text": "none", "mask": None},
        Sample(id="v", image=folder / "images/a.png", question="Q?", answer="A."),
    ]
    p = write_jsonl(folder / "out.jsonl", records)
    lines = p.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["image"] == "images/a.png"  # written relative to the file
    back = read_jsonl(p)
    assert [s.id for s in back] == ["s1", "1", "v"]
    assert back[0].kind == "size" and back[1].mask is None and back[2].is_vqa
    with pytest.raises(DataError, match="in memory"):
        write_jsonl(folder / "bad.jsonl", [Sample(id="m", image=lambda: None, text="x")])
