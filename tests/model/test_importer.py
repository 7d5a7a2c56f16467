"""import-authors: a tiny model written in the authors' on-disk layout (by hand, below) -> our checkpoint.

The inverse mapping here is spelled out name by name on purpose: it shares no code with the importer,
so a renaming bug there cannot cancel itself out.
"""
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerFast

from self1e import Self1ePredictor
from self1e.cli import main
from self1e.model import Self1eConfig, Self1eModel
from self1e.model.importer import import_authors_checkpoint
from self1e.model.processing import Self1eProcessor
from self1e.model.tiny import SPECIAL_TOKENS, build_tokenizer, tiny_config

# InternViT-300M style (InternVL3-1B..14B) and InternViT-6B style (InternVL3-38B/78B) vision towers.
VISION_VARIANTS = {
    "vit300m": {"attention_bias": True, "use_qk_norm": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-5},
    "vit6b": {"attention_bias": False, "use_qk_norm": True, "norm_type": "rms_norm", "layer_norm_eps": 1e-6},
}
ROPE_THETA = 1e6  # not transformers' default, so a dropped rope_theta shows


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer without merges (Qwen's pre-tokeniser family): it decodes back to
    exactly the text it encoded, spaces and newlines included, so a test can read a whole prompt."""
    from tokenizers.models import BPE

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    return fast


def source_model(variant: str = "vit300m", seed: int = 0, tok=None) -> Self1eModel:
    """A tiny random SELF1E model with [SEG] then an unused [SEGT] as the last embedding rows."""
    tok = tok or build_tokenizer()
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("[SEG]", "[SEGT]")], special_tokens=True)
    cfg = tiny_config("tiny", vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    for k, v in VISION_VARIANTS[variant].items():
        setattr(cfg.vision_config, k, v)
    cfg.text_config.rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    cfg.text_config.rms_norm_eps = 1e-5
    torch.manual_seed(seed)
    base = InternVLForConditionalGeneration(cfg).eval()
    model = Self1eModel.from_base(base, tok, Self1eConfig(mask_head="rfa", seg_attention="bidirectional"))
    with torch.no_grad():  # every tensor distinct (norms, layer scales, biases): a swap of two would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert tok.convert_tokens_to_ids("[SEGT]") == base.get_input_embeddings().num_embeddings - 1
    return model.eval()


def authors_state_dict(model: Self1eModel) -> dict[str, torch.Tensor]:
    """Our in-memory parameters under the original remote-code names (InternVLChatModel + heads)."""
    sd = model.state_dict()
    used = set()

    def take(key):
        used.add(key)
        return sd[key]

    out = {}
    v, vc = "base.model.vision_tower.", model.base.config.vision_config
    out["vision_model.embeddings.class_embedding"] = take(v + "embeddings.cls_token")
    out["vision_model.embeddings.position_embedding"] = take(v + "embeddings.position_embeddings")
    for p in ("weight", "bias"):
        out[f"vision_model.embeddings.patch_embedding.{p}"] = take(f"{v}embeddings.patch_embeddings.projection.{p}")
    for i in range(vc.num_hidden_layers):
        s, d = f"{v}encoder.layer.{i}.", f"vision_model.encoder.layers.{i}."
        params = ("weight", "bias") if vc.attention_bias else ("weight",)
        for p in params:
            out[d + f"attn.qkv.{p}"] = torch.cat([take(s + f"attention.{x}_proj.{p}") for x in "qkv"])
        norm_params = ("weight", "bias") if vc.norm_type == "layer_norm" else ("weight",)
        for p in norm_params:
            out[d + f"norm1.{p}"] = take(s + f"layernorm_before.{p}")
            out[d + f"norm2.{p}"] = take(s + f"layernorm_after.{p}")
        if vc.use_qk_norm:
            out[d + "attn.q_norm.weight"] = take(s + "attention.q_norm.weight")
            out[d + "attn.k_norm.weight"] = take(s + "attention.k_norm.weight")
        for p in ("weight", "bias"):
            out[d + f"attn.proj.{p}"] = take(s + f"attention.projection_layer.{p}")
            out[d + f"mlp.fc1.{p}"] = take(s + f"mlp.fc1.{p}")
            out[d + f"mlp.fc2.{p}"] = take(s + f"mlp.fc2.{p}")
        out[d + "ls1"] = take(s + "lambda_1")
        out[d + "ls2"] = take(s + "lambda_2")
    for theirs, ours in (("0", "layer_norm"), ("1", "linear_1"), ("3", "linear_2")):
        for p in ("weight", "bias"):
            out[f"mlp1.{theirs}.{p}"] = take(f"base.model.multi_modal_projector.{ours}.{p}")
    for key in sd:
        if key.startswith("base.model.language_model."):
            out["language_model.model." + key[len("base.model.language_model."):]] = take(key)
    out["language_model.lm_head.weight"] = take("base.lm_head.weight")
    for theirs, ours in (("combine_decode_proj_all", "f_pus_llm"), ("combine_decode_proj_ori", "f_pus"),
                         ("combine_decode_proj", "g")):
        for i in ("0", "2"):
            for p in ("weight", "bias"):
                out[f"{theirs}.{i}.{p}"] = take(f"head.{ours}.net.{i}.{p}")
    assert used == set(sd), f"parameters not written: {set(sd) - used}"
    return out


def authors_config(model: Self1eModel, dtype: str) -> dict:
    """An original-style config.json, with the remote-code and generation noise the real one carries."""
    vc, tc = model.base.config.vision_config, model.base.config.text_config
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": 0.5, "select_layer": -1, "ps_version": "v2", "template": "internvl2_5",
        "force_image_size": vc.image_size[0], "dynamic_image_size": True, "use_thumbnail": True,
        "min_dynamic_patch": 1, "max_dynamic_patch": 12, "use_backbone_lora": 0, "use_llm_lora": 0,
        "torch_dtype": dtype, "tie_word_embeddings": False,
        "vision_config": {
            "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": vc.hidden_size,
            "intermediate_size": vc.intermediate_size, "num_attention_heads": vc.num_attention_heads,
            "num_hidden_layers": vc.num_hidden_layers, "image_size": vc.image_size[0], "patch_size": vc.patch_size[0],
            "num_channels": 3, "qkv_bias": vc.attention_bias, "qk_normalization": vc.use_qk_norm,
            "norm_type": vc.norm_type, "layer_norm_eps": vc.layer_norm_eps, "hidden_act": "gelu", "dropout": 0.0,
            "attention_dropout": 0.0, "drop_path_rate": 0.1, "initializer_factor": 1.0, "initializer_range": 1e-10,
            "use_flash_attn": True, "torch_dtype": dtype, "num_beams": 1, "transformers_version": "4.37.2",
        },
        "llm_config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "_name_or_path": "./pretrained/Qwen2.5",
            "hidden_size": tc.hidden_size, "intermediate_size": tc.intermediate_size,
            "num_hidden_layers": tc.num_hidden_layers, "num_attention_heads": tc.num_attention_heads,
            "num_key_value_heads": tc.num_key_value_heads, "vocab_size": tc.vocab_size - 2,  # stale, as if before [SEG]
            "max_position_embeddings": 2048, "rms_norm_eps": tc.rms_norm_eps, "rope_theta": ROPE_THETA,
            "rope_scaling": None, "hidden_act": "silu", "sliding_window": 4096, "use_sliding_window": False,
            "max_window_layers": 70, "tie_word_embeddings": False, "use_cache": False,
            "attn_implementation": "flash_attention_2", "moe_config": None, "use_bfloat16": True, "num_beams": 1,
            "temperature": 1.0, "torch_dtype": dtype, "bos_token_id": None,
            "eos_token_id": model.tokenizer.convert_tokens_to_ids("<|im_end|>"),
        },
    }


def write_source(model: Self1eModel, d, shards: int = 1, dtype: torch.dtype = torch.float32):
    """The authors' folder: config.json, safetensors (one file or shards + index), tokenizer."""
    sd = {k: t.detach().to(dtype).contiguous() for k, t in authors_state_dict(model).items()}
    if shards == 1:
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    else:
        keys, weight_map = sorted(sd), {}
        for i in range(shards):  # interleaved, so a layer's tensors (and the heads) span several shards
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: sd[k] for k in keys[i::shards]}, d / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(keys[i::shards], name))
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    (d / "config.json").write_text(json.dumps(authors_config(model, name), indent=2))
    model.tokenizer.save_pretrained(d)
    return d


