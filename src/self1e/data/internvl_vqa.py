"""InternVL's short-answer VQA sets (VQAv2, OK-VQA, TextVQA, VizWiz, GQA) as Samples, for training and for scoring.

Two readers, one file layout each (docs/data.md, "InternVL VQA sets"):

- fine-tuning JSONL (``internvl_vqa:...``): one conversation per line, ``{"id", "image", "conversations":
  [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``; each (human,
  gpt) pair is one Sample ``<id>_<k>``, the turns checked by the LLaVA reader's check
  (:func:`self1e.data.vqa.turn_pairs`);
- evaluation JSONL (``internvl_vqa_eval:...``): one question per line, ``{"question_id", "image",
  "question", "answer"}``; ``answer`` holds the 10 human answers (VQAv2, OK-VQA, TextVQA, VizWiz) or
  the one answer (GQA). InternVL's own ``*_val.jsonl`` files hold a single answer string per line and
  keep the ten in the official annotation JSON beside them: when a line's answer is not a list, the
  ten are read from that file (by ``question_id``). Each question is a :class:`VqaEvalSample`.

``image`` is relative to ``ROOT``. Every question gets the SELF1E recipe's short-answer instruction
on a new line (VizWiz also the "Unanswerable" one, before it), unless it already carries it.
Extra keys on a line (InternVL writes ``width``, ``height``) are ignored. Errors name the file, the
line (counted from 1) and the field; nothing is dropped silently (lines beyond a cap are counted in
a log message).
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from self1e.common.errors import DataError
from self1e.data.sample import Sample
from self1e.data.vqa import turn_pairs

log = logging.getLogger(__name__)

KNOWN_SETS = ("vqav2", "okvqa", "textvqa", "vizwiz", "gqa")
TRAIN_FILES = {name: f"{name}_train.jsonl" for name in KNOWN_SETS}
"""Fine-tuning file of each known set, under ROOT (``ROOT/vqav2_train.jsonl``, ...)."""
EVAL_FILES = {"vqav2": "data/vqav2/vqav2_val.jsonl", "okvqa": "data/okvqa/okvqa_val.jsonl",
              "textvqa": "data/textvqa/textvqa_val.jsonl", "vizwiz": "data/vizwiz/vizwiz_val.jsonl",
              "gqa": "data/gqa/testdev_balanced.jsonl"}
"""Evaluation file of each known set under ROOT, as InternVL's ``internvl_chat`` folder holds them."""
ANNOTATION_FILES = {"vqav2": "v2_mscoco_val2014_annotations.json", "okvqa": "mscoco_val2014_annotations.json",
                    "textvqa": "textvqa_val_annotations.json", "vizwiz": "vizwiz_val_annotations.json"}
"""The official annotations (10 answers per question) InternVL keeps beside each evaluation JSONL."""
METRICS = {"vqav2": "vqa_accuracy", "okvqa": "vqa_accuracy", "textvqa": "vqa_accuracy",
           "vizwiz": "vqa_accuracy", "gqa": "exact_match"}
N_HUMAN_ANSWERS = 10
DEFAULT_MAX_LINES = 100_000
"""The SELF1E recipe's cap on each known set's fine-tuning file: its first 100,000 lines."""

SHORT_ANSWER = "Answer the question using a single word or phrase."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."

GRAMMARS = {
    False: "internvl_vqa:NAME[=PATH][:MAX_LINES]@ROOT or internvl_vqa:PATH.jsonl[:MAX_LINES]@ROOT",
    True: "internvl_vqa_eval:NAME[=PATH][:MAX_LINES]@ROOT",
}


@dataclass(frozen=True)
class VqaEvalSample(Sample):
    """A VQA question with its ground truth for scoring: ``answers`` (the 10 human answers, or GQA's
    one) and the ``metric`` that scores it (``vqa_accuracy`` or ``exact_match``). ``answer`` is the
    most frequent of ``answers`` (the first of the tied ones), so it also trains as a VQA Sample."""

    answers: tuple[str, ...] = ()
    metric: str = "vqa_accuracy"


