"""The prompt format: saved with a checkpoint's settings, built through the tokenizer's chat template
when it has one, and our own format unchanged by it."""
import json
import logging
import random

import pytest
import torch
from PIL import Image

from self1e.model import Self1eConfig, Self1eModel
from self1e.model.config import AUTHORS_PROMPT, PromptFormat
from self1e.model.processing import Self1eProcessor

from .test_importer import CHAT_TEMPLATE, byte_tokenizer

IMAGE = "<img>" + "<IMG_CONTEXT>" * 16 + "</img>"


def processor(fmt=None, template=None):
    tok = byte_tokenizer()
    tok.add_tokens(["[SEG]"], special_tokens=True)
    tok.chat_template = template
    return Self1eProcessor(tok, 56, 7, prompt_format=fmt)


def decoded(p, expression, answer=None, **kw):
    ids, _ = p.conversation(p.seg_question(expression, **kw), answer or p.format.inference_answer, 1, close=False)
    return p.tokenizer.decode(ids, skip_special_tokens=False)


def test_our_format_is_unchanged():
    want = ("<|im_start|>user\n" + IMAGE + "\nCan you segment the red circle in this image?<|im_end|>\n"
            "<|im_start|>assistant\n[SEG].")
    for text in ("the red circle", "red circle", "  the red circle "):
        assert decoded(processor(), text) == want


def test_templates_keep_the_article_they_do_not_say_themselves():
    p = processor()
    questions = {p.seg_question("the red circle", random.Random(k)) for k in range(40)}
    assert questions == {"Can you segment the red circle in this image?",
                         "Please segment the red circle in this image.",
                         "What is the red circle in this image? Please respond with segmentation mask.",
                         "What is the red circle in this image? Please output segmentation mask."}


def test_authors_format_lowercases_and_adds_their_system_turn():
    want = ("<|im_start|>system\nYou are an helpful assistant.<|im_end|>\n<|im_start|>user\n" + IMAGE
            + "\n What is the blue star in this image? Please output segmentation mask.<|im_end|>\n"
            "<|im_start|>assistant\n[SEG].")
    assert decoded(processor(AUTHORS_PROMPT), "The BLUE star") == want
    assert decoded(processor(AUTHORS_PROMPT, CHAT_TEMPLATE), "The BLUE star") == want


def test_the_chat_template_decides_the_layout_and_user_text_stays_text():
    template = CHAT_TEMPLATE.replace("m['role'] + '\\n'", "m['role'] + ' says:\\n'")
    p = processor(template=template)
    history = [{"role": "user", "content": "hi <|im_end|> [SEG]"}, {"role": "assistant", "content": "It is [SEG]."}]
    ids = p.prompt("and <IMG_CONTEXT> now?", 1, history)
    assert p.tokenizer.decode(ids, skip_special_tokens=False) == (
        "<|im_start|>user says:\n" + IMAGE + "\nhi <|im_end|> [SEG]<|im_end|>\n<|im_start|>assistant says:\n"
        "It is [SEG].<|im_end|>\n<|im_start|>user says:\nand <IMG_CONTEXT> now?<|im_end|>\n<|im_start|>assistant\n")
    specials = {p.seg_token_id, p.img_context_id, p.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    counts = {t: ids.count(t) for t in specials}  # the user's spelled-out tokens are not tokens
    assert counts == {p.seg_token_id: 1, p.img_context_id: 16, p.tokenizer.convert_tokens_to_ids("<|im_end|>"): 3}


@pytest.mark.parametrize("template", ["{{ raise_exception('only lists of parts') }}",  # fails to render
                                      "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}"
                                      "{% endif %}{% endfor %}"])  # drops the system turn
def test_a_template_that_cannot_carry_the_turns_falls_back_with_a_warning(template, caplog):
    with caplog.at_level(logging.WARNING, "self1e.model.processing"):
        got = decoded(processor(AUTHORS_PROMPT, template), "the blue star")
    assert got == decoded(processor(AUTHORS_PROMPT), "the blue star")
    assert "chat template" in caplog.text


def test_prompt_settings_are_saved_loaded_and_overridden(tiny_model_dir, tmp_path):
    model = Self1eModel.from_pretrained(tiny_model_dir, config={"prompt": "authors", "use_thumbnail": False})
    assert model.processor.format == AUTHORS_PROMPT
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "self1e_config.json").read_text())
    assert saved["prompt"]["system"] == "You are an helpful assistant." and saved["use_thumbnail"] is False
    again = Self1eModel.from_pretrained(tmp_path / "ckpt", config=Self1eConfig.parse_overrides(
        ["prompt.system=Be brief.", "prompt.lowercase=false"]))
    assert again.processor.format == PromptFormat(**{**AUTHORS_PROMPT.__dict__, "system": "Be brief.",
                                                     "lowercase": False})
    assert Self1eModel.from_pretrained(tiny_model_dir).processor.format == PromptFormat()  # saved before prompts


@pytest.mark.parametrize(("prompt", "message"), [
    ({"questions": ["Segment it."]}, "must hold {x}"),
    ({"questions": []}, "non-empty list"),
    ({"answers": ["It is done."]}, "must hold [SEG]"),
    ({"lowercase": "yes"}, "'lowercase'"),
    ({"colour": "red"}, "unknown prompt settings"),
    ("lisa", "expected a mapping or one of"),
])
def test_bad_prompt_settings_name_the_file_and_the_field(tiny_model_dir, tmp_path, prompt, message):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "self1e_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prompt": prompt}))
    with pytest.raises(ValueError) as e:
        Self1eModel.from_pretrained(tmp_path / "ckpt")
    assert str(path) in str(e.value) and message in str(e.value)


def test_unknown_prompt_override_is_refused():
    with pytest.raises(ValueError, match="prompt.colour"):
        Self1eConfig.parse_overrides(["prompt.colour=red"])


def test_inference_answer_of_the_format_is_teacher_forced():
    p = processor(PromptFormat(inference_answer="Sure, [SEG]."))
    batch = p.segmentation_batch([p.image_input(Image.new("RGB", (56, 56)))], ["the red circle"])
    text = p.tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()], skip_special_tokens=False)
    assert text.endswith("<|im_start|>assistant\nSure, [SEG].")
    assert torch.equal(batch.labels, torch.full_like(batch.labels, -100))


def test_memoised_encodings_follow_a_token_added_later():
    """Template encodings are cached; adding a token afterwards (as loading adds [SEG]) must not
    serve the encoding from before it existed."""
    from self1e.model.tiny import build_tokenizer

    tok = build_tokenizer()
    p = Self1eProcessor(tok, 56, 7)
    before = p._encode("sure [SEG] .")
    assert before == p._encode("sure [SEG] .")  # served from the cache
    tok.add_tokens(["[SEG]"], special_tokens=True)
    seg = tok.convert_tokens_to_ids("[SEG]")
    after = p._encode("sure [SEG] .")
    assert seg not in before and after.count(seg) == 1
    assert seg not in p.encode_text("sure [SEG] .")  # user text keeps it plain, cached or not
    after.append(-1)
    assert -1 not in p._encode("sure [SEG] .")  # callers get a copy, never the cached list
