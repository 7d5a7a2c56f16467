"""Tiny InternVL VQA sets written in InternVL's layouts (fine-tuning conversations, evaluation
questions), for the reader tests and for any test that needs a VQA evaluation set.

Import it as ``from data.fixture_vqa import write_internvl_vqa`` (``tests`` is on the path).
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

KNOWN_SETS = ("vqav2", "okvqa", "textvqa", "vizwiz", "gqa")
EVAL_FILES = {"vqav2": "data/vqav2/vqav2_val.jsonl", "okvqa": "data/okvqa/okvqa_val.jsonl",
              "textvqa": "data/textvqa/textvqa_val.jsonl", "vizwiz": "data/vizwiz/vizwiz_val.jsonl",
              "gqa": "data/gqa/testdev_balanced.jsonl"}  # written out by hand: the reader's table is under test
IMAGES = {"images/a.png": (12, 8), "images/b.png": (10, 10)}

# One fine-tuning file's lines (None: a blank line), the same for every set. Line 1 is multi-turn, its
# second question already carries the instruction; line 3 carries it in another case and spacing;
# line 4 has no id (its id is its index among non-blank lines, 2).
TRAIN_LINES: list[dict | None] = [
    {"id": 7, "image": "images/a.png", "width": 12, "height": 8, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the bus?"}, {"from": "gpt", "value": "Red"},
        {"from": "human", "value": "How many wheels?\nAnswer the question using a single word or phrase."},
        {"from": "gpt", "value": "4"}]},
    None,
    {"id": "x9", "image": "images/b.png", "conversations": [
        {"from": "human", "value": "<image>\nIs it raining?\nanswer the question using a single  word or phrase"},
        {"from": "gpt", "value": "no"}]},
    {"image": "images/a.png", "conversations": [
        {"from": "human", "value": "What is written on the sign?\n<image>"}, {"from": "gpt", "value": " stop "}]},
]

# Evaluation questions: (question_id, image, question, answers). The VQA-style sets get the ten
# answers, GQA the first one.
EVAL_QUESTIONS = [
    (101, "images/a.png", "What colour is the bus?", ["red"] * 4 + ["dark red"] * 3 + ["maroon"] * 3),
    (102, "images/a.png", "How many wheels?", ["4", "four", "4", "4", "six", "4", "4", "4", "4", "4"]),
    (103, "images/b.png", "Is it raining?", ["no"] * 10),
]


def _write_jsonl(path: Path, lines: list[dict | None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\n" if obj is None else json.dumps(obj) + "\n" for obj in lines), encoding="utf-8")
    return path


def eval_lines(name: str, questions=EVAL_QUESTIONS) -> list[dict]:
    """The evaluation lines of set ``name`` for ``questions``: 10 answers (VQA-style), or GQA's one."""
    return [{"question_id": str(qid) if name == "gqa" else qid, "image": image, "question": question,
             "answer": answers[0] if name == "gqa" else list(answers)}
            for qid, image, question, answers in questions]


def write_eval(root: Path, name: str, questions=EVAL_QUESTIONS, path: Path | None = None) -> Path:
    """Write one evaluation file of set ``name`` (default: at its InternVL place under ``root``)."""
    return _write_jsonl(path or root / EVAL_FILES[name], eval_lines(name, questions))


def write_internvl_vqa(root: Path) -> dict:
    """Under ``root``: the images, ``<set>_train.jsonl`` for every known set (:data:`TRAIN_LINES`)
    and every set's evaluation file at InternVL's place (``data/vqav2/vqav2_val.jsonl``, ...).
    Returns what it wrote: ``{"images": {rel: (w, h)}, "train": {set: path}, "eval": {set: path},
    "train_lines": TRAIN_LINES, "eval_lines": {set: [line objects]}}``."""
    root = Path(root)
    for i, (rel, size) in enumerate(IMAGES.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (40 + 150 * i, 120, 200 - 90 * i)).save(root / rel)
    train = {name: _write_jsonl(root / f"{name}_train.jsonl", TRAIN_LINES) for name in KNOWN_SETS}
    evals = {name: write_eval(root, name) for name in KNOWN_SETS}
    return {"images": dict(IMAGES), "train": train, "eval": evals, "train_lines": TRAIN_LINES,
            "eval_lines": {name: eval_lines(name) for name in KNOWN_SETS}}