def seg_batch(model):
    p = model.processor
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8))
    return p.segmentation_batch([p.image_input(im)], ["the red circle", "all the blue boxes on the left"], [0, 0])


@pytest.fixture(scope="module", params=sorted(VISION_VARIANTS))
def imported(request, tmp_path_factory):
    model = source_model(request.param)
    src = write_source(model, tmp_path_factory.mktemp("authors"))
    out = import_authors_checkpoint(src, tmp_path_factory.mktemp("imported") / "ckpt")
    return model, src, Self1eModel.from_pretrained(out)


def test_imported_model_gives_the_source_models_logits(imported):
    source, _, model = imported
    batch = seg_batch(model)
    with torch.no_grad():
        want = source(batch, return_lm_logits=True)
        got = model(batch, return_lm_logits=True)
    assert len(got.mask_logits) == 2 and got.mask_logits[0].shape == (16, 16)  # rfa: 4x the 4x4 token grid
    for a, b in zip(want.mask_logits, got.mask_logits):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert torch.allclose(want.lm_logits, got.lm_logits, atol=1e-6, rtol=0)


def _lm_input_ids(model, run) -> list[torch.Tensor]:
    """The token ids each pass of ``run()`` hands the language model (its image tokens included)."""
    seen, embed = [], model.embed

    def spy(input_ids, *args, **kwargs):
        seen.append(input_ids.clone())
        return embed(input_ids, *args, **kwargs)

    model.embed = spy
    try:
        run()
    finally:
        del model.embed
    return seen


