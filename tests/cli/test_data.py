"""`self1e data synth / convert / check` through the real CLI entry point."""
from __future__ import annotations

import json

import numpy as np

from data_fixtures import (
    EXPECTED,
    GEXPECTED,
    reasonseg_expected,
    rect,
    write_ade20k,
    write_grefcoco,
    write_reasonseg,
    write_refcoco,
)
from self1e.cli import main
from self1e.data.jsonl import read_jsonl, validate


def test_synth_then_check(tmp_path, capsys):
    out = tmp_path / "rs"
    assert main(["data", "synth", "--out", str(out), "--split", "test-compositional", "--n", "12",
                 "--seed", "1", "--size", "64", "--vqa"]) == 0
    path = out / "test-compositional.jsonl"
    assert path.is_file()
    capsys.readouterr()
    assert main(["data", "check", str(path)]) == 0
    report = capsys.readouterr().out
    assert "12 referring" in report and "problems: 0" in report
    assert main(["data", "check", str(out)]) == 0  # a folder of JSONL files


def test_check_reports_problems_and_exit_codes(tmp_path, capsys):
    main(["data", "synth", "--out", str(tmp_path), "--split", "val", "--n", "4", "--size", "64"])
    path = tmp_path / "val.jsonl"
    with path.open("a") as f:
        f.write('{"image": "val/images/000000.png", "text": ""}\n{not json\n')
    capsys.readouterr()
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "problems: 2" in out and "empty text" in out and "invalid JSON" in out
    assert main(["data", "check", "refcocox:unc:val@/nowhere"]) == 2
    assert "unknown dataset name" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path), "--size", "32", "--n", "1"]) == 2


def test_check_a_spec(tmp_path, capsys):
    write_refcoco(tmp_path)
    assert main(["data", "check", f"refcoco:unc:val@{tmp_path}"]) == 0
    assert "4 samples" in capsys.readouterr().out


def test_convert_refcoco_pixel_exact(tmp_path):
    write_refcoco(tmp_path / "root")
    out = tmp_path / "conv" / "refcoco_val.jsonl"
    assert main(["data", "convert", "--from", "refcoco", "--root", str(tmp_path / "root"),
                 "--split", "val", "--split-by", "unc", "--out", str(out)]) == 0
    samples = read_jsonl(out)
    assert {s.id for s in samples} == set(EXPECTED) and validate(samples) == []
    for s in samples:
        np.testing.assert_array_equal(s.load_mask(s.load_image().size), rect(EXPECTED[s.id]))
    masks = {json.loads(line)["mask"] for line in out.read_text().splitlines()}
    assert len(masks) == 3  # the two sentences of ref 1 share one mask file


def test_convert_grefcoco_no_target_is_null(tmp_path):
    write_grefcoco(tmp_path / "root")
    out = tmp_path / "g.jsonl"
    assert main(["data", "convert", "--from", "grefcoco", "--root", str(tmp_path / "root"),
                 "--split", "val", "--out", str(out)]) == 0
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert recs["11_110"]["mask"] is None and recs["11_110"]["kind"] == "none"
    assert len(recs["12_120"]["instances"]) == 2
    samples = {s.id: s for s in read_jsonl(out)}
    assert validate(samples.values()) == []
    for sid, expected in GEXPECTED.items():
        got = samples[sid].load_mask(samples[sid].load_image().size)
        np.testing.assert_array_equal(got, expected if expected is not None else np.zeros_like(got))


def test_convert_reasonseg_and_semseg(tmp_path):
    root = tmp_path / "root"
    write_reasonseg(root)
    write_ade20k(root)
    out = tmp_path / "rs.jsonl"
    assert main(["data", "convert", "--from", "reasonseg", "--root", str(root), "--split", "val",
                 "--all-texts", "--out", str(out)]) == 0
    samples = read_jsonl(out)
    assert len(samples) == 2 and validate(samples) == []
    target, ignore = reasonseg_expected()
    size = samples[0].load_image().size
    np.testing.assert_array_equal(samples[0].load_mask(size), target)
    np.testing.assert_array_equal(samples[0].load_ignore(size), ignore)
    out2 = tmp_path / "ade.jsonl"
    assert main(["data", "convert", "--from", "semseg", "--root", str(root), "--split",
                 "validation", "--out", str(out2)]) == 0
    assert [s.text for s in read_jsonl(out2)] == ["segment the sky", "segment the road"]
