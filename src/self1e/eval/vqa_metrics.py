"""VQA scores of free answers: VQA accuracy (VQAv2, OK-VQA, TextVQA, VizWiz) and GQA exact match, and
the loop that asks the model (``self1e eval`` on ``internvl_vqa_eval:...`` datasets).

**VQA accuracy**, as the official VQA evaluation defines it: an answer given by ``m`` of the humans
is worth ``min(m / 3, 1)``; with the ten human answers this is averaged over the ten sets of nine
that leave one human out (so 0, 1, 2, 3, 4 matching humans give 0, 0.3, 0.6, 0.9, 1.0). Before
comparing, the prediction and every human answer are normalised as the official evaluation does
(:func:`normalize_vqa_answer`): newlines and tabs become spaces; a punctuation mark from its list is
deleted when it touches a space or when the text holds a comma between digits ("1,000" -> "1000"),
and otherwise becomes a space; a period is deleted unless a digit follows it ("3.5" stays); the text
is lower-cased and split into words, number words up to ten become digits ("two" -> "2", and "none"
-> "0"), the articles a / an / the are dropped, and a word written without its apostrophe gets it
back from the contractions table ("dont" -> "don't"). One difference, on purpose: the official
script skips this normalisation when all human answers are the same string; here it always applies
(as the evaluation server's answer processor does to every submitted answer), so "Yes." scores
against ten "yes". The official period rule is applied as it behaves (its look-behind is written
so that it never holds), without its limit of 32 deletions per answer.

**GQA exact match**: the prediction, stripped, without trailing periods and lower-cased, equals the
answer stripped and lower-cased (any of them, for a list of accepted answers).

Scores are summed as exact fractions, so sharded runs give exactly the one-process numbers.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from tqdm import tqdm

from self1e.common.distributed import gather_checked, rank_world
from self1e.data.internvl_vqa import VqaEvalSample
from self1e.data.sample import Sample

logger = logging.getLogger(__name__)

VQA_MAX_NEW_TOKENS = 10
"""Tokens a short answer may take (InternVL's evaluation of these sets uses 10)."""
METRIC_NAMES = {"vqa_accuracy": "VQA accuracy", "exact_match": "exact match"}

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
"""The marks the official normalisation removes or turns into spaces (periods have a rule of their own;
apostrophes, colons and the others are kept)."""
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# The contractions table: each line is the written-out contraction, then the spellings (lower case,
# apostrophes missing or misplaced) that are turned into it.
_CONTRACTION_LINES = """
ain't: aint
aren't: arent
can't: cant
could've: couldve
couldn't: couldnt
couldn't've: couldnt've couldn'tve
didn't: didnt
doesn't: doesnt
don't: dont
hadn't: hadnt
hadn't've: hadnt've hadn'tve
hasn't: hasnt
haven't: havent
he'd: hed
he'd've: hed've he'dve
he's: hes
how'd: howd
how'll: howll
how's: hows
isn't: isnt
it'd: itd
it'd've: itd've it'dve
it'll: itll
ma'am: maam
mightn't: mightnt
mightn't've: mightnt've mightn'tve
might've: mightve
mustn't: mustnt
must've: mustve
needn't: neednt
not've: notve
o'clock: oclock
oughtn't: oughtnt
'ow's'at: ow's'at 'ows'at 'ow'sat
shan't: shant
she'd've: shed've she'dve
should've: shouldve
shouldn't: shouldnt
shouldn't've: shouldnt've shouldn'tve
somebody'd: somebodyd
somebody'd've: somebodyd've somebody'dve
somebody'll: somebodyll
somebody's: somebodys
someone'd: someoned
someone'd've: someoned've someone'dve
someone'll: someonell
someone's: someones
something'd: somethingd
something'd've: somethingd've something'dve
something'll: somethingll
that's: thats
there'd: thered
there'd've: thered've there'dve
there're: therere
there's: theres
they'd: theyd
they'd've: theyd've they'dve
they'll: theyll
they're: theyre
they've: theyve
'twas: twas
wasn't: wasnt
we'd've: wed've we'dve
we've: weve
weren't: werent
what'll: whatll
what're: whatre
what's: whats
what've: whatve
when's: whens
where'd: whered
where's: wheres
where've: whereve
who'd: whod
who'd've: whod've who'dve
who'll: wholl
who's: whos
who've: whove
why'll: whyll
why're: whyre
why's: whys
won't: wont
would've: wouldve
wouldn't: wouldnt
wouldn't've: wouldnt've wouldn'tve
y'all: yall
y'all'll: yall'll y'allll
y'all'd've: yall'd've y'alld've y'all'dve
you'd: youd
you'd've: youd've you'dve
you'll: youll
you're: youre
you've: youve
"""
CONTRACTIONS = {spelling: written for line in _CONTRACTION_LINES.strip().splitlines()
                for written, spellings in [line.split(": ")] for spelling in spellings.split()}

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")


def _punctuation(text: str) -> str:
    glued = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:  # each rule looks at the text as given, not as changed by the marks before
        out = out.replace(mark, "" if glued or f"{mark} " in text or f" {mark}" in text else " ")
    return _PERIOD.sub("", out)


def normalize_vqa_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it (see the module docstring):
    "Two dogs." -> "2 dogs", "dont" -> "don't", "the 1,000 cats!" -> "1000 cats"."""
    text = _punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = (NUMBER_WORDS.get(w, w) for w in text.lower().split())
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_score(prediction: str, answers: Sequence[str]) -> Fraction:
    """VQA accuracy of ``prediction`` against the human ``answers``, exactly: the mean, over each
    answer left out in turn, of min(#other answers equal to the prediction / 3, 1), after
    :func:`normalize_vqa_answer`."""
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    pred = normalize_vqa_answer(prediction)
    same = [normalize_vqa_answer(a) == pred for a in answers]
    total = sum(same)
    return Fraction(sum(min(3, total - s) for s in same), 3 * len(answers))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """:func:`vqa_score` as a float: 0, 0.3, 0.6, 0.9, 1.0 for 0 to 4 of ten humans agreeing."""
    return float(vqa_score(prediction, answers))


def gqa_exact_match(prediction: str, answers: str | Sequence[str]) -> bool:
    """GQA's exact match: ``prediction`` stripped, trailing periods dropped, lower-cased, equals an
    answer stripped and lower-cased."""
    pred = prediction.strip().rstrip(".").strip().lower()
    return any(pred == a.strip().lower() for a in ([answers] if isinstance(answers, str) else answers))


def score_answer(prediction: str, sample: VqaEvalSample) -> Fraction:
    """The score of one answer by the sample's metric, as an exact fraction in [0, 1]."""
    if sample.metric == "vqa_accuracy":
        return vqa_score(prediction, sample.answers)
    if sample.metric == "exact_match":
        return Fraction(int(gqa_exact_match(prediction, sample.answers)))
    raise ValueError(f"{sample.where or sample.id}: unknown VQA metric {sample.metric!r}")


def is_vqa_eval(samples: Sequence[Sample]) -> bool:
    """Whether a dataset is a VQA evaluation set (scored by its answers, not masks)."""
    return bool(samples) and all(isinstance(s, VqaEvalSample) for s in samples)


@dataclass
class VqaAccumulator:
    """Exact running sums of one metric: ``score`` (a fraction), ``n`` questions, and how many answers
    held the ``[SEG]`` token (a question is not a segmentation request)."""

    metric: str
    n: int = 0
    score: Fraction = field(default_factory=Fraction)
    answered_with_seg: int = 0

    def update(self, prediction: str, sample: VqaEvalSample, seg_token: str = "[SEG]") -> Fraction:
        if sample.metric != self.metric:
            raise ValueError(f"{sample.where or sample.id}: metric {sample.metric!r} in a {self.metric!r} dataset")
        s = score_answer(prediction, sample)
        self.n += 1
        self.score += s
        self.answered_with_seg += seg_token in prediction
        return s

    @property
    def accuracy(self) -> float | None:
        return float(self.score / self.n) if self.n else None

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "n": self.n, "score": [self.score.numerator, self.score.denominator],
                "answered_with_seg": self.answered_with_seg}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> VqaAccumulator:
        return cls(state["metric"], state["n"], Fraction(*state["score"]), state["answered_with_seg"])

    def merge(self, other: VqaAccumulator) -> None:
        if other.metric != self.metric:
            raise ValueError(f"cannot merge {other.metric!r} scores into {self.metric!r} scores")
        self.n += other.n
        self.score += other.score
        self.answered_with_seg += other.answered_with_seg

    def counts(self) -> dict[str, int]:
        return {"n": self.n, "score_numerator": self.score.numerator, "score_denominator": self.score.denominator,
                "answered_with_seg": self.answered_with_seg}


@dataclass
class VqaResult:
    """The merged accumulator over all ranks; ``seconds`` is the slowest rank's loop time."""

    accumulator: VqaAccumulator
    seconds: float
    world_size: int = 1

    @property
    def n(self) -> int:
        return self.accumulator.n

    @property
    def samples_per_s(self) -> float | None:
        return self.n / self.seconds if self.n and self.seconds > 0 else None


def evaluate_vqa(predictor: Any, samples: Sequence[VqaEvalSample], *, limit: int | None = None,
                 max_new_tokens: int = VQA_MAX_NEW_TOKENS, progress: bool = True, desc: str = "vqa") -> VqaResult:
    """Ask ``predictor`` (a ``Self1ePredictor``: ``set_image``, ``chat``) every question greedily with
    at most ``max_new_tokens`` new tokens and score its answers (``limit``: the first N questions).
    The image's features are computed once for consecutive questions on the same image. Under
    ``torch.distributed`` each rank asks ``rank::world_size`` and the exact sums are merged."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    samples = list(samples)[:limit] if limit is not None else list(samples)
    metrics = {s.metric for s in samples}
    if len(metrics) > 1:
        raise ValueError(f"{desc}: one dataset, one metric; got {sorted(metrics)}")
    acc = VqaAccumulator(metrics.pop() if metrics else "vqa_accuracy")
    rank, world = rank_world()
    seg_token = predictor.processor.seg_token
    mine = range(rank, len(samples), world)
    bar = tqdm(total=len(mine), desc=desc, unit="question", disable=not (progress and rank == 0))
    start, error, current = time.perf_counter(), None, None
    try:
        for i in mine:
            s = samples[i]
            if current is None or s.image != current:
                predictor.set_image(s.load_image())
                current = s.image
            answer = predictor.chat(s.question, max_new_tokens=max_new_tokens).text
            acc.update(answer, s, seg_token)
            bar.update(1)
            bar.set_postfix(acc=f"{100 * acc.accuracy:.2f}")
    except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks have been told
        if world == 1:
            raise
        error = e
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    if world > 1:
        acc, seconds = _reduce_across_ranks(acc, seconds, error)
    return VqaResult(acc, seconds, world)


def _reduce_across_ranks(acc: VqaAccumulator, seconds: float,
                         error: Exception | None) -> tuple[VqaAccumulator, float]:
    """Every rank's exact sums, merged on every rank; a failed rank re-raises its error, the others
    raise a ValueError naming it (as ``self1e.eval.evaluate`` does for masks)."""
    gathered = gather_checked({"state": acc.state_dict(), "seconds": seconds}, error, "VQA evaluation")
    total = VqaAccumulator(acc.metric)
    for part in gathered:
        total.merge(VqaAccumulator.from_state_dict(part["state"]))
    return total, max(p["seconds"] for p in gathered)