# InternVL's turn layout as a Jinja chat template (the -hf tokenizers carry one of this shape).
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
AUTHORS_EVAL_PROMPT = ("<|im_start|>system\nYou are an helpful assistant.<|im_end|>\n<|im_start|>user\n<img>"
                       + "<IMG_CONTEXT>" * 16 + "</img>\n What is the red circle on the left in this image? "
                       "Please output segmentation mask.<|im_end|>\n<|im_start|>assistant\n[SEG].")


@pytest.mark.parametrize("template", [None, CHAT_TEMPLATE])
def test_imported_checkpoint_is_prompted_exactly_as_the_authors_evaluate(template, tmp_path):
    """Decoded from the ids the LLM receives (a tokenizer that round-trips text exactly): their
    system turn, their question with its leading space after the image's newline, the expression
    lower-cased; the same through the checkpoint's chat template when it has one."""
    tok = byte_tokenizer()
    tok.chat_template = template
    (tmp_path / "release").mkdir()
    src = write_source(source_model(tok=tok), tmp_path / "release")
    predictor = Self1ePredictor(Self1eModel.from_pretrained(import_authors_checkpoint(src, tmp_path / "ckpt")))
    predictor.set_image(Image.new("RGB", (56, 56), "white"))
    assert predictor.model.tokenizer.chat_template == template  # the import keeps the template
    (ids,) = _lm_input_ids(predictor.model, lambda: predictor.predict("The Red Circle on the LEFT"))
    assert predictor.model.tokenizer.decode(ids[0], skip_special_tokens=False) == AUTHORS_EVAL_PROMPT


def test_imported_checkpoint_takes_no_thumbnail_tile(imported):
    _, _, model = imported
    p = Self1eProcessor(model.tokenizer, 56, 7, max_tiles=4, use_thumbnail=model.config.use_thumbnail)
    assert p.image_input(Image.new("RGB", (112, 56))).pixel_values.shape[0] == 2  # 1 x 2 tiles, no thumbnail