def _sentence(sentence: str) -> re.Pattern[str]:
    """``sentence`` anywhere in a text, whatever its case and spacing, with or without its full stop."""
    words = sentence.rstrip(".").split()
    return re.compile(r"\s+".join(map(re.escape, words)) + r"\.?", re.IGNORECASE)


_SHORT_RE, _UNANSWERABLE_RE = _sentence(SHORT_ANSWER), _sentence(UNANSWERABLE)


def prompt_question(question: str, name: str | None) -> str:
    """``question`` with the short-answer instruction appended on a new line, unless it already holds
    it (any case or spacing); for VizWiz also the "Unanswerable" instruction, placed before the
    short-answer one (before the one already there, if so), unless it is already in the question."""
    short = _SHORT_RE.search(question)
    if name == "vizwiz" and not _UNANSWERABLE_RE.search(question):
        if short:
            head = question[: short.start()].rstrip()
            question = (head + "\n" if head else "") + UNANSWERABLE + "\n" + question[short.start():]
        else:
            question = question + "\n" + UNANSWERABLE
    return question if short else question + "\n" + SHORT_ANSWER


def _bad_spec(spec: str, evaluation: bool, why: str) -> DataError:
    sets = ", ".join(KNOWN_SETS)
    return DataError(f"bad dataset spec {spec!r}: {why}; expected {GRAMMARS[evaluation]} (NAME one of {sets}; "
                     "MAX_LINES a positive integer or 'all')")


def parse_spec(spec: str, body: str, root: str | Path, evaluation: bool) -> tuple[str | None, Path, int | None]:
    """``(name, file, max_lines)`` of the part of ``spec`` between the first ``:`` and ``@`` (``body``).

    ``NAME`` reads the known set's file under ``root`` (:data:`TRAIN_FILES`, :data:`EVAL_FILES`),
    ``NAME=PATH`` the set from ``PATH`` (relative to the working directory, as any path), and for
    fine-tuning data a bare ``PATH.jsonl`` an unnamed set (short-answer instruction only). The cap
    defaults to :data:`DEFAULT_MAX_LINES` for a known set's fine-tuning file and to none otherwise."""
    head, colon, tail = body.rpartition(":")
    max_lines: int | None
    if colon and (tail.isdigit() or tail == "all"):
        max_lines = None if tail == "all" else int(tail)
        if max_lines is not None and max_lines < 1:
            raise _bad_spec(spec, evaluation, f"MAX_LINES must be at least 1, got {tail}")
        explicit_cap = True
    else:
        head, max_lines, explicit_cap = body, None, False
    if not head:
        raise _bad_spec(spec, evaluation, "missing the set NAME or PATH")
    name, eq, path = head.partition("=")
    files = EVAL_FILES if evaluation else TRAIN_FILES
    if eq and name not in KNOWN_SETS and re.fullmatch(r"[\w+-]+", name):  # a set name, misspelt
        raise _bad_spec(spec, evaluation, f"unknown set {name!r} before '='")
    if eq and name in KNOWN_SETS:
        if not path:
            raise _bad_spec(spec, evaluation, f"missing the PATH after '{name}='")
        file = Path(path)
    elif head in KNOWN_SETS:
        name, file = head, Path(root) / files[head]
    elif evaluation:
        raise _bad_spec(spec, evaluation, f"unknown set {head!r} (a file needs its set, which decides the "
                        "metric and the prompt: NAME=PATH)")
    elif head.endswith(".jsonl") or Path(head).is_file():
        name, file = None, Path(head)
    else:
        raise _bad_spec(spec, evaluation, f"{head!r} is neither a known set nor a .jsonl file")
    if not explicit_cap and name is not None and not evaluation:
        max_lines = DEFAULT_MAX_LINES
    return (name if name in KNOWN_SETS else None), file, max_lines


