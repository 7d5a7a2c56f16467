"""`self1e eval` end to end: predictions folders and a fake predictor on hand-computed rectangles."""
from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval_testdata import rect_mask, save_mask, write_dataset, write_predictions
from self1e.cli import main
from self1e.common.images import read_mask

SIZE = (20, 10)  # width, height
# Hand-computed case (ignore removes columns 15..19 of s5 from prediction and truth):
#   s0: gt 5x10=50, pred 5x10=50, overlap 5x5=25  -> I 25, U 75, IoU 1/3
#   s1: gt == pred, 10x4=40                        -> I 40, U 40, IoU 1
#   s2: no target, prediction file missing         -> I 0,  U 0,  IoU 1 (empty union)
#   s3: gt 4x4=16, prediction file missing         -> I 0,  U 16, IoU 0
#   s4: no target, prediction 2x2=4                -> I 0,  U 4,  IoU 0
#   s5: gt 10x10, pred 10x5, ignore the other 10x5 -> I 50, U 50, IoU 1 (0.5 without ignore)
ROWS = [
    {"id": "s0", "text": "the top left box", "gt": (0, 5, 0, 10), "kind": "a"},
    {"id": "s1", "text": "the left bar", "gt": (0, 10, 0, 4), "kind": "a"},
    {"id": "s2", "text": "the purple star", "gt": None, "kind": "none"},
    {"id": "s3", "text": "the small square", "gt": (2, 6, 2, 6), "kind": "b"},
    {"id": "s4", "text": "the orange cross", "gt": None, "kind": "none"},
    {"id": "s5", "text": "the right half", "gt": (0, 10, 10, 20), "ignore": (0, 10, 15, 20), "kind": "b"},
]
PREDS = {"s0": (0, 5, 5, 15), "s1": (0, 10, 0, 4), "s4": (0, 2, 0, 2), "s5": (0, 10, 10, 15)}


def run_cli(*argv: str | Path) -> int:
    return main(["eval", "--no-progress", *map(str, argv)])