def test_imported_tokens_and_configs(imported):
    source, _, model = imported
    tok, rows = model.tokenizer, model.base.get_input_embeddings().num_embeddings
    assert model.seg_token_id == source.seg_token_id == tok.convert_tokens_to_ids("[SEG]")
    assert tok.convert_tokens_to_ids("[SEGT]") == rows - 1 == len(tok) - 1  # kept: tokenizer and weights agree
    assert model.base.get_output_embeddings().weight.shape[0] == rows
    assert model.image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert model.config == Self1eConfig(mask_head="rfa", seg_attention="bidirectional", use_thumbnail=False,
                                        prompt="authors")
    cfg, want = model.base.config, source.base.config
    assert cfg.tie_word_embeddings is False
    assert model.base.lm_head.weight.data_ptr() != model.base.get_input_embeddings().weight.data_ptr()
    assert cfg.text_config.rope_parameters["rope_theta"] == ROPE_THETA
    assert cfg.text_config.rms_norm_eps == want.text_config.rms_norm_eps
    assert cfg.text_config.vocab_size == rows  # the stored rows, not llm_config's stale vocab_size
    for field in ("attention_bias", "use_qk_norm", "norm_type", "layer_norm_eps"):
        assert getattr(cfg.vision_config, field) == getattr(want.vision_config, field), field
    assert list(cfg.vision_config.image_size) == [56, 56] and list(cfg.vision_config.patch_size) == [7, 7]
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy, cfg.image_seq_length) == (-1, "default", 16)


def _mlp(x, p):
    return F.linear(F.gelu(F.linear(x, p["0.weight"], p["0.bias"])), p["2.weight"], p["2.bias"])


