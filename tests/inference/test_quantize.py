"""Quantized inference: int8 on the CPU (masks close to float32, the right layers quantized, the CLI
flag end to end), and the bitsandbytes modes' config and clear failures without CUDA / bitsandbytes."""
from __future__ import annotations

import argparse
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from self1e import Self1ePredictor
from self1e.cli import build_parser, main
from self1e.common.quantization import QUANTIZE_MODES, parse_quantize
from self1e.model import Self1eModel, load_model
from self1e.model import quantize as q
from self1e.model.tiny import build_tiny_base

TEXTS = ["the red circle", "all the blue boxes on the left", "the star", "the biggest yellow triangle",
         "no such thing"]
CHOICES = "none, int8, int8-vit, bnb8, nf4"


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def random_image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def centred_model_dir(tmp_path_factory):
    """A tiny random model whose masks cut the image in about half. (A plain random head's logits are all
    positive, so every mask would be the whole image and any quantization would 'agree'.) The last bias
    of ``g`` is shifted along the [SEG] feature of one expression on image 0, so that its median logit
    there is 0."""
    base, tok = build_tiny_base("tiny", seed=1)
    model = Self1eModel.from_base(base, tok).eval()
    predictor = Self1ePredictor(model)
    seg_features = []
    hook = model.head.g.register_forward_hook(lambda mod, inp, out: seg_features.append(out.detach()))
    predictor.set_image(random_image(0))
    logits = predictor.predict_torch([TEXTS[0]], original_size=False)[0]
    hook.remove()
    s = seg_features[-1][0]  # g is called as a module only on the [SEG] side (dot_g uses its parts)
    with torch.no_grad():
        model.head.g.net[2].bias -= float(logits.median()) / model.head.scale * s / s.dot(s)
    d = tmp_path_factory.mktemp("centred_tiny")
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pair(centred_model_dir):
    return (Self1ePredictor.from_pretrained(centred_model_dir, device="cpu"),
            Self1ePredictor.from_pretrained(centred_model_dir, quantize="int8"))


def test_int8_masks_are_close_to_float32_on_the_tiny_random_model(pair):
    """Close = every mask IoU >= 0.85 and their mean >= 0.9, the same emptiness, logits correlated
    >= 0.98, on 5 expressions x 2 images where the float masks are neither empty nor full."""
    fp, q8 = pair
    ious, fractions = [], []
    for seed in (0, 1):
        fp.set_image(random_image(seed))
        q8.set_image(random_image(seed))
        for a, b in zip(fp.predict_batch(TEXTS), q8.predict_batch(TEXTS)):
            fractions.append(a.mask.mean())
            ious.append(mask_iou(a.mask, b.mask))
            assert a.empty == b.empty
            assert np.corrcoef(a.logits.ravel(), b.logits.ravel())[0, 1] >= 0.98
            assert not np.array_equal(a.logits, b.logits)  # really a different (quantized) computation
    assert all(0.1 < f < 0.9 for f in fractions), fractions  # the comparison is not trivial
    assert min(ious) >= 0.85 and np.mean(ious) >= 0.9, ious


def test_int8_keeps_the_shipped_models_masks_and_no_target_answers():
    """The trained shipped model on 16 fresh RefShapes samples (one no-target expression among them):
    mean mask IoU int8 / float >= 0.9, and the same empty / non-empty answer on at least 15."""
    from self1e.data.datasets import load_dataset

    samples = [s for s in load_dataset("refshapes:test:16:4242:224") if not s.is_multi_object]
    images, texts = [s.load_image() for s in samples], [s.text for s in samples]
    fp = Self1ePredictor.from_pretrained("default", device="cpu").predict_many(images, texts)
    q8 = Self1ePredictor.from_pretrained("default", quantize="int8").predict_many(images, texts)
    assert any(r.empty for r in fp) and not all(r.empty for r in fp)
    assert np.mean([mask_iou(a.mask, b.mask) for a, b in zip(fp, q8)]) >= 0.9
    assert sum(a.empty == b.empty for a, b in zip(fp, q8)) >= len(samples) - 1


