"""`self1e data plan`: the counts it prints equal counts made by hand from the files on disk."""
import json
import math
from collections import Counter

import yaml

from self1e.cli import main
from self1e.data.refshapes import generate


def _hand_units(jsonl, k=3):
    per_image = Counter(json.loads(line)["image"] for line in jsonl.read_text().splitlines())
    return len(per_image), sum(math.ceil(n / k) for n in per_image.values())


def _config(tmp_path, seg, vqa, **extra):
    cfg = {"model": "tiny:tiny", "batch_size": 4, "grad_accum": 2, "expressions_per_image": 3, "seed": 5,
           "mix": {"mode": "repeat", "groups": ["sem_seg", "refer_seg", "vqa"], "repeats": [1, 2, 3]},
           "data": [{"spec": str(seg), "group": "refer_seg"}, {"spec": str(vqa), "group": "vqa"},
                    {"spec": str(tmp_path / "cocostuff_missing.jsonl"), "group": "sem_seg"}], **extra}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plan_counts_equal_hand_counts_and_missing_data_fails(tmp_path, capsys):
    seg = generate(tmp_path / "seg", "train", 14, seed=1, per_image=4, progress=False)
    vqa = generate(tmp_path / "vqa", "train", 9, seed=2, kind="vqa", progress=False)
    seg_images, seg_units = _hand_units(seg)
    _, vqa_units = _hand_units(vqa)
    config = _config(tmp_path, seg, vqa)
    assert main(["data", "plan", str(config), "--json", "--processes", "2"]) == 1  # one dataset is missing
    plan = json.loads(capsys.readouterr().out)
    ref, q, missing = plan["datasets"]
    assert (ref["samples_found"], ref["images_found"], ref["units_per_epoch"]) == (14, seg_images, 2 * seg_units)
    assert (q["samples_found"], q["vqa_samples_kept"], q["units_per_epoch"]) == (9, 9, 3 * vqa_units)
    assert "error" in missing and plan["missing"] == [missing["spec"]]
    total = 2 * seg_units + 3 * vqa_units
    assert plan["units_per_epoch"] == total and plan["global_batch"] == 4 * 2 * 2
    assert plan["micro_batches_per_epoch"] == (total // 8) * 2 and plan["steps_per_epoch"] == total // 8 // 2
    assert abs(plan["groups"]["vqa"]["share"] - 3 * vqa_units / total) < 1e-9
    assert main(["data", "plan", str(config), "--allow-missing"]) == 0
    text = capsys.readouterr().out
    assert "MISSING" in text and f"{total:,} units" in text


def test_plan_applies_max_images_and_set_overrides(tmp_path, capsys):
    seg = generate(tmp_path / "seg", "train", 14, seed=1, per_image=4, progress=False)
    vqa = generate(tmp_path / "vqa", "train", 9, seed=2, kind="vqa", progress=False)
    config = _config(tmp_path, seg, vqa)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"][0]["max_images"] = 2
    config.write_text(yaml.safe_dump(cfg))
    assert main(["data", "plan", str(config), "--json", "--allow-missing", "--set", "mix.repeats=[1, 1, 1]"]) == 0
    ref = json.loads(capsys.readouterr().out)["datasets"][0]
    per_image = Counter(json.loads(line)["image"] for line in seg.read_text().splitlines())
    assert ref["images_found"] == len(per_image) and ref["images_kept"] == 2
    pairs = {(a + b, math.ceil(a / 3) + math.ceil(b / 3)) for i, a in enumerate(per_image.values())
             for j, b in enumerate(per_image.values()) if i < j}
    assert (ref["samples_kept"], ref["units_per_epoch"]) in pairs  # the samples of two whole images, repeat 1
