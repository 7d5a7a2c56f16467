"""The InternVL VQA readers (fine-tuning conversations and evaluation questions) on tiny files in
InternVL's layouts: known names and paths, caps, the short-answer instruction, multi-turn lines, and
malformed lines named by file and line."""
from __future__ import annotations

import json
import logging
import re

import pytest

from data.fixture_vqa import EVAL_QUESTIONS, KNOWN_SETS, eval_lines, write_eval, write_internvl_vqa
from self1e.common.errors import DataError
from self1e.data import internvl_vqa
from self1e.data.datasets import load_dataset
from self1e.data.internvl_vqa import VqaEvalSample, prompt_question

SHORT = "Answer the question using a single word or phrase."
UNANS = "When the provided information is insufficient, respond with 'Unanswerable'."


def _lines(path, objs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(o if isinstance(o, str) else json.dumps(o) + "\n" for o in objs))


def _conv(i: int, q: str = "Q?", a: str = "A", image: str = "images/a.png") -> dict:
    return {"id": i, "image": image, "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                       {"from": "gpt", "value": a}]}


@pytest.mark.parametrize("name", ["vqav2", "okvqa", "textvqa", "gqa"])
def test_known_set_reads_its_file_under_root_one_sample_per_turn_pair(tmp_path, name):
    wrote = write_internvl_vqa(tmp_path)
    samples = load_dataset(f"internvl_vqa:{name}@{tmp_path}")
    path = wrote["train"][name]
    assert path == tmp_path / f"{name}_train.jsonl"
    assert [s.id for s in samples] == ["7_0", "7_1", "x9_0", "2_0"]  # line 4 has no id: index 2 (blank skipped)
    assert [s.question for s in samples] == [
        f"What colour is the bus?\n{SHORT}",
        f"How many wheels?\n{SHORT}",                                      # already there: not doubled
        "Is it raining?\nanswer the question using a single  word or phrase",  # other case and spacing
        f"What is written on the sign?\n{SHORT}",                          # <image> after the text removed
    ]
    assert [s.answer for s in samples] == ["Red", "4", "no", "stop"]
    assert [s.image for s in samples] == [tmp_path / "images/a.png"] * 2 + [tmp_path / "images/b.png",
                                                                            tmp_path / "images/a.png"]
    assert all(s.is_vqa and s.kind == "vqa" and not s.exif for s in samples)
    assert [s.where for s in samples] == [f"{path}:1 turn 0", f"{path}:1 turn 2", f"{path}:3 turn 0",
                                          f"{path}:4 turn 0"]
    assert samples[0].load_image().size == (12, 8)


def test_vizwiz_adds_the_unanswerable_instruction_before_the_short_answer_one(tmp_path):
    write_internvl_vqa(tmp_path)
    questions = [s.question for s in load_dataset(f"internvl_vqa:vizwiz@{tmp_path}")]
    assert questions == [
        f"What colour is the bus?\n{UNANS}\n{SHORT}",
        f"How many wheels?\n{UNANS}\n{SHORT}",  # inserted before the instruction the line had
        f"Is it raining?\n{UNANS}\nanswer the question using a single  word or phrase",
        f"What is written on the sign?\n{UNANS}\n{SHORT}",
    ]


@pytest.mark.parametrize(("question", "name", "expected"), [
    ("What is it?", "vqav2", f"What is it?\n{SHORT}"),
    ("What is it?", None, f"What is it?\n{SHORT}"),
    ("What is it?", "vizwiz", f"What is it?\n{UNANS}\n{SHORT}"),
    # InternVL's own VizWiz prompt (both on one line) is left as it is
    (f"What is it?\n{UNANS} {SHORT}", "vizwiz", f"What is it?\n{UNANS} {SHORT}"),
    (f"What is it? {SHORT.upper()}", "okvqa", f"What is it? {SHORT.upper()}"),
    (SHORT, "vizwiz", f"{UNANS}\n{SHORT}"),
    (f"What is it?\n{UNANS}", "vizwiz", f"What is it?\n{UNANS}\n{SHORT}"),
    (f"What is it?\n{UNANS}", "gqa", f"What is it?\n{UNANS}\n{SHORT}"),
])
def test_prompt_question(question, name, expected):
    assert prompt_question(question, name) == expected


def test_explicit_paths_named_and_unnamed(tmp_path):
    write_internvl_vqa(tmp_path)
    mine = tmp_path / "elsewhere" / "vizwiz_train.jsonl"
    _lines(mine, [_conv(0, "Is it a cat?", "yes")])
    named = load_dataset(f"internvl_vqa:vizwiz={mine}@{tmp_path}")
    assert [s.question for s in named] == [f"Is it a cat?\n{UNANS}\n{SHORT}"]
    assert named[0].image == tmp_path / "images/a.png"  # images relative to ROOT, not to the file
    unnamed = load_dataset(f"internvl_vqa:{mine}@{tmp_path}")  # no set: the short-answer instruction only
    assert [s.question for s in unnamed] == [f"Is it a cat?\n{SHORT}"] and unnamed[0].answer == "yes"


def test_caps_first_lines_default_for_known_sets_only(tmp_path, monkeypatch, caplog):
    write_internvl_vqa(tmp_path)
    path = tmp_path / "gqa_train.jsonl"
    # five conversations, a blank line (not counted) and, after them, a line that is not JSON
    _lines(path, [_conv(i, f"Q{i}?") for i in range(3)] + ["\n"] + [_conv(i, f"Q{i}?") for i in (3, 4)]
           + ["not json\n"])
    assert internvl_vqa.DEFAULT_MAX_LINES == 100_000
    monkeypatch.setattr(internvl_vqa, "DEFAULT_MAX_LINES", 4)

    def ids(spec):
        return [s.id for s in load_dataset(spec)]

    with caplog.at_level(logging.INFO, logger="self1e.data.internvl_vqa"):
        assert ids(f"internvl_vqa:gqa@{tmp_path}") == ["0_0", "1_0", "2_0", "3_0"]  # the default cap, in order
    assert re.search(r"first 4 lines .*2 lines after them not read", caplog.text)
    assert ids(f"internvl_vqa:gqa:2@{tmp_path}") == ["0_0", "1_0"]
    assert ids(f"internvl_vqa:gqa={path}:5@{tmp_path}") == ["0_0", "1_0", "2_0", "3_0", "4_0"]
    assert ids(f"internvl_vqa:gqa={path}@{tmp_path}") == ["0_0", "1_0", "2_0", "3_0"]  # a named path: capped too
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:7: invalid JSON"):
        load_dataset(f"internvl_vqa:gqa:all@{tmp_path}")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:7: invalid JSON"):
        load_dataset(f"internvl_vqa:{path}@{tmp_path}")  # an unnamed file: no cap
    with pytest.raises(DataError, match="MAX_LINES must be at least 1"):
        load_dataset(f"internvl_vqa:gqa:0@{tmp_path}")


GOOD = _conv(7, "Q?", "A")


@pytest.mark.parametrize(("line", "message"), [
    ("{not json\n", r":2: invalid JSON"),
    ([1, 2], r":2: expected a JSON object, got list"),
    ({"id": 1, "image": "images/a.png"}, r":2: field 'conversations': expected a list"),
    ({"id": 1, "image": "images/a.png", "conversations": [{"from": "human", "value": "Q"}]},
     r":2: field 'conversations': 1 turns; expected \(human, gpt\) pairs"),
    ({"id": 1, "image": "images/a.png", "conversations": [{"from": "gpt", "value": "A"},
                                                          {"from": "human", "value": "Q"}]},
     r":2: turn 0: field 'from': expected 'human'"),
    ({"id": 1, "image": "images/a.png", "conversations": [{"from": "human", "value": "Q"},
                                                          {"from": "gpt", "value": 3}]},
     r":2: turn 1: field 'value': expected a string"),
    ({"id": 1, "image": "images/a.png", "conversations": [{"from": "human", "value": "<image>"},
                                                          {"from": "gpt", "value": "A"}]},
     r":2: turn 0: empty question"),
    ({"id": 1, "image": "images/a.png", "conversations": [{"from": "human", "value": "Q"},
                                                          {"from": "gpt", "value": " "}]},
     r":2: turn 1: empty answer"),
    ({**_conv(1), "image": "images/missing.png"}, r":2: field 'image': file not found: .*missing.png"),
    ({**_conv(1), "image": ["images/a.png", "images/b.png"]}, r":2: field 'image': expected a file path string"),
    ({**_conv(1), "image": None}, r":2: field 'image': expected a file path string"),
    ({**_conv(1), "id": True}, r":2: field 'id': expected a non-empty string or an integer"),
    (_conv(7), r":2: field 'id': duplicate id '7' \(first used on line 1\)"),
])
def test_malformed_line_names_file_line_and_what_was_expected(tmp_path, line, message):
    write_internvl_vqa(tmp_path)
    path = tmp_path / "okvqa_train.jsonl"
    _lines(path, [GOOD, line])
    with pytest.raises(DataError, match=re.escape(str(path)) + message):
        load_dataset(f"internvl_vqa:okvqa@{tmp_path}")


def test_bad_specs_and_missing_files(tmp_path):
    write_internvl_vqa(tmp_path)
    with pytest.raises(DataError, match="'vqa3' is neither a known set nor a .jsonl file.*vqav2, okvqa"):
        load_dataset(f"internvl_vqa:vqa3@{tmp_path}")
    with pytest.raises(DataError, match="unknown set 'vqa3' before '='"):
        load_dataset(f"internvl_vqa:vqa3={tmp_path / 'vqav2_train.jsonl'}@{tmp_path}")
    with pytest.raises(DataError, match="a file needs its set"):
        load_dataset(f"internvl_vqa_eval:{tmp_path / 'data/vqav2/vqav2_val.jsonl'}@{tmp_path}")
    with pytest.raises(DataError, match="missing '@ROOT'"):
        load_dataset("internvl_vqa:vqav2")
    with pytest.raises(DataError, match="dataset root folder not found"):
        load_dataset(f"internvl_vqa:vqav2@{tmp_path / 'nope'}")
    (tmp_path / "textvqa_train.jsonl").unlink()
    with pytest.raises(DataError, match=f"not found: {re.escape(str(tmp_path / 'textvqa_train.jsonl'))}"):
        load_dataset(f"internvl_vqa:textvqa@{tmp_path}")
    (tmp_path / "okvqa_train.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no samples in"):
        load_dataset(f"internvl_vqa:okvqa@{tmp_path}")


# ---- evaluation files ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", KNOWN_SETS)
def test_eval_set_reads_internvl_place_with_ground_truth(tmp_path, name):
    wrote = write_internvl_vqa(tmp_path)
    samples = load_dataset(f"internvl_vqa_eval:{name}@{tmp_path}")
    assert all(isinstance(s, VqaEvalSample) and s.is_vqa and not s.exif for s in samples)
    assert [s.id for s in samples] == ["101", "102", "103"]
    assert [s.where for s in samples] == [f"{wrote['eval'][name]}:{i}" for i in (1, 2, 3)]
    assert samples[0].image == tmp_path / "images/a.png" and samples[2].image == tmp_path / "images/b.png"
    extra = f"\n{UNANS}" if name == "vizwiz" else ""
    assert samples[0].question == f"What colour is the bus?{extra}\n{SHORT}"
    if name == "gqa":
        assert {s.metric for s in samples} == {"exact_match"}
        assert [s.answers for s in samples] == [("red",), ("4",), ("no",)]
    else:
        assert {s.metric for s in samples} == {"vqa_accuracy"}
        assert [s.answers for s in samples] == [tuple(q[3]) for q in EVAL_QUESTIONS]
        assert [s.answer for s in samples] == ["red", "4", "no"]  # the most frequent answer


def test_eval_cap_and_explicit_path(tmp_path):
    write_internvl_vqa(tmp_path)
    assert len(load_dataset(f"internvl_vqa_eval:okvqa:2@{tmp_path}")) == 2
    other = write_eval(tmp_path, "okvqa", EVAL_QUESTIONS[2:], path=tmp_path / "mine.jsonl")
    samples = load_dataset(f"internvl_vqa_eval:okvqa={other}@{tmp_path}")
    assert [s.id for s in samples] == ["103"] and samples[0].metric == "vqa_accuracy"


def _annotations(path, answers_by_qid):
    path.write_text(json.dumps({"annotations": [
        {"question_id": qid, "multiple_choice_answer": answers[0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}
        for qid, answers in answers_by_qid.items()]}))


def test_eval_ten_answers_from_the_official_annotations_beside_internvl_files(tmp_path):
    write_internvl_vqa(tmp_path)
    path = tmp_path / "data/textvqa/textvqa_val.jsonl"  # InternVL's own: one answer string per line
    _lines(path, [{**line, "answer": line["answer"][0]} for line in eval_lines("textvqa")])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'answer': expected a list of the 10 human")
                       + ".*textvqa_val_annotations.json"):
        load_dataset(f"internvl_vqa_eval:textvqa@{tmp_path}")
    ten = {q[0]: [f"{q[3][0]}"] * 5 + ["other"] * 5 for q in EVAL_QUESTIONS}
    _annotations(path.parent / "textvqa_val_annotations.json", ten)
    samples = load_dataset(f"internvl_vqa_eval:textvqa@{tmp_path}")
    assert [s.answers for s in samples] == [tuple(ten[q[0]]) for q in EVAL_QUESTIONS]
    _annotations(path.parent / "textvqa_val_annotations.json", {101: ten[101]})
    with pytest.raises(DataError, match=re.escape(f"{path}:2: field 'question_id': 102 is not in")):
        load_dataset(f"internvl_vqa_eval:textvqa@{tmp_path}")


@pytest.mark.parametrize(("name", "change", "message"), [
    ("vqav2", {"answer": ["red"] * 9}, r":2: field 'answer': expected a list of the 10 human answers .*got 9"),
    ("vqav2", {"answer": ["red"] * 9 + [""]}, r":2: field 'answer': expected a list of the 10 human answers"),
    ("vizwiz", {"answer": None}, r":2: field 'answer': expected a list of the 10 human answers"),
    ("vqav2", {"question_id": None}, r":2: field 'question_id': expected a non-empty string or an integer"),
    ("vqav2", {"question_id": 101}, r":2: field 'question_id': duplicate question_id '101' \(first used on line 1"),
    ("okvqa", {"question": " <image> "}, r":2: field 'question': expected a non-empty string"),
    ("okvqa", {"image": "images/none.png"}, r":2: field 'image': file not found"),
    ("gqa", {"answer": ""}, r":2: field 'answer': expected the answer, a non-empty string"),
    ("gqa", {"answer": 3}, r":2: field 'answer': expected the answer, a non-empty string"),
])
def test_eval_malformed_lines(tmp_path, name, change, message):
    write_internvl_vqa(tmp_path)
    lines = eval_lines(name)
    lines[1] = {**lines[1], **change}
    path = tmp_path / "bad.jsonl"
    _lines(path, lines)
    with pytest.raises(DataError, match=re.escape(str(path)) + message):
        load_dataset(f"internvl_vqa_eval:{name}={path}@{tmp_path}")


def test_eval_missing_question_id_is_named(tmp_path):
    write_internvl_vqa(tmp_path)
    lines = eval_lines("gqa")
    del lines[0]["question_id"]
    path = tmp_path / "bad.jsonl"
    _lines(path, lines)
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'question_id': missing")):
        load_dataset(f"internvl_vqa_eval:gqa={path}@{tmp_path}")