def test_int8_quantizes_the_vit_and_llm_linears_and_keeps_the_rest_float(tiny_model_dir):
    fp = load_model(tiny_model_dir)
    q8 = load_model(tiny_model_dir, quantize="int8")
    assert fp.quantization is None and q8.quantization == "int8"
    expected = {name for part in q.quantized_parts(fp.backbone) for name, m in fp.named_modules()
                if name.startswith(part + ".") and isinstance(m, nn.Linear)}
    assert len(expected) >= 20  # q/k/v/o and MLPs of both towers
    found = q.quantized_modules(q8)
    assert set(found) == expected and set(found.values()) == {"int8"}
    for part in q.quantized_parts(fp.backbone):  # no float Linear left where int8 was asked for
        assert not [n for n, m in q8.get_submodule(part).named_modules() if isinstance(m, nn.Linear)]
    for part in q.float_parts(fp.backbone):  # the head, the projector and the LM head: float32 Linear, the same weights
        linears = [(n, m) for n, m in q8.get_submodule(part).named_modules() if isinstance(m, nn.Linear)]
        assert linears
        for n, m in linears:
            ref = fp.get_submodule(part).get_submodule(n) if n else fp.get_submodule(part)
            assert m.weight.dtype == torch.float32 and torch.equal(m.weight, ref.weight)
    assert q.count_parameters(q8) == q.count_parameters(fp) == sum(p.numel() for p in fp.parameters())
    assert q.weight_bytes(q8) < q.weight_bytes(fp)


def test_int8_vit_quantizes_only_the_vit_linears(tiny_model_dir):
    fp, q8 = load_model(tiny_model_dir), load_model(tiny_model_dir, quantize="int8-vit")
    assert q8.quantization == "int8-vit"
    vit = {name for name, m in fp.named_modules()
           if name.startswith("base.model.vision_tower.") and isinstance(m, nn.Linear)}
    assert len(vit) >= 8 and set(q.quantized_modules(q8)) == vit
    llm = dict(q8.get_submodule("base.model.language_model").named_modules())
    ref = fp.get_submodule("base.model.language_model")
    linears = [(n, m) for n, m in llm.items() if isinstance(m, nn.Linear)]
    assert len(linears) >= 8  # every LLM Linear stays float32, with its weights
    assert all(m.weight.dtype == torch.float32 and torch.equal(m.weight, ref.get_submodule(n).weight)
               for n, m in linears)
    assert q.weight_bytes(load_model(tiny_model_dir, quantize="int8")) < q.weight_bytes(q8) < q.weight_bytes(fp)
    with pytest.raises(ValueError, match="int8-vit.*does not run on cuda"):
        load_model(tiny_model_dir, device="cuda", quantize="int8-vit")


def test_int8_vit_keeps_the_shipped_models_masks_closer_than_int8():
    """On the shipped model (a 96-wide language model) int8 in the LLM is what moves the masks: with
    the ViT alone in int8 the masks agree with float32 better than with both in int8."""
    from self1e.data.datasets import load_dataset

    samples = [s for s in load_dataset("refshapes:test:16:4242:224") if not s.is_multi_object]
    images, texts = [s.load_image() for s in samples], [s.text for s in samples]
    fp = Self1ePredictor.from_pretrained("default", device="cpu").predict_many(images, texts)
    agree = {mode: np.mean([mask_iou(a.mask, b.mask) for a, b in zip(
        fp, Self1ePredictor.from_pretrained("default", quantize=mode).predict_many(images, texts))])
        for mode in ("int8", "int8-vit")}
    assert agree["int8-vit"] >= 0.95 and agree["int8-vit"] > agree["int8"], agree


def test_a_quantized_model_refuses_training(tiny_model_dir):
    model = load_model(tiny_model_dir, quantize="int8")
    with pytest.raises(ValueError, match="quantized \\(int8\\) for inference only"):
        model.train()
    model.eval()  # fine
    assert not model.training
    load_model(tiny_model_dir).train()  # an unquantized one trains


def test_int8_is_refused_off_the_cpu_and_outside_float32(tiny_model_dir):
    with pytest.raises(ValueError, match="does not run on cuda.*bnb8"):
        q.check_target("int8", "cuda", None)
    with pytest.raises(ValueError, match="does not run on cuda"):
        load_model(tiny_model_dir, quantize="int8", device="cuda")
    with pytest.raises(ValueError, match="float32.*bfloat16"):
        Self1ePredictor.from_pretrained(tiny_model_dir, quantize="int8", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="already quantized"):
        q.quantize_int8(load_model(tiny_model_dir, quantize="int8"))
    # without a device, int8 picks the CPU even where CUDA would be the default
    assert Self1ePredictor.from_pretrained(tiny_model_dir, quantize="int8").device.type == "cpu"