def load_spec(spec: str, body: str, root: str | Path, evaluation: bool = False) -> list[Sample]:
    """The Samples of an ``internvl_vqa`` (``evaluation=False``) or ``internvl_vqa_eval`` spec."""
    name, file, max_lines = parse_spec(spec, body, root, evaluation)
    if evaluation:
        assert name is not None
        return list(load_internvl_vqa_eval(file, root, name, max_lines))
    return load_internvl_vqa(file, root, name, max_lines)


def _read_lines(path: Path, max_lines: int | None, what: str) -> list[tuple[int, Any]]:
    """``(line number, decoded JSON)`` of the first ``max_lines`` non-blank lines (all with None); the
    lines beyond the cap are counted (not parsed) and the count logged."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    out: list[tuple[int, Any]] = []
    beyond = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if max_lines is not None and len(out) >= max_lines:
                beyond += 1
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            out.append((lineno, obj))
    if not out:
        raise DataError(f"no samples in {path}: the file is empty or holds only blank lines")
    if beyond:
        log.info("%s: read the first %d lines (cap MAX_LINES=%d); %d lines after them not read",
                 path, len(out), max_lines, beyond)
    return out


def _image(obj: dict, root: Path, where: str) -> Path:
    value = obj.get("image")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field 'image': expected a file path string relative to ROOT (one image), "
                        f"got {value!r:.80}")
    path = root / value
    if not path.is_file():
        raise DataError(f"{where}: field 'image': file not found: {path}")
    return path


def _id(obj: dict, field: str, default: Any, where: str) -> str:
    value = obj.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise DataError(f"{where}: field '{field}': expected a non-empty string or an integer, got {value!r:.80}")
    return str(value)


def _check_unique(seen: dict[str, int], sid: str, path: Path, lineno: int, field: str) -> None:
    if sid in seen:
        raise DataError(f"{path}:{lineno}: field '{field}': duplicate {field} {sid!r} (first used on line {seen[sid]})")
    seen[sid] = lineno


def load_internvl_vqa(path: str | Path, root: str | Path, name: str | None = None,
                      max_lines: int | None = None) -> list[Sample]:
    """VQA Samples of an InternVL fine-tuning JSONL: the first ``max_lines`` non-blank lines (all
    with None), one Sample ``<id>_<k>`` per (human, gpt) pair, the question prompted by
    :func:`prompt_question` for set ``name`` (None: an unnamed set, short-answer instruction only).
    ``id`` defaults to the line's 0-based index among non-blank lines; a repeated id is an error."""
    path, root = Path(path), Path(root)
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for index, (lineno, obj) in enumerate(_read_lines(path, max_lines, "InternVL fine-tuning JSONL")):
        where = f"{path}:{lineno}"
        if not isinstance(obj.get("conversations"), list):
            raise DataError(f"{where}: field 'conversations': expected a list of turns, got "
                            f"{obj.get('conversations')!r:.80}")
        image = _image(obj, root, where)
        sid = _id(obj, "id", index, where)
        _check_unique(seen, sid, path, lineno, "id")
        for t, question, answer in turn_pairs(obj["conversations"], where):
            samples.append(Sample(id=f"{sid}_{t // 2}", image=image, question=prompt_question(question, name),
                                  answer=answer, kind="vqa", where=f"{where} turn {t}", exif=False))
    return samples


def _answer_list(value: Any) -> list[str] | None:
    """``value`` as a list of answers when it is a list of non-empty strings, else None."""
    if isinstance(value, list) and value and all(isinstance(a, str) and a.strip() for a in value):
        return [a.strip() for a in value]
    return None