def _depth_to_space(y):
    """The authors' layout, written directly: channel block k -> sub-pixel (row k // 2, column k % 2)."""
    n, h, w, c4 = y.shape
    c = c4 // 4
    out = y.new_zeros(n, 2 * h, 2 * w, c)
    for k in range(4):
        out[:, k // 2::2, k % 2::2] = y[..., k * c:(k + 1) * c]
    return out


def test_head_channel_order_matches_the_authors_formula(imported):
    """From the authors' tensors and their formula (non-square grid): no permutation is needed."""
    _, src, model = imported
    raw = load_file(src / "model.safetensors")
    head = {h: {k[len(h) + 1:]: t for k, t in raw.items() if k.startswith(h + ".")}
            for h in ("combine_decode_proj_all", "combine_decode_proj_ori", "combine_decode_proj")}
    llm, ori, g = head["combine_decode_proj_all"], head["combine_decode_proj_ori"], head["combine_decode_proj"]
    c = g["0.weight"].shape[0]
    gen = torch.Generator().manual_seed(0)
    f_img, f_v1 = torch.randn(2, 1, 2, 3, c, generator=gen)
    f_hq, h_seg = torch.randn(1, 4, 6, c, generator=gen), torch.randn(1, c, generator=gen)
    residual = _depth_to_space(_mlp(f_img, llm) - _mlp(f_v1, ori))
    up = F.interpolate(residual.permute(0, 3, 1, 2), size=(8, 12), mode="bilinear", align_corners=False)
    feats = _mlp(_depth_to_space(_mlp(f_hq, ori)) + up.permute(0, 2, 3, 1), g)
    seg = _mlp(_depth_to_space(_mlp(h_seg[:, None, None], llm)).mean((1, 2)), g)
    want = torch.einsum("nhwc,nc->nhw", feats, seg) / math.sqrt(c)
    with torch.no_grad():
        got = model.head(f_img, h_seg, f_v1, f_hq, with_aux=True)
    assert got.logits.shape == (1, 8, 12)
    assert torch.allclose(got.logits, want, atol=1e-5)
    aux_want = torch.einsum("nhwc,nc->nhw", _depth_to_space(_mlp(f_img, llm)), seg) / math.sqrt(c)
    assert torch.allclose(got.aux_logits, aux_want, atol=1e-5)


@pytest.fixture(scope="module")
def sharded_bf16(tmp_path_factory):
    """The release's form: bf16, three shards with an index."""
    model = source_model("vit300m", seed=1)
    return model, write_source(model, tmp_path_factory.mktemp("authors_sharded"), shards=3, dtype=torch.bfloat16)


def _stored_dtype(path, key):
    with safe_open(str(path), "pt") as st:
        return st.get_slice(key).get_dtype()


def test_sharded_bf16_import_keeps_weights_and_dtype(sharded_bf16, tmp_path):
    source, src = sharded_bf16
    out = import_authors_checkpoint(src, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging folder left behind
    assert _stored_dtype(out / "model.safetensors", "language_model.lm_head.weight") == "BF16"
    assert _stored_dtype(out / "mask_head.safetensors", "f_pus.net.2.weight") == "BF16"
    model = Self1eModel.from_pretrained(out, dtype=torch.bfloat16)
    got = model.state_dict()
    for key, t in source.state_dict().items():  # every base and head tensor, bit for bit
        assert torch.equal(got[key], t.to(torch.bfloat16)), key


def test_cli_import_with_dtype(sharded_bf16, tmp_path, capsys):
    _, src = sharded_bf16
    out = tmp_path / "ckpt"
    assert main(["import-authors", str(src), "--out", str(out), "--dtype", "float32"]) == 0
    assert str(out) in capsys.readouterr().out
    assert _stored_dtype(out / "model.safetensors", "multi_modal_projector.linear_1.weight") == "F32"
    predictor = Self1ePredictor.from_pretrained(out, device="cpu")
    predictor.set_image(np.zeros((30, 40, 3), dtype=np.uint8))
    assert predictor.predict("the red circle").mask.shape == (30, 40)
    assert main(["import-authors", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err


def _drop_tensor(src, key):
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = src / index["weight_map"].pop(key)
    tensors = load_file(shard)
    del tensors[key]
    save_file(tensors, shard, metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))


def _edit_config(src, edit):
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (src / "config.json").write_text(json.dumps(cfg))


def _only_pickle(src):
    for p in list(src.glob("model*.safetensors*")):
        p.unlink()
    (src / "pytorch_model.bin").write_bytes(b"not to be unpickled")


def _add_lora_tensor(src):
    key = "language_model.base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({key: torch.zeros(1)}, src / "extra.safetensors")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"][key] = "extra.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))


def _truncate(src):
    shard = src / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


BREAKERS = {
    "missing head key": (lambda s: _drop_tensor(s, "combine_decode_proj_ori.2.bias"),
                         r"combine_decode_proj_ori\.2\.bias"),
    "pickle only": (_only_pickle, r"pickle weights \['pytorch_model\.bin'\]"),
    "InternLM2 LLM": (lambda s: _edit_config(s, lambda c: c["llm_config"].update(
        architectures=["InternLM2ForCausalLM"])),
                      r"only \['Qwen2ForCausalLM'\].*not InternLM2ForCausalLM"),
    "truncated shard": (_truncate, r"model-00002-of-00003\.safetensors.*truncated"),
    "missing shard": (lambda s: (s / "model-00003-of-00003.safetensors").unlink(),
                      r"missing from .*\['model-00003-of-00003\.safetensors'\]"),
    "no config.json": (lambda s: (s / "config.json").unlink(), r"config\.json is missing"),
    "wrong architecture": (lambda s: _edit_config(s, lambda c: c.update(architectures=["LlavaNext"])),
                           r"architectures is \['LlavaNext'\], expected one of \['InternVLChatModel'"),
    "stray tensor": (_add_lora_tensor, r"neither InternVL's.*unmerged LoRA"),
    "[SEG] inside the vocabulary": (lambda s: _seg_renames_a_word(s), r"\[SEG\] / \[SEGT\] are ids \d+ / \d+ .*inside"),
    "no tokenizer files": (lambda s: _drop_tokenizer(s), r"no tokenizer files.*Pass --tokenizer DIR.*InternVL3"),
}


def _drop_tokenizer(src):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (src / name).unlink(missing_ok=True)


def _seg_renames_a_word(src):
    """A tokenizer whose "[SEG]" is an ordinary word of the vocabulary (a wrong tokenizer)."""
    _drop_tokenizer(src)
    tok = build_tokenizer()
    tok.save_pretrained(src)
    data = json.loads((src / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["[SEG]"] = vocab.pop("zero")
    (src / "tokenizer.json").write_text(json.dumps(data))


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
def test_bad_sources_fail_naming_the_problem(breaker, sharded_bf16, tmp_path):
    _, good = sharded_bf16
    src = tmp_path / "src"
    shutil.copytree(good, src)
    breaks, message = BREAKERS[breaker]
    breaks(src)
    with pytest.raises(ValueError, match=message):
        import_authors_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_refuses_a_non_empty_output_folder(sharded_bf16, tmp_path):
    _, src = sharded_bf16
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        import_authors_checkpoint(src, tmp_path / "out")


def test_tied_source_without_lm_head_gets_an_untied_copy(sharded_bf16, tmp_path):
    _, good = sharded_bf16
    src = tmp_path / "src"
    shutil.copytree(good, src)
    _drop_tensor(src, "language_model.lm_head.weight")
    with pytest.raises(ValueError, match="lack 'language_model.lm_head.weight'"):
        import_authors_checkpoint(src, tmp_path / "out")
    _edit_config(src, lambda c: c["llm_config"].update(tie_word_embeddings=True))
    model = Self1eModel.from_pretrained(import_authors_checkpoint(src, tmp_path / "out"))
    assert torch.equal(model.base.lm_head.weight, model.base.get_input_embeddings().weight)
    assert model.base.config.tie_word_embeddings is False


def _seg_batch_masks(model):
    with torch.no_grad():
        return model(seg_batch(model)).mask_logits


@pytest.mark.parametrize("extra", [(), ("<video>",), ("<video>", "<box>")])
def test_tokenizer_from_another_folder_lines_up_seg_with_its_trained_row(sharded_bf16, tmp_path, extra):
    """The release ships no tokenizer; an InternVL3 tokenizer (-hf ones carry extra tokens such as
    <video> right after the vocabulary) is passed with --tokenizer: [SEG] must encode to the row the
    authors trained as [SEG], whatever id the tokenizer gives it."""
    source, good = sharded_bf16
    src = tmp_path / "release"
    shutil.copytree(good, src)
    _drop_tokenizer(src)
    with pytest.raises(ValueError, match="--tokenizer"):
        import_authors_checkpoint(src, tmp_path / "refused")
    tok = build_tokenizer()
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in extra], special_tokens=True)
    tok.save_pretrained(tmp_path / "internvl3")
    assert main(["import-authors", str(src), "--out", str(tmp_path / "ckpt"), "--tokenizer",
                 str(tmp_path / "internvl3")]) == 0
    model = Self1eModel.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    rows = source.base.get_input_embeddings().num_embeddings
    seg, segt = (model.tokenizer.convert_tokens_to_ids(t) for t in ("[SEG]", "[SEGT]"))
    assert (seg, segt) == (rows - 2 + len(extra), rows - 1 + len(extra))
    assert model.tokenizer("[SEG]", add_special_tokens=False)["input_ids"] == [seg]
    theirs = source.base.get_input_embeddings().weight.to(torch.bfloat16)
    ours = model.base.get_input_embeddings().weight
    assert torch.equal(ours[seg], theirs[rows - 2]) and torch.equal(ours[segt], theirs[rows - 1])
    assert torch.equal(ours[: rows - 2], theirs[: rows - 2])
    head_theirs = source.base.lm_head.weight.to(torch.bfloat16)
    assert torch.equal(model.base.lm_head.weight[seg], head_theirs[rows - 2])
    for k in range(len(extra)):  # the tokenizer's own extra tokens get fresh (mean) rows
        assert torch.allclose(ours[rows - 2 + k].float(), theirs[: rows - 2].float().mean(0), atol=1e-2)
    source16 = source.to(torch.bfloat16)
    for a, b in zip(_seg_batch_masks(source16), _seg_batch_masks(model)):
        assert torch.allclose(a.float(), b.float(), atol=1e-2)
    source.float()
