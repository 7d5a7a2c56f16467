"""Does the model talk as well as segment? Chat-level measures on samples with known answers.

- VQA: exact-match accuracy of the free answer (lower-cased, punctuation and articles dropped), also
  per kind of question (its first two words), and the share answered without ``[SEG]`` (a question
  is not a segmentation request);
- segmentation requests: the share answered with ``[SEG]``, and the cIoU of the masks ``chat``
  gives (the first ``[SEG]``; none counts as an empty mask) next to ``predict()``'s on the same samples;
- multi-object requests: the share answered with exactly one ``[SEG]`` per object, and per-object
  cIoU of the teacher-forced multi-object answer next to the same objects requested one at a time;
  and of the free answer itself: the share of answers that name the requested phrases, in order
  (normalised as VQA answers are), and the per-object cIoU of its masks (the k-th ``[SEG]`` against
  the k-th object; a missing ``[SEG]`` counts as an empty mask).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from self1e.data.sample import Sample
from self1e.eval.metrics import IoUAccumulator

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalise_answer(text: str) -> str:
    """"The answer is: Red." -> "the answer is red"; articles and punctuation dropped."""
    text = re.sub(r"[^\w\s]", " ", text.replace("[SEG]", " ").lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def question_type(question: str) -> str:
    """A question's first two words, lower-cased ("How many stars are there?" -> "how many"; "colour"
    spelt "color"): the breakdown of VQA accuracy by kind of question."""
    words = normalise_answer(question.replace("colour", "color")).split()
    return " ".join(words[:2]) or "(empty)"


def evaluate_chat(predictor: Any, *, segmentation: Sequence[Sample] = (), vqa: Sequence[Sample] = (),
                  multi: Sequence[Sample] = (), max_new_tokens: int = 24, progress: bool = True) -> dict[str, Any]:
    """The measures above, as fractions in [0, 1] with their counts; a group with no sample is left out."""
    seg_token = predictor.processor.seg_token
    out: dict[str, Any] = {}
    bar = tqdm(total=len(segmentation) + len(vqa) + len(multi), desc="chat", unit="sample", disable=not progress)
    if vqa:
        correct = no_seg = 0
        by_type: dict[str, list[int]] = {}
        for s in vqa:
            predictor.set_image(s.load_image())
            answer = predictor.chat(s.question, max_new_tokens=max_new_tokens).text
            right = normalise_answer(answer) == normalise_answer(s.answer)
            correct += right
            no_seg += seg_token not in answer
            counts = by_type.setdefault(question_type(s.question), [0, 0])
            counts[0] += right
            counts[1] += 1
            bar.update(1)
        out["vqa"] = {"n": len(vqa), "exact_match": correct / len(vqa), "answered_without_seg": no_seg / len(vqa),
                      "by_question": {t: {"n": n, "exact_match": c / n} for t, (c, n) in sorted(by_type.items())}}
    if segmentation:
        chat_acc, predict_acc, with_seg = IoUAccumulator(), IoUAccumulator(), 0
        for s in segmentation:
            image = s.load_image()
            gt, ignore = s.load_mask(image.size), s.load_ignore(image.size)
            predictor.set_image(image)
            response = predictor.chat(predictor.processor.seg_question(s.text), max_new_tokens=max_new_tokens)
            with_seg += bool(response.segments)
            chat_mask = response.segments[0].mask if response.segments else np.zeros_like(gt)
            chat_acc.update(chat_mask, gt, ignore, s.kind)
            predict_acc.update(predictor.predict(s.text).mask, gt, ignore, s.kind)
            bar.update(1)
        out["segmentation"] = {"n": len(segmentation), "answered_with_seg": with_seg / len(segmentation),
                               "chat_cIoU": chat_acc.ciou, "predict_cIoU": predict_acc.ciou,
                               "chat_N_acc": chat_acc.result().get("N_acc"),
                               "predict_N_acc": predict_acc.result().get("N_acc")}
    if multi:
        together, alone, free, right, named = IoUAccumulator(), IoUAccumulator(), IoUAccumulator(), 0, 0
        for s in multi:
            image = s.load_image()
            predictor.set_image(image)
            answer = predictor.chat(predictor.processor.seg_question(s.text), max_new_tokens=16 * len(s.phrases))
            right += answer.text.count(seg_token) == len(s.phrases)
            named += [normalise_answer(g.text) for g in answer.segments] == [normalise_answer(t) for t in s.phrases]
            objects = predictor.predict_objects(s.text, s.phrases)
            singles = predictor.predict_batch(list(s.phrases))
            for k in range(len(s.phrases)):
                gt = s.load_instance(k, image.size)
                together.update(objects[k].mask, gt)
                alone.update(singles[k].mask, gt)
                free.update(answer.segments[k].mask if k < len(answer.segments) else np.zeros_like(gt), gt)
            bar.update(1)
        out["multi_object"] = {"n": len(multi), "objects": together.n, "right_seg_count": right / len(multi),
                               "per_object_cIoU": together.ciou, "one_at_a_time_cIoU": alone.ciou,
                               "phrases_named": named / len(multi), "free_answer_cIoU": free.ciou}
    bar.close()
    return out