@pytest.mark.parametrize("bad", ["int4", "fp8", "INT 8", ""])
def test_bad_quantize_values_are_refused_naming_the_choices(bad, tiny_model_dir):
    with pytest.raises(ValueError, match=f"choose one of {CHOICES}"):
        parse_quantize(bad)
    with pytest.raises(ValueError, match=f"choose one of {CHOICES}"):
        Self1ePredictor.from_pretrained(tiny_model_dir, quantize=bad)
    assert parse_quantize("none") is None and parse_quantize(None) is None and parse_quantize("INT8") == "int8"


def test_bad_cli_quantize_is_an_argument_error_naming_the_choices(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment", "--model", str(tiny_model_dir), "--image", "x.png", "--text", "t", "--out",
              str(tmp_path / "m.png"), "--quantize", "int4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--quantize" in err and "invalid choice: 'int4'" in err and all(m in err for m in QUANTIZE_MODES)


def test_every_model_command_has_the_one_quantize_option():
    from self1e.cli import options

    reference = argparse.ArgumentParser()
    options.add_quantize(reference)
    expected = next(a for a in reference._actions if "--quantize" in a.option_strings)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("segment", "eval", "chat", "serve"):
        action = next(a for a in sub.choices[command]._actions if "--quantize" in a.option_strings)
        assert (action.help, tuple(action.choices), action.default) == (expected.help, QUANTIZE_MODES, "none")
    assert options.quantize_from(argparse.Namespace(quantize="none")) is None
    assert options.quantize_from(argparse.Namespace()) is None  # a command without the option
    assert options.quantize_from(argparse.Namespace(quantize="int8")) == "int8"


def test_segment_cli_with_int8_writes_the_int8_predictors_mask(tiny_model_dir, tmp_path, capsys):
    img = tmp_path / "scene.png"
    Image.fromarray(random_image(3, 40, 90)).save(img)
    out = tmp_path / "m.png"
    rc = main(["segment", "--model", str(tiny_model_dir), "--image", str(img), "--text", "the red circle",
               "--out", str(out), "--quantize", "int8"])
    assert rc == 0, capsys.readouterr().err
    predictor = Self1ePredictor.from_pretrained(tiny_model_dir, quantize="int8")
    predictor.set_image(Image.open(img).convert("RGB"))
    expected = predictor.predict("the red circle").mask
    assert np.array_equal(np.asarray(Image.open(out)) > 0, expected)
    # a bitsandbytes mode here (no CUDA, no bitsandbytes) fails as a one-line user error before loading
    rc = main(["segment", "--model", str(tiny_model_dir), "--image", str(img), "--text", "the red circle",
               "--out", str(tmp_path / "n.png"), "--quantize", "nf4"])
    err = capsys.readouterr().err
    assert rc == 2 and "quantize='nf4'" in err and "Traceback" not in err and not (tmp_path / "n.png").exists()


def test_eval_cli_with_int8_writes_a_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["eval", "--no-progress", "--model", str(tiny_model_dir), "--data", "refshapes:test:4:1:64",
               "--out", str(out), "--quantize", "int8"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    (entry,) = report["datasets"].values()
    assert entry["n"] == 4 and report["device"] == "cpu"
    rc = main(["eval", "--no-progress", "--predictions", str(tmp_path), "--data", "refshapes:test:4:1:64",
               "--out", str(tmp_path / "r2.json"), "--quantize", "int8"])
    assert rc == 2 and "--quantize" in capsys.readouterr().err


def test_chat_cli_with_int8_answers(tiny_model_dir, tmp_path, capsys):
    img = tmp_path / "scene.png"
    Image.fromarray(random_image(4)).save(img)
    rc = main(["chat", "--model", str(tiny_model_dir), "--image", str(img), "--message", "what colour is the star?",
               "--max-new-tokens", "4", "--out", str(tmp_path / "chat"), "--quantize", "int8"])
    assert rc == 0 and "assistant:" in capsys.readouterr().out


# ---- bitsandbytes (GPU) ------------------------------------------------------------------------


def fake_environment(monkeypatch, bitsandbytes: bool, cuda: bool) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "bitsandbytes":
            return object() if bitsandbytes else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(q.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(q.torch.cuda, "is_available", lambda: cuda)


@pytest.mark.parametrize("mode", ["bnb8", "nf4"])
def test_bnb_modes_fail_clearly_without_bitsandbytes_or_cuda(mode, tiny_model_dir, monkeypatch):
    fake_environment(monkeypatch, bitsandbytes=False, cuda=False)
    with pytest.raises(ValueError) as e:
        Self1ePredictor.from_pretrained(tiny_model_dir, quantize=mode)
    msg = str(e.value)
    assert f"quantize={mode!r}" in msg and "pip install bitsandbytes" in msg and "gpu-quant" in msg
    assert "CUDA is not available" in msg and "quantize='int8'" in msg

    fake_environment(monkeypatch, bitsandbytes=True, cuda=False)  # installed, but no GPU
    with pytest.raises(ValueError, match="CUDA is not available") as e:
        load_model(tiny_model_dir, quantize=mode)
    assert "pip install bitsandbytes" not in str(e.value)

    fake_environment(monkeypatch, bitsandbytes=False, cuda=True)  # a GPU, but no bitsandbytes
    with pytest.raises(ValueError, match="pip install bitsandbytes") as e:
        load_model(tiny_model_dir, quantize=mode, device="cuda")
    assert "CUDA" not in str(e.value).split("(pip install")[0]

    fake_environment(monkeypatch, bitsandbytes=True, cuda=True)  # everything, but asked for the CPU
    with pytest.raises(ValueError, match="runs on a CUDA device, not on cpu"):
        load_model(tiny_model_dir, quantize=mode, device="cpu")
    with pytest.raises(ValueError, match="built in memory"):
        load_model("tiny:tiny", quantize=mode, device="cuda")


@pytest.mark.parametrize("mode,family_name", [("bnb8", "internvl"), ("nf4", "internvl"), ("nf4", "qwen3_vl")])
def test_bnb_config_reaches_the_base_from_pretrained_and_the_head_stays_bf16(mode, family_name, tiny_model_dir,
                                                                          tmp_path, monkeypatch):
    from transformers import BitsAndBytesConfig

    from self1e.model.backbones import FAMILIES

    if family_name != "internvl":
        load_model(f"tiny:{family_name}").save_pretrained(tmp_path / family_name)
    folder = tiny_model_dir if family_name == "internvl" else tmp_path / family_name
    model_class = FAMILIES[family_name].classes()[1]
    monkeypatch.setattr(q, "check_bnb_environment", lambda mode: None)
    calls = []
    real = model_class.from_pretrained

    def fake_from_pretrained(path, **kwargs):  # records the call, loads unquantized (no bitsandbytes here)
        calls.append(kwargs)
        return real(path, **{k: v for k, v in kwargs.items() if k not in ("quantization_config", "device_map")})

    monkeypatch.setattr(model_class, "from_pretrained", fake_from_pretrained)
    model = load_model(folder, quantize=mode, device="cuda:1")  # bf16 by default
    (kwargs,) = calls
    config = kwargs["quantization_config"]
    assert isinstance(config, BitsAndBytesConfig) and kwargs["device_map"] == {"": "cuda:1"}
    assert kwargs["dtype"] == torch.bfloat16
    if mode == "bnb8":
        assert config.load_in_8bit and not config.load_in_4bit
    else:
        assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
        assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert set(config.llm_int8_skip_modules) == {"lm_head", *FAMILIES[family_name].float_paths()}
    assert "model.multi_modal_projector" in config.llm_int8_skip_modules or family_name != "internvl"
    assert model.quantization == mode
    assert all(type(m) is nn.Linear and m.weight.dtype == torch.bfloat16
               for m in model.head.modules() if isinstance(m, nn.Linear))
    assert not q.quantized_modules(model.head)
    with pytest.raises(ValueError, match="inference only"):
        model.train()
    with pytest.raises(ValueError, match="float32"):  # the unquantized load path is untouched
        q.check_target("int8", "cpu", torch.bfloat16)


def test_serve_cli_loads_the_int8_predictor(tiny_model_dir, monkeypatch):
    pytest.importorskip("uvicorn")
    import uvicorn

    from self1e.serve import app as serve_app

    built = []
    monkeypatch.setattr(serve_app, "build_app", lambda predictor, *a, **k: built.append(predictor) or object())
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    assert main(["serve", "--model", str(tiny_model_dir), "--quantize", "int8"]) == 0
    (predictor,) = built
    assert predictor.model.quantization == "int8" and q.quantized_modules(predictor.model)
