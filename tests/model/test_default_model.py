"""The shipped default model: it loads by name, is small, and still scores (a regression floor)."""
import json
from pathlib import Path

import pytest

from self1e.model.weights import DEFAULT_MODEL_DIR, resolve_model_path

REPORTS = Path(__file__).resolve().parents[2] / "docs" / "default_model"  # its logs and report live in the repo

# Measured on this exact sample set when the model was committed (see docs/default_model/eval_report.json), minus a
# margin for floating-point differences between machines. A drop below means the model or the
# pipeline (preprocessing, prompt, head, resizing, metrics) got worse.
SAMPLES = "refshapes:test:200:777"  # 200 samples, 20 of them no-target
FLOORS = {"cIoU": 0.78, "gIoU": 0.75, "N_acc": 0.8, "T_acc": 0.95}  # measured 0.811, 0.772, 0.85 (17/20), 0.989
# Chat on fresh samples: 40 segmentation requests, 60 VQA questions, 20 multi-object requests.
CHAT_SAMPLES = {"segmentation": "refshapes:test:40:778", "vqa": "refshapes-vqa:test:60:778",
                "multi": "refshapes-multi:test:20:778"}
CHAT_FLOORS = {("vqa", "exact_match"): 0.6, ("vqa", "answered_without_seg"): 0.95,  # measured 0.700, 1.0
               ("segmentation", "answered_with_seg"): 0.95, ("multi_object", "right_seg_count"): 0.9,  # 1.0, 1.0
               ("multi_object", "per_object_cIoU"): 0.75,  # measured 0.834 (46 objects of 20 requests)
               # the free answers' own masks: far lower, as the model restates the phrases (2 of 20 as asked)
               ("multi_object", "free_answer_cIoU"): 0.35}  # measured 0.428


def test_default_resolves_and_is_small():
    assert resolve_model_path("default") == DEFAULT_MODEL_DIR
    weights = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.glob("*.safetensors"))
    assert 0 < weights <= 10 * 2**20
    report = json.loads((REPORTS / "eval_report.json").read_text())
    assert report["datasets"]["refshapes-test"]["n"] >= 200
    # the installed package ships what inference needs, no training logs or reports
    assert not list(DEFAULT_MODEL_DIR.glob("*.jsonl")) and not (DEFAULT_MODEL_DIR / "eval_report.json").exists()


@pytest.mark.slow
def test_default_model_scores_above_its_floor():
    from self1e.data.datasets import load_dataset
    from self1e.eval.evaluate import PredictorSource, evaluate
    from self1e.inference.predictor import Self1ePredictor

    predictor = Self1ePredictor.from_pretrained("default", device="cpu")
    metrics = evaluate(PredictorSource(predictor), load_dataset(SAMPLES), batch_size=16, progress=False).metrics
    for key, floor in FLOORS.items():
        assert metrics[key] >= floor, f"{key} {metrics[key]:.4f} fell below {floor}"


@pytest.mark.slow
def test_default_model_talks_and_decides_when_to_segment():
    from self1e.data.datasets import load_dataset
    from self1e.eval.chat import evaluate_chat
    from self1e.inference.predictor import Self1ePredictor

    predictor = Self1ePredictor.from_pretrained("default", device="cpu")
    chat = evaluate_chat(predictor, progress=False, **{k: load_dataset(v) for k, v in CHAT_SAMPLES.items()})
    for (group, key), floor in CHAT_FLOORS.items():
        assert chat[group][key] >= floor, f"{group} {key} {chat[group][key]:.3f} fell below {floor}"
    seg = chat["segmentation"]  # masks through chat agree with predict() (measured 0.859 against 0.882)
    assert abs(seg["chat_cIoU"] - seg["predict_cIoU"]) <= 0.03
    multi = chat["multi_object"]  # objects asked together come out nearly as well as alone (0.834 against 0.825)
    assert multi["one_at_a_time_cIoU"] - multi["per_object_cIoU"] <= 0.05


def test_cli_accepts_default(tmp_path):
    import numpy as np
    from PIL import Image

    from self1e.cli import main

    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(tmp_path / "im.png")
    assert main(["segment", "--model", "default", "--image", str(tmp_path / "im.png"), "--text", "the red circle",
                 "--out", str(tmp_path / "m.png")]) == 0
    assert Image.open(tmp_path / "m.png").size == (70, 50)
