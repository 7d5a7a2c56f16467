"""LLaVA-Instruct conversations as VQA Samples (keeps the model's chat ability in training mixes).

Input: ``[{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}, ...]}]``. Each (human, gpt) turn pair is one Sample with id
``<id>_<turn>``; the ``<image>`` placeholder is removed from the question (the processor adds its
own image tokens). Entries without an image are skipped and counted in a log message; a malformed
turn (not an object, out of human/gpt order, a non-string or empty value, an unpaired last turn) is a
DataError naming the entry and the turn.
"""
from __future__ import annotations

import logging
from pathlib import Path

from self1e.common.errors import DataError
from self1e.data.sample import Sample, read_json

log = logging.getLogger(__name__)


def _clean(question: str) -> str:
    return question.replace("<image>", "").strip()


def _check_turns(turns: list, where: str) -> None:
    """A conversation is (human, gpt) pairs: each turn an object with 'from' and a string 'value'."""
    if not turns or len(turns) % 2:
        raise DataError(f"{where}: field 'conversations': {len(turns)} turns; expected (human, gpt) pairs "
                        "(a non-zero, even number of turns)")
    for t, turn in enumerate(turns):
        speaker = "human" if t % 2 == 0 else "gpt"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: turn {t}: expected an object with 'from' and 'value', got {turn!r:.80}")
        if turn.get("from") != speaker:
            raise DataError(f"{where}: turn {t}: field 'from': expected {speaker!r} (turns alternate human, gpt), "
                            f"got {turn.get('from')!r:.80}")
        if not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: turn {t}: field 'value': expected a string, got {turn.get('value')!r:.80}")


def turn_pairs(turns: list, where: str) -> list[tuple[int, str, str]]:
    """The (human, gpt) pairs of a conversation as ``(t, question, answer)``, ``t`` the index of the
    human turn: the turns checked (:func:`_check_turns`), ``<image>`` removed from the question,
    both stripped; an empty question or answer is a DataError naming ``where`` and the turn. The one
    turn check of the LLaVA and InternVL readers."""
    pairs = []
    _check_turns(turns, where)
    for t in range(0, len(turns), 2):
        q, a = _clean(turns[t]["value"]), turns[t + 1]["value"].strip()
        if not q or not a:
            raise DataError(f"{where}: turn {t if not q else t + 1}: empty {'question' if not q else 'answer'}")
        pairs.append((t, q, a))
    return pairs


def load_llava(json_path: str | Path, image_root: str | Path) -> list[Sample]:
    """VQA Samples from a LLaVA-Instruct JSON; images are ``image_root / entry["image"]``."""
    json_path, image_root = Path(json_path), Path(image_root)
    entries = read_json(json_path, "LLaVA JSON")
    if not isinstance(entries, list):
        raise DataError(f"{json_path}: expected a list of conversations")
    samples: list[Sample] = []
    no_image = 0
    for n, entry in enumerate(entries):
        where = f"{json_path}: entry {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
            raise DataError(f"{where}: field 'conversations': expected a list")
        if not entry.get("image"):
            no_image += 1
            continue
        if not isinstance(entry["image"], str):
            raise DataError(f"{where}: field 'image': expected a file path string, got {entry['image']!r}")
        for t, q, a in turn_pairs(entry["conversations"], where):
            samples.append(Sample(exif=False, id=f"{entry.get('id', n)}_{t // 2}", image=image_root / entry["image"],
                                  question=q, answer=a, kind="vqa", where=f"{where} turn {t}"))
    if no_image:
        log.info("%s: skipped %d text-only conversations (no image)", json_path, no_image)
    return samples
