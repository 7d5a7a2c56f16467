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
