"""A checkpoint's own SELF1E settings are the defaults wherever it is loaded: the library, training
config resolution, a training run, and evaluation. Single fields can be overridden on top."""
from __future__ import annotations

import json
import re
from dataclasses import fields, replace

import pytest
import torch
import yaml

from self1e.cli import main
from self1e.model import Self1eConfig, Self1eModel, load_model
from self1e.model.weights import model_names
from self1e.train.config import load_config

SAVED = Self1eConfig(mask_head="rfr", seg_attention="causal")
DATA = "refshapes:train:8:0"


@pytest.fixture(scope="module")
def rfr_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rfr_causal")
    load_model("tiny:tiny", config=SAVED).save_pretrained(d)
    return d


def test_saved_config_differs_from_the_defaults():
    # otherwise every "inherit" check below would pass without inheriting anything
    assert SAVED.mask_head != Self1eConfig().mask_head and SAVED.seg_attention != Self1eConfig().seg_attention


# ---- the library --------------------------------------------------------------------------------
def test_from_pretrained_inherits_and_overrides(rfr_dir):
    assert json.loads((rfr_dir / "self1e_config.json").read_text()) == SAVED.to_dict()
    model = Self1eModel.from_pretrained(rfr_dir)
    assert model.config == SAVED and model.head.rung == "rfr"

    over = Self1eModel.from_pretrained(rfr_dir, config={"seg_attention": "bidirectional"})
    assert over.config == replace(SAVED, seg_attention="bidirectional")
    assert over.config.mask_head == "rfr" and over.head.rung == "rfr"
    changed = [f.name for f in fields(Self1eConfig) if getattr(over.config, f.name) != getattr(SAVED, f.name)]
    assert changed == ["seg_attention"]

    assert load_model(rfr_dir).config == SAVED  # the registry goes the same way
    assert load_model(rfr_dir, config={"bce_weight": 3.0}).config == replace(SAVED, bce_weight=3.0)


def test_unknown_override_key_is_an_error(rfr_dir):
    with pytest.raises(ValueError, match="nosuchkey"):
        Self1eModel.from_pretrained(rfr_dir, config={"nosuchkey": 1})


def test_a_full_config_that_does_not_fit_the_saved_head_is_an_error(rfr_dir):
    with pytest.raises(ValueError, match=re.escape("mask_head.safetensors")):
        Self1eModel.from_pretrained(rfr_dir, config=Self1eConfig(mask_head="rfa"))


@pytest.mark.parametrize("name", ["tiny:nosuch", "no/such/folder"])
def test_unknown_model_names_list_the_known_ones(name):
    with pytest.raises(ValueError) as info:
        load_model(name)
    msg = str(info.value)
    assert name in msg
    known = model_names()
    assert "default" in known and "tiny:tiny" in known
    for k in known:
        assert k in msg, f"{k!r} missing from: {msg}"


# ---- training config ----------------------------------------------------------------------------
def test_train_config_inherits_the_checkpoint_settings(rfr_dir, tmp_path):
    base = [f"model={rfr_dir}", f"data=[{DATA}]"]
    cfg = load_config(overrides=base)
    assert cfg.self1e == SAVED  # every field, not only the two that differ from the defaults

    over = load_config(overrides=[*base, "self1e.seg_attention=bidirectional"])
    assert over.self1e == replace(SAVED, seg_attention="bidirectional")

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"self1e": {"mask_head": "rfr"}}))
    from_file = load_config(recipe, base)
    assert from_file.self1e.seg_attention == "causal" and from_file.self1e == SAVED

    # a model without saved settings keeps the library defaults
    assert load_config(overrides=["model=tiny:tiny", f"data=[{DATA}]"]).self1e == Self1eConfig()


