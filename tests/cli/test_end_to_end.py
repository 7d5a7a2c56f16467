"""A tiny model through the whole pipeline: data on disk -> `self1e eval` -> a complete report."""
import json

from data_fixtures import write_grefcoco, write_refcoco
from self1e.cli import main

METRICS = {"cIoU", "gIoU", "n", "P@0.5", "P@0.9"}


def test_eval_tiny_model_on_refshapes_and_refer_folders(tiny_model_dir, tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path / "rs"), "--split", "val", "--n", "12", "--seed", "3",
                 "--size", "64"]) == 0
    root = write_grefcoco(write_refcoco(tmp_path / "refer"))
    out = tmp_path / "report.json"
    rc = main(["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path / "rs" / "val.jsonl"),
               "--data", f"refcoco:unc:val@{root}", "--data", f"grefcoco:unc:val@{root}",
               "--out", str(out), "--batch-size", "5", "--num-overlays", "2", "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["model"] == str(tiny_model_dir) and report["software"]["torch"]
    entries = list(report["datasets"].values())
    assert len(entries) == 3
    assert entries[0]["n"] == 12 and "kinds" in entries[0]
    for entry in entries:
        assert METRICS <= set(entry) and 0.0 <= entry["cIoU"] <= 1.0
    assert "N_acc" in entries[2] and "T_acc" in entries[2]  # gRefCOCO has a no-target ref
    assert out.with_suffix(".md").read_text().count("|") > 10


def test_demo_runs_on_a_given_model(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from self1e.demo import run as demo

    monkeypatch.setattr(demo, "SPLITS", (("test", 6), ("test-compositional", 4)))  # keep the test quick
    monkeypatch.setattr(demo, "MULTI", 3)
    monkeypatch.setattr(demo, "CHAT", {"segmentation": 2, "vqa": 3, "multi": 2})
    report = demo.run_demo(str(tiny_model_dir), tmp_path / "demo", overlays=2, batch_size=4)
    assert set(report["datasets"]) == {"refshapes-test", "refshapes-test-compositional", "refshapes-multi-test"}
    multi = report["datasets"]["refshapes-multi-test"]
    assert multi["seg_emission"]["requests"] == 3 and multi["n"] >= 6  # every object of a request is scored
    assert report["chat"]["vqa"]["n"] == 3 and report["chat"]["multi_object"]["n"] == 2
    assert report["datasets"]["refshapes-test"]["n"] == 6
    assert len(list((tmp_path / "demo" / "refshapes-test").glob("*.png"))) == 2
    assert "cIoU" in capsys.readouterr().out
