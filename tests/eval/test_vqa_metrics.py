"""VQA accuracy and GQA exact match against hand-computed cases from the official definitions, and
`self1e eval` scoring a tiny random model's own answers on VQA evaluation sets."""
from __future__ import annotations

import json
import types
from fractions import Fraction
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from data.fixture_vqa import EVAL_QUESTIONS, write_eval, write_internvl_vqa
from self1e.cli import main
from self1e.data.datasets import load_dataset
from self1e.data.internvl_vqa import VqaEvalSample
from self1e.eval.vqa_metrics import (
    VQA_MAX_NEW_TOKENS,
    VqaAccumulator,
    evaluate_vqa,
    gqa_exact_match,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_score,
)

OTHERS = ["dog", "bird", "fish", "cow", "horse", "sheep", "goat", "duck", "frog", "mouse"]


@pytest.mark.parametrize(("raw", "expected"), [
    ("Two dogs.", "2 dogs"),
    ("2 dogs", "2 dogs"),
    ("dont", "don't"),
    ("Dont know", "don't know"),
    ("isnt it", "isn't it"),
    ("youve", "you've"),
    ("couldnt've", "couldn't've"),
    ("don't", "don't"),                 # apostrophes are kept
    ("The  Cat!", "cat"),               # articles dropped, spaces collapsed, ! touching nothing -> space
    ("a dog and an apple", "dog and apple"),
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),               # number words up to ten only
    ("1,000", "1000"),                  # comma between digits
    ("1,000-ft", "1000ft"),             # with a digit comma digit, every mark is deleted
    ("x-ray, 2", "x ray 2"),            # ", " touches a space: deleted; "-" does not: a space
    ("black - white", "black white"),
    ("3.5", "3.5"),                     # a period before a digit stays
    ("yes.", "yes"),
    ("5.", "5"),
    ("a.m.", "am"),
    ("\tYes\n", "yes"),
    ("left/right", "left right"),
    ("(left)", "left"),                 # "(" and ")" touch no space: spaces, then stripped by the split
    ("what?", "what"),
    ("dog's", "dog's"),
    ("50%", "50%"),                     # % is not in the punctuation list
    ("12:30", "12:30"),
])
def test_normalisation_hand_cases(raw, expected):
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize(("k", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_accuracy_by_number_of_humans(k, expected):
    answers = ["cat"] * k + OTHERS[: 10 - k]
    assert vqa_accuracy("cat", answers) == expected  # exact: k/3 capped at 1, averaged over 10 sets of 9
    assert vqa_accuracy("Cat.", answers[::-1]) == expected  # order and normalisation do not matter


def test_soft_accuracy_exact_fractions_and_normalised_answers():
    # 1 match: 9 of the 10 leave-one-out sets hold it once -> (9 * 1/3 + 0) / 10
    assert vqa_score("cat", ["cat"] + OTHERS[:9]) == Fraction(3, 10)
    # "Two dogs." against three "2 dogs": 3 humans -> (3 * 2/3 + 7 * 1) / 10
    assert vqa_score("Two dogs.", ["2 dogs"] * 3 + OTHERS[:7]) == Fraction(9, 10)
    # the human answers are normalised too: "dont" and "don't" are one answer
    assert vqa_score("don't", ["dont", "don't"] + OTHERS[:8]) == Fraction(6, 10)
    # unanimous humans, a prediction with case and a full stop (normalised here, unlike the script)
    assert vqa_score("Yes.", ["yes"] * 10) == 1
    assert vqa_score("no", ["yes"] * 10) == 0
    # not ten answers: the same definition (mean over each answer left out)
    assert vqa_score("a", ["a", "b", "c"]) == Fraction(0 + 1 + 1, 3 * 3)
    with pytest.raises(ValueError):
        vqa_score("a", [])


@pytest.mark.parametrize(("pred", "answers", "expected"), [
    ("yes", "yes", True),
    ("Yes.", "yes", True),
    ("  Red  ", "red", True),
    ("red", "Red", True),
    ("red car", "red", False),
    ("the red", "red", False),   # no article removal in exact match
    ("2", "two", False),         # no number words either
    ("left", ["right", "left"], True),
])
def test_gqa_exact_match(pred, answers, expected):
    assert gqa_exact_match(pred, answers) is expected


def _sample(qid: str, answers, metric="vqa_accuracy") -> VqaEvalSample:
    return VqaEvalSample(id=qid, image="x.png", question="q", answers=tuple(answers), metric=metric)


def test_accumulator_is_exact_and_merges_in_any_order():
    samples = [_sample("1", ["cat"] * 1 + OTHERS[:9]), _sample("2", ["cat"] * 2 + OTHERS[:8]),
               _sample("3", OTHERS), _sample("4", ["cat [SEG]"] * 10)]
    whole = VqaAccumulator("vqa_accuracy")
    for s in samples:
        whole.update("cat" if s.id != "4" else "cat [SEG]", s)
    assert whole.n == 4 and whole.score == Fraction(3 + 6 + 0 + 10, 10) / 1
    assert whole.accuracy == float(Fraction(19, 40)) and whole.answered_with_seg == 1
    a, b = VqaAccumulator("vqa_accuracy"), VqaAccumulator("vqa_accuracy")
    a.update("cat", samples[2])
    a.update("cat [SEG]", samples[3])
    b.update("cat", samples[1])
    b.update("cat", samples[0])
    merged = VqaAccumulator.from_state_dict(json.loads(json.dumps(b.state_dict())))
    merged.merge(a)
    assert merged.state_dict() == whole.state_dict()
    with pytest.raises(ValueError, match="metric 'exact_match'"):
        whole.update("cat", _sample("5", ["cat"], metric="exact_match"))
    gqa = VqaAccumulator("exact_match")
    gqa.update("Cat.", _sample("5", ["cat"], metric="exact_match"))
    gqa.update("dog", _sample("6", ["cat"], metric="exact_match"))
    assert gqa.accuracy == 0.5 and gqa.counts()["n"] == 2


# ---- self1e eval on a tiny random model ------------------------------------------------------------

def _answers(model_dir, spec: str) -> list[str]:
    """What the model answers to each question of ``spec``, asked as ``self1e eval`` asks (greedy)."""
    from self1e.inference import Self1ePredictor

    predictor = Self1ePredictor.from_pretrained(model_dir, device="cpu")
    out = []
    for s in load_dataset(spec):
        predictor.set_image(s.load_image())
        out.append(predictor.chat(s.question, max_new_tokens=VQA_MAX_NEW_TOKENS).text)
    return out


def test_eval_command_scores_the_models_own_answers(tmp_path, tiny_model_dir, capsys, monkeypatch):
    root = tmp_path / "root"
    write_internvl_vqa(root)
    vqa_spec, gqa_spec = f"internvl_vqa_eval:vqav2@{root}", f"internvl_vqa_eval:gqa@{root}"
    said = _answers(tiny_model_dir, vqa_spec)
    gqa_said = _answers(tiny_model_dir, gqa_spec)
    assert all(a.strip() for a in said + gqa_said)  # the random model says something
    # Rewrite the ground truth so that 4, 1 and 0 of the ten humans give the model's own answer.
    seeded = [(qid, image, question, [said[i]] * k + OTHERS[: 10 - k])
              for i, ((qid, image, question, _), k) in enumerate(zip(EVAL_QUESTIONS, (4, 1, 0)))]
    write_eval(root, "vqav2", seeded)
    write_eval(root, "gqa", [(qid, image, question, [gqa_said[0] if i == 0 else "zebra"])
                             for i, (qid, image, question, _) in enumerate(EVAL_QUESTIONS[:2])])
    expected = sum(vqa_score(a, q[3]) for a, q in zip(said, seeded)) / 3
    assert expected == Fraction(1 + Fraction(3, 10) + 0, 3)  # the hand value of 4, 1 and 0 humans

    from self1e.inference import Self1ePredictor

    asked, chat = [], Self1ePredictor.chat

    def recording_chat(self, message, *args, **kwargs):  # the real chat, with what it was asked noted
        response = chat(self, message, *args, **kwargs)
        asked.append((message, kwargs.get("max_new_tokens"), kwargs.get("do_sample", False), response.text))
        return response

    monkeypatch.setattr(Self1ePredictor, "chat", recording_chat)
    out = tmp_path / "rep" / "report.json"
    rc = main(["eval", "--no-progress", "--model", str(tiny_model_dir), "--device", "cpu", "--data", vqa_spec,
               "--data", gqa_spec, "--data", "refshapes:test:2:3", "--out", str(out)])
    assert rc == 0
    questions = [s.question for s in load_dataset(vqa_spec) + load_dataset(gqa_spec)]
    assert questions[0] == "What colour is the bus?\nAnswer the question using a single word or phrase."
    vqa_asked = [a for a in asked if a[0] in questions]  # the refshapes set may chat about its multi requests
    assert vqa_asked == [(q, VQA_MAX_NEW_TOKENS, False, a) for q, a in zip(questions, said + gqa_said[:2])]
    rep = json.loads(out.read_text())
    vqa = rep["datasets"]["internvl_vqa_eval_vqav2"]
    assert vqa["task"] == "vqa" and vqa["metric"] == "vqa_accuracy" and vqa["n"] == 3
    assert vqa["accuracy"] == float(expected)
    assert (vqa["counts"]["score_numerator"], vqa["counts"]["score_denominator"]) == (13, 10)  # sum 1 + 3/10
    assert vqa["spec"] == vqa_spec and vqa["answered_with_seg_rate"] == sum("[SEG]" in a for a in said) / 3
    gqa = rep["datasets"]["internvl_vqa_eval_gqa"]
    assert gqa["metric"] == "exact_match" and gqa["n"] == 2 and gqa["accuracy"] == 0.5
    seg = rep["datasets"]["refshapes_test_2_3"]
    assert seg["n"] == 2 and "cIoU" in seg and "task" not in seg
    assert "vqa_eval" in rep["protocol"] and rep["throughput"]["samples"] == 3 + 2 + 2
    md = out.with_suffix(".md").read_text()
    assert md == capsys.readouterr().out
    assert "| refshapes_test_2_3 | 2 |" in md
    assert f"| internvl_vqa_eval_vqav2 | 3 | VQA accuracy | {100 * float(expected):.2f} |" in md
    assert "| internvl_vqa_eval_gqa | 2 | exact match | 50.00 |" in md

    # --limit keeps the first questions: 4 humans -> 1.0
    rc = main(["eval", "--no-progress", "--model", str(tiny_model_dir), "--device", "cpu", "--data", vqa_spec,
               "--limit", "1", "--out", str(tmp_path / "one.json")])
    one = json.loads((tmp_path / "one.json").read_text())["datasets"]["internvl_vqa_eval_vqav2"]
    assert rc == 0 and one["n"] == 1 and one["accuracy"] == 1.0
    md = (tmp_path / "one.md").read_text()
    assert "| dataset | n | cIoU" not in md  # no segmentation table without a segmentation dataset


def test_eval_command_refuses_vqa_sets_with_a_predictions_folder(tmp_path, capsys):
    write_internvl_vqa(tmp_path / "root")
    (tmp_path / "preds").mkdir()
    rc = main(["eval", "--no-progress", "--predictions", str(tmp_path / "preds"), "--data",
               f"internvl_vqa_eval:okvqa@{tmp_path / 'root'}", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs --model" in err and not (tmp_path / "r.json").exists()


# ---- sharded: two gloo processes give exactly the one-process sums --------------------------------

class _ScriptedPredictor:
    """Answers by question, from a script; counts how often the image was set."""

    processor = types.SimpleNamespace(seg_token="[SEG]")

    def __init__(self) -> None:
        self.images_set = 0

    def set_image(self, image) -> None:
        self.images_set += 1

    def chat(self, message: str, max_new_tokens: int = 64):
        if message == "boom" and self.images_set and dist.is_initialized() and dist.get_rank() == 1:
            raise RuntimeError("rank 1 broke")
        return types.SimpleNamespace(text=message.split("|")[0])


def _sharded_samples(boom: bool = False) -> list[VqaEvalSample]:
    """Eleven questions; the answer to each is the part of its question before "|"; images shared by
    consecutive questions (set once per run of the same image)."""
    out = []
    for i in range(11):
        k = i % 5  # humans giving the answer
        answer = "boom" if boom and i == 1 else f"a{i % 3}"
        out.append(VqaEvalSample(id=str(i), image=f"img{i // 2}.png", question=f"{answer}|q{i}" if answer != "boom"
                                 else "boom", answers=tuple([answer] * k + OTHERS[: 10 - k])))
    return out


def _run_sharded(rank: int, tmp: str, world: int, boom: bool) -> None:
    tmp_path = Path(tmp)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / f'store{boom}'}", rank=rank, world_size=world)
    try:
        from self1e.data.sample import Sample
        orig = Sample.load_image
        Sample.load_image = lambda self: None  # no image files: the scripted predictor ignores images
        try:
            res = evaluate_vqa(_ScriptedPredictor(), _sharded_samples(boom), progress=False)
            out = {"state": res.accumulator.state_dict(), "world": res.world_size}
        except (RuntimeError, ValueError) as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        finally:
            Sample.load_image = orig
        (tmp_path / f"rank{rank}_{boom}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_vqa_eval_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(VqaEvalSample, "load_image", lambda self: None)
    predictor = _ScriptedPredictor()
    single = evaluate_vqa(predictor, _sharded_samples(), progress=False)
    assert predictor.images_set == 6  # 11 questions on 6 images, asked in order
    humans = [i % 5 for i in range(11)]
    assert single.accumulator.score == sum(Fraction([0, 3, 6, 9, 10][k], 10) for k in humans)
    monkeypatch.undo()
    mp.spawn(_run_sharded, args=(str(tmp_path), 2, False), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}_False.json").read_text())
        assert got["world"] == 2 and got["state"] == json.loads(json.dumps(single.accumulator.state_dict()))
    mp.spawn(_run_sharded, args=(str(tmp_path), 2, True), nprocs=2, join=True)
    own = json.loads((tmp_path / "rank1_True.json").read_text())["error"]
    other = json.loads((tmp_path / "rank0_True.json").read_text())["error"]
    assert own == "RuntimeError: rank 1 broke"
    assert other == "ValueError: VQA evaluation failed on rank 1: RuntimeError: rank 1 broke"