def train_cli(rfr_dir, out, *extra: str) -> int:
    sets = [f"model={rfr_dir}", f"data=[{DATA}]", "max_steps=2", "batch_size=2", "save_every=0",
            "eval_every=0", "val=null", "lora.enabled=false", "warmup_steps=1", "log_every=1", *extra]
    argv = ["train", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


def test_training_from_a_checkpoint_keeps_its_settings(rfr_dir, tmp_path):
    for name, extra, seg_attention in [("inherit", (), "causal"),
                                       ("override", ("self1e.seg_attention=bidirectional",), "bidirectional")]:
        out = tmp_path / name
        assert train_cli(rfr_dir, out, *extra) == 0
        resolved = yaml.safe_load((out / "config.yaml").read_text())["self1e"]
        assert (resolved["mask_head"], resolved["seg_attention"]) == ("rfr", seg_attention), name
        final = json.loads((out / "final" / "self1e_config.json").read_text())
        assert final == replace(SAVED, seg_attention=seg_attention).to_dict(), name
        assert Self1eModel.from_pretrained(out / "final").config.seg_attention == seg_attention


# ---- evaluation ---------------------------------------------------------------------------------
def eval_cli(rfr_dir, out, *extra: str) -> int:
    return main(["eval", "--model", str(rfr_dir), "--data", "refshapes:test:4:0", "--out", str(out),
                 "--no-progress", "--device", "cpu", *extra])


def test_eval_reports_the_settings_it_used(rfr_dir, tmp_path, capsys):
    out = tmp_path / "inherit" / "report.json"
    assert eval_cli(rfr_dir, out) == 0
    assert json.loads(out.read_text())["self1e"] == SAVED.to_dict()

    out = tmp_path / "override" / "report.json"
    assert eval_cli(rfr_dir, out, "--set", "seg_attention=bidirectional") == 0
    assert json.loads(out.read_text())["self1e"] == replace(SAVED, seg_attention="bidirectional").to_dict()

    capsys.readouterr()
    out = tmp_path / "bad" / "report.json"
    assert eval_cli(rfr_dir, out, "--set", "nosuchkey=1") == 2
    err = capsys.readouterr().err
    assert "self1e eval: error:" in err and "nosuchkey" in err
    assert not out.exists()


def test_another_rung_over_a_checkpoint_keeps_the_backbone_with_a_fresh_head(rfr_dir):
    """A warm start of another ablation rung: the checkpoint's ViT and LLM, a new head of the asked rung."""
    import torch

    saved = Self1eModel.from_pretrained(rfr_dir)
    with pytest.raises(ValueError, match="new_head=True"):
        Self1eModel.from_pretrained(rfr_dir, config={"mask_head": "rfa"})
    other = load_model(rfr_dir, config={"mask_head": "rfa"}, new_head=True)
    assert other.config.mask_head == "rfa"
    assert all(torch.equal(a, b) for a, b in zip(saved.base.state_dict().values(), other.base.state_dict().values()))
    shapes = {k: tuple(v.shape) for k, v in saved.head.state_dict().items()}
    assert shapes != {k: tuple(v.shape) for k, v in other.head.state_dict().items()}
    assert load_config(None, ["new_head=true"]).new_head is True


def test_random_geometry_builds_a_real_config_with_random_weights(tmp_path):
    from self1e.model.tiny import tiny_config

    folder = tmp_path / "geometry"
    folder.mkdir()
    config = tiny_config("tiny", vocab_size=1000, image_token_id=999)  # a vocabulary larger than the tokenizer's
    raw = json.loads(config.to_json_string())
    raw["text_config"].update(num_hidden_layers=3, layer_types=["full_attention"] * 3)
    (folder / "config.json").write_text(json.dumps(raw))
    model = load_model(f"random:{folder}", dtype=torch.bfloat16)
    assert model.base.config.text_config.num_hidden_layers == 3 and model.base.config.text_config.vocab_size == 1000
    assert model.base.config.image_token_id == model.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") != 999
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    a, b = load_model(f"random:{folder / 'config.json'}"), load_model(f"random:{folder}")  # the file works too
    assert all(torch.equal(x, y) for x, y in zip(a.base.parameters(), b.base.parameters()))  # seeded
    with pytest.raises(ValueError, match="no config.json"):
        load_model(f"random:{tmp_path / 'missing'}")
    (folder / "config.json").write_text(json.dumps({**raw, "model_type": "qwen2"}))
    with pytest.raises(ValueError, match="model_type"):
        load_model(f"random:{folder}")


def test_a_lora_target_that_matches_nothing_is_named():
    from self1e.train.config import LoraSettings
    from self1e.train.setup import check_lora_targets, configure_trainable

    model = load_model("tiny:tiny")
    counts = check_lora_targets(model, LoraSettings(enabled=True))
    assert counts["llm_targets.q_proj"] == 2 and counts["vit_targets.fc2"] == 2  # two layers of each
    typo = LoraSettings(enabled=True, llm_targets=("q_proj", "qproj"), vit_targets=("qkv",))
    with pytest.raises(ValueError, match=r"lora.llm_targets: 'qproj', lora.vit_targets: 'qkv'"):
        configure_trainable(model, typo)
    assert not any("lora" in n for n, _ in model.named_parameters())  # refused before anything was injected
