"""LLaVA-Instruct conversations as VQA Samples (keeps the model's chat ability in training mixes).

Input: ``[{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}, ...]}]``. Each (human, gpt) turn pair is one Sample with id
``<id>_<turn>``; the ``<image>`` placeholder is removed from the question (the processor adds its
own image tokens). Entries without an image are skipped and counted in a log message.
"""
from __future__ import annotations

import logging
from pathlib import Path

from self1e.common.errors import DataError
from self1e.data.sample import Sample, read_json

log = logging.getLogger(__name__)


def _clean(question: str) -> str:
    return question.replace("<image>", "").strip()


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
        turns = entry["conversations"]
        for t in range(0, len(turns) - 1, 2):
            human, gpt = turns[t], turns[t + 1]
            if human.get("from") != "human" or gpt.get("from") != "gpt":
                raise DataError(f"{where}: turn {t}: expected a human turn followed by a gpt turn")
            q, a = _clean(str(human.get("value", ""))), str(gpt.get("value", "")).strip()
            if not q or not a:
                raise DataError(f"{where}: turn {t}: empty question or answer")
            samples.append(Sample(exif=False, id=f"{entry.get('id', n)}_{t // 2}", image=image_root / entry["image"],
                                  question=q, answer=a, kind="vqa", where=f"{where} turn {t}"))
    if no_image:
        log.info("%s: skipped %d text-only conversations (no image)", json_path, no_image)
    return samples