def _read_annotations(path: Path) -> dict[str, list[str]]:
    """``question_id`` -> the answers of an official VQA annotation JSON (``{"annotations": [{"question_id",
    "answers": [{"answer": ...}, ...]}, ...]}``)."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e}") from None
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"{path}: field 'annotations': expected a list (the official VQA annotation format)")
    out: dict[str, list[str]] = {}
    for i, ann in enumerate(anns):
        answers = ann.get("answers") if isinstance(ann, dict) else None
        texts = _answer_list([a.get("answer") if isinstance(a, dict) else None for a in answers]) \
            if isinstance(answers, list) else None
        if texts is None or isinstance(ann.get("question_id"), bool) or \
                not isinstance(ann.get("question_id"), (str, int)):
            raise DataError(f"{path}: annotation {i}: expected an object with 'question_id' and 'answers', a list "
                            "of objects with a non-empty 'answer' string")
        out[str(ann["question_id"])] = texts
    return out


def load_internvl_vqa_eval(path: str | Path, root: str | Path, name: str,
                           max_lines: int | None = None) -> list[VqaEvalSample]:
    """The questions of an InternVL evaluation JSONL of set ``name`` (first ``max_lines`` non-blank
    lines; all with None) with their ground truth; see the module docstring. ``question_id`` is the
    sample id (repeated: an error). VQA-accuracy sets need exactly :data:`N_HUMAN_ANSWERS` answers
    per question, from the line's ``answer`` list or, when it is not a list, from the set's official
    annotation file beside ``path`` (:data:`ANNOTATION_FILES`); GQA needs one answer (a string, or a
    list of accepted answers)."""
    if name not in KNOWN_SETS:
        raise DataError(f"unknown InternVL VQA set {name!r}; known: {', '.join(KNOWN_SETS)}")
    path, root = Path(path), Path(root)
    metric = METRICS[name]
    annotations: dict[str, list[str]] | None = None
    samples: list[VqaEvalSample] = []
    seen: dict[str, int] = {}
    for lineno, obj in _read_lines(path, max_lines, f"InternVL {name} evaluation JSONL"):
        where = f"{path}:{lineno}"
        if "question_id" not in obj:
            raise DataError(f"{where}: field 'question_id': missing (required)")
        qid = _id(obj, "question_id", None, where)
        _check_unique(seen, qid, path, lineno, "question_id")
        image = _image(obj, root, where)
        question = obj.get("question")
        if not isinstance(question, str) or not question.replace("<image>", "").strip():
            raise DataError(f"{where}: field 'question': expected a non-empty string, got {question!r:.80}")
        question = question.replace("<image>", "").strip()
        field = "answers" if "answers" in obj and "answer" not in obj else "answer"
        value = obj.get(field)
        answers = _answer_list(value)
        if metric == "exact_match":
            if isinstance(value, str) and value.strip():
                answers = [value.strip()]
            if answers is None:
                raise DataError(f"{where}: field '{field}': expected the answer, a non-empty string (or a list of "
                                f"accepted answers), got {value!r:.80}")
        else:
            if answers is None and not isinstance(value, list):
                ann_path = path.parent / ANNOTATION_FILES[name]
                if annotations is None and ann_path.is_file():
                    annotations = _read_annotations(ann_path)
                if annotations is None:
                    raise DataError(f"{where}: field '{field}': expected a list of the {N_HUMAN_ANSWERS} human "
                                    f"answers, got {value!r:.80}; (InternVL's files hold one answer per line and "
                                    f"the ten in {ANNOTATION_FILES[name]} beside them: not found: {ann_path})")
                if qid not in annotations:
                    raise DataError(f"{where}: field 'question_id': {qid} is not in {ann_path}, which holds the "
                                    "human answers of this file's lines")
                answers = annotations[qid]
                if len(answers) != N_HUMAN_ANSWERS:
                    raise DataError(f"{ann_path}: question {qid} (asked on {where}): expected the "
                                    f"{N_HUMAN_ANSWERS} human answers, got {len(answers)}")
            if answers is None or len(answers) != N_HUMAN_ANSWERS:
                got = f"{len(answers)} answers" if answers is not None else f"{value!r:.80}"
                raise DataError(f"{where}: field '{field}': expected a list of the {N_HUMAN_ANSWERS} human answers "
                                f"(non-empty strings) that VQA accuracy averages over, got {got}")
        samples.append(VqaEvalSample(id=qid, image=image, question=prompt_question(question, name),
                                     answer=Counter(answers).most_common(1)[0][0], kind="vqa", where=where,
                                     exif=False, answers=tuple(answers), metric=metric))
    return samples