def test_predictions_give_hand_computed_metrics(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", ROWS, SIZE)
    write_predictions(tmp_path / "preds", PREDS, SIZE)
    out = tmp_path / "rep" / "report.json"
    assert run_cli("--predictions", tmp_path / "preds", "--data", data, "--out", out) == 0
    rep = json.loads(out.read_text())
    d = rep["datasets"]["val"]
    assert d["spec"] == str(data) and d["n"] == 6
    assert d["cIoU"] == (25 + 40 + 50) / (75 + 40 + 0 + 16 + 4 + 50)
    assert d["gIoU"] == pytest.approx((1 / 3 + 1 + 1 + 0 + 0 + 1) / 6, abs=1e-15)
    assert d["N_acc"] == 1 / 2  # s2 empty, s4 not
    assert d["T_acc"] == 3 / 4  # s0, s1, s5 non-empty, s3 empty
    assert d["P@0.5"] == 2 / 4 and d["P@0.9"] == 2 / 4  # s1 and s5 of the 4 has-target samples
    assert d["missing_predictions"] == 2
    assert d["counts"]["intersection"] == 115 and d["counts"]["union"] == 185
    none = d["kinds"]["none"]
    assert (none["n"], none["cIoU"], none["gIoU"], none["N_acc"]) == (2, 0.0, 0.5, 0.5)
    assert d["kinds"]["b"]["cIoU"] == 50 / 66
    assert rep["predictions"] == str(tmp_path / "preds") and rep["model"] is None
    assert {"self1e", "torch", "python"} <= set(rep["software"])
    assert "gIoU" in rep["protocol"] and rep["schema_version"] == 1
    md = out.with_suffix(".md").read_text()
    printed = capsys.readouterr().out
    assert md == printed and "| val | 6 | 62.16 |" in md and "| val / none | 2 |" in md


def test_missing_data_file_exits_2(tmp_path, capsys):
    (tmp_path / "preds").mkdir()
    missing = tmp_path / "nope.jsonl"
    assert run_cli("--predictions", tmp_path / "preds", "--data", missing, "--out", tmp_path / "r.json") == 2
    err = capsys.readouterr().err
    assert "self1e eval: error:" in err and "nope.jsonl" in err
    assert not (tmp_path / "r.json").exists()


def test_wrong_size_prediction_exits_2_naming_the_file(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", ROWS[:2], SIZE)
    write_predictions(tmp_path / "preds", {"s0": (0, 5, 0, 5)}, SIZE)
    save_mask(tmp_path / "preds" / "s1.png", np.ones((SIZE[1], SIZE[0] + 1), bool))
    assert run_cli("--predictions", tmp_path / "preds", "--data", data, "--out", tmp_path / "r.json") == 2
    err = capsys.readouterr().err
    assert "s1.png" in err and "21x10" in err and "20x10" in err


def test_missing_predictions_folder_and_bad_options_exit_2(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", ROWS[:1], SIZE)
    assert run_cli("--predictions", tmp_path / "nowhere", "--data", data, "--out", tmp_path / "r.json") == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "p").mkdir()
    assert run_cli("--predictions", tmp_path / "p", "--data", data, "--out", tmp_path / "r.json",
                   "--batch-size", "0") == 2
    assert "--batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: exactly one of --model / --predictions
        run_cli("--model", "m", "--predictions", tmp_path / "p", "--data", data, "--out", tmp_path / "r.json")
    assert e.value.code == 2


@dataclass
class FakeResult:
    mask: np.ndarray
    logits: np.ndarray
    score: float


class FakePredictor:
    """Follows Self1ePredictor's batched API; the mask for a text comes from a lookup table."""

    def __init__(self, table: dict[str, tuple | None]) -> None:
        self.table = table
        self.calls: list[int] = []
        self.device = "cpu"
        self.model = types.SimpleNamespace(config=types.SimpleNamespace(to_dict=lambda: {"mask_head": "fake"}))

    def predict_many(self, images, texts):
        self.calls.append(len(texts))
        out = []
        for image, text in zip(images, texts):
            assert isinstance(image, Image.Image) and image.mode == "RGB"
            mask = rect_mask(image.size, self.table.get(text))
            logits = np.where(mask, 3.0, -3.0).astype(np.float32)
            out.append(FakeResult(mask, logits, 0.9))
        return out


def _install_fake_predictor(monkeypatch, fake: FakePredictor) -> list:
    seen: list = []

    class Self1ePredictor:
        @classmethod
        def from_pretrained(cls, path="default", device=None, config=None, threads=None):
            seen.append((path, device))
            return fake

    monkeypatch.setattr("self1e.inference.Self1ePredictor", Self1ePredictor)
    return seen


def test_model_path_with_fake_predictor_round_trips_through_saved_masks(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", ROWS, SIZE)
    table = {row["text"]: PREDS.get(row["id"]) for row in ROWS}
    fake = FakePredictor(table)
    seen = _install_fake_predictor(monkeypatch, fake)
    out = tmp_path / "model" / "report.json"
    rc = run_cli("--model", "ckpt", "--device", "cpu", "--data", data, "--out", out, "--batch-size", "4",
                 "--save-masks", tmp_path / "masks", "--num-overlays", "2")
    assert rc == 0 and seen == [("ckpt", "cpu")]
    assert fake.calls == [4, 2]  # batches of --batch-size, the last one partial
    model_rep = json.loads(out.read_text())
    assert model_rep["model"] == "ckpt" and model_rep["device"] == "cpu"
    m = model_rep["datasets"]["val"]
    assert m["cIoU"] == 115 / 185 and m["missing_predictions"] == 0
    for row in ROWS:  # saved masks are 0/255 PNGs equal to the predictions
        saved = np.asarray(Image.open(tmp_path / "masks" / f"{row['id']}.png"))
        assert set(np.unique(saved)) <= {0, 255}
        assert np.array_equal(saved != 0, rect_mask(SIZE, PREDS.get(row["id"])))
    overlays = sorted(p.name for p in (tmp_path / "model" / "report_overlays").iterdir())
    assert overlays == ["00000_s0.png", "00001_s1.png"]
    # Evaluating the saved masks gives the same metrics, bit for bit.
    out2 = tmp_path / "pred" / "report.json"
    assert run_cli("--predictions", tmp_path / "masks", "--data", data, "--out", out2) == 0
    p = json.loads(out2.read_text())["datasets"]["val"]
    keys = ["n", "cIoU", "gIoU", "P@0.5", "P@0.9", "N_acc", "T_acc", "kinds", "counts"]
    assert {k: p[k] for k in keys} == {k: m[k] for k in keys}


def test_several_datasets_limit_and_per_dataset_folders(tmp_path, monkeypatch):
    a = write_dataset(tmp_path / "one", ROWS[:3], SIZE)
    b = write_dataset(tmp_path / "two", ROWS[3:], SIZE)  # same file name val.jsonl
    fake = FakePredictor({row["text"]: row["gt"] for row in ROWS})  # a perfect model
    _install_fake_predictor(monkeypatch, fake)
    out = tmp_path / "r.json"
    rc = run_cli("--model", "x", "--data", a, "--data", b, "--out", out, "--limit", "2",
                 "--save-masks", tmp_path / "m")
    assert rc == 0
    rep = json.loads(out.read_text())
    assert list(rep["datasets"]) == ["val", "two_val"]
    for d in rep["datasets"].values():
        assert d["n"] == 2 and d["cIoU"] == 1.0 and d["gIoU"] == 1.0
    assert sorted(p.name for p in (tmp_path / "m" / "val").iterdir()) == ["s0.png", "s1.png"]
    assert sorted(p.name for p in (tmp_path / "m" / "two_val").iterdir()) == ["s3.png", "s4.png"]
    assert rep["throughput"]["samples"] == 4
    assert read_mask(tmp_path / "m" / "two_val" / "s4.png").sum() == 0


def test_dataset_keys_are_short_and_unique(tmp_path):
    from self1e.eval.report import dataset_key

    taken: set[str] = set()
    assert dataset_key("refcoco:unc:val@/data", taken) == "refcoco_unc_val"
    assert dataset_key("grefcoco:unc:testA@/data", taken) == "grefcoco_unc_testA"
    assert dataset_key("/x/refshapes/val.jsonl", taken) == "val"
    assert dataset_key("/y/refshapes/val.jsonl", taken) == "refshapes_val"
    assert dataset_key("/z/refshapes/val.jsonl", taken) == "val_2"


def test_overlay_draws_mask_truth_and_caption():
    from self1e.common.overlay import GREEN, overlay

    image = Image.new("RGB", (40, 30), (0, 0, 255))
    pred = rect_mask((40, 30), (5, 25, 5, 20))
    gt = rect_mask((40, 30), (10, 20, 25, 35))
    plain = np.asarray(overlay(image, pred, gt=gt))
    assert plain.shape == (30, 40, 3)
    assert plain[15, 12, 0] > 100 and plain[15, 12, 2] < 255  # tinted red inside the prediction
    assert tuple(plain[28, 38]) == (0, 0, 255)  # untouched outside
    assert tuple(plain[10, 30]) == GREEN  # truth outline
    captioned = overlay(image, pred, "the box on the left")
    assert captioned.width == 40 and captioned.height > 30
    with pytest.raises(ValueError, match="height, width"):
        overlay(image, np.zeros((40, 30), bool))
