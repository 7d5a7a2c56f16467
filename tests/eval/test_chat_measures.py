"""evaluate_chat's VQA measures on a scripted predictor: exact match overall and per kind of
question, and the chat table's rows for them."""
from types import SimpleNamespace

import pytest

from self1e.data.sample import Sample
from self1e.eval.chat import evaluate_chat, question_type
from self1e.eval.report import chat_table


class Scripted:
    """Answers each question with the answer it was given for it."""

    processor = SimpleNamespace(seg_token="[SEG]")

    def __init__(self, answers):
        self.answers = answers

    def set_image(self, image):
        pass

    def chat(self, question, max_new_tokens=24):
        return SimpleNamespace(text=self.answers[question], segments=[])


def vqa(question, answer, image):
    return Sample(id=question, image=image, question=question, answer=answer, kind="vqa")


@pytest.mark.parametrize("question, kind", [("How many stars are there?", "how many"),
                                            ("What colour is the box?", "what color"),
                                            ("What color is the box?", "what color"),
                                            ("Is there a red cross?", "is there"), ("", "(empty)")])
def test_question_type(question, kind):
    assert question_type(question) == kind


def test_vqa_exact_match_per_kind_of_question(tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    samples = [vqa("How many stars are there?", "Two.", image), vqa("How many boxes are there?", "One.", image),
               vqa("How many crosses are there?", "Zero.", image), vqa("Is there a red cross?", "Yes.", image),
               vqa("What colour is the star?", "Red.", image)]
    answers = {"How many stars are there?": "two.", "How many boxes are there?": "two.",
               "How many crosses are there?": "it is [SEG].", "Is there a red cross?": "Yes",
               "What colour is the star?": "the red"}
    out = evaluate_chat(Scripted(answers), vqa=samples, progress=False)["vqa"]
    assert out["n"] == 5 and out["exact_match"] == pytest.approx(3 / 5) and out["answered_without_seg"] == 0.8
    assert out["by_question"] == {"how many": {"n": 3, "exact_match": pytest.approx(1 / 3)},
                                  "is there": {"n": 1, "exact_match": 1.0},
                                  "what color": {"n": 1, "exact_match": 1.0}}
    table = chat_table({"vqa": out})
    assert '| VQA exact match, "how many" questions | 3 | 33.33 |' in table


class ScriptedMulti:
    """Multi-object requests: the free answer of request i is ``answers[i]`` (its text and the
    (phrase, mask) of each [SEG]); teacher-forced and one-at-a-time masks are the truth."""

    processor = SimpleNamespace(seg_token="[SEG]", seg_question=lambda text: text)

    def __init__(self, samples, answers):
        self.samples, self.answers, self.i = samples, answers, -1

    def set_image(self, image):
        self.i += 1
        self.size = image.size

    def chat(self, message, max_new_tokens=24):
        text, segments = self.answers[self.i]
        return SimpleNamespace(text=text, segments=[SimpleNamespace(text=t, mask=m) for t, m in segments])

    def _truth(self):
        s = self.samples[self.i]
        return [SimpleNamespace(mask=s.load_instance(k, self.size)) for k in range(len(s.phrases))]

    def predict_objects(self, text, phrases):
        return self._truth()

    def predict_batch(self, phrases):
        return self._truth()


def test_multi_object_free_answers_are_scored_by_their_phrases_and_masks():
    import itertools

    import numpy as np

    from self1e.data.refshapes import iter_multi_samples

    a, b = itertools.islice((s for s in iter_multi_samples("test", 5, 40) if all(s.instances)), 2)
    size = a.load_image().size
    truth_a = [a.load_instance(k, size) for k in range(len(a.phrases))]
    truth_b = [b.load_instance(k, size) for k in range(len(b.phrases))]
    answers = [  # a: every phrase as asked (capitals and "the" aside), true masks; b: the first object
        # right, then a paraphrase and no second [SEG]
        (" and ".join(f"{p} is [SEG]" for p in a.phrases),
         [(p.upper().replace("THE ", ""), m) for p, m in zip(a.phrases, truth_a)]),
        (f"{b.phrases[0]} is [SEG] and something else.", [(b.phrases[0], truth_b[0])]),
    ]
    out = evaluate_chat(ScriptedMulti([a, b], answers), multi=[a, b], progress=False)["multi_object"]
    assert out["right_seg_count"] == 0.5 and out["phrases_named"] == 0.5
    missing = truth_b[1:]  # scored as empty masks: no intersection, their pixels in the union
    inter = sum(int(m.sum()) for m in truth_a + truth_b[:1])
    assert out["free_answer_cIoU"] == pytest.approx(inter / (inter + sum(int(m.sum()) for m in missing)))
    assert out["per_object_cIoU"] == out["one_at_a_time_cIoU"] == 1.0
    table = chat_table({"multi_object": out})
    assert "| free multi-object answers naming the requested phrases, in order | 2 | 50.00 |" in table
    assert np.isclose(out["objects"], len(truth_a) + len(truth_b))
