"""Bad checkpoints and configs: ill-typed self1e_config.json / config.json fields named with their file,
a self1e checkpoint whose tokenizer lost [SEG], pickle weights refused without being opened, a training
state that is pickle-free (and refused cleanly when it is an old pickle, damaged or truncated), and
non-finite weights that would give silently empty masks."""
from __future__ import annotations

import json
import math
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from self1e.model import Self1eModel, load_model
from self1e.model.tiny import build_tiny_base, build_tokenizer
from self1e.model.weights import load_tokenizer
from self1e.train import checkpoint as ckpt
from self1e.train.config import load_config
from self1e.train.loop import train
from train_testdata import make_boxes, tiny_cfg


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny self1e checkpoint, free to damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


class Payload:
    """A pickle that creates ``marker`` when it is unpickled: proof that a pickle was (not) opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


# ---- self1e_config.json ------------------------------------------------------------------------------

BAD_SETTINGS = [
    ("max_tiles", "4", "SELF1E setting 'max_tiles': expected a whole number, got '4'"),
    ("max_tiles", 4.0, "SELF1E setting 'max_tiles': expected a whole number, got 4.0"),
    ("max_tiles", True, "SELF1E setting 'max_tiles': expected a whole number, got True"),
    ("max_tiles", 0, "SELF1E setting 'max_tiles' must be between 1 and 64, got 0"),
    ("max_tiles", 10**9, "SELF1E setting 'max_tiles' must be between 1 and 64, got 1000000000"),
    ("mask_head", ["rfa"], "SELF1E setting 'mask_head': expected a string, got ['rfa']"),
    ("mask_head", "sam", "SELF1E setting 'mask_head' must be one of"),
    ("seg_attention", None, "SELF1E setting 'seg_attention': expected a string, got None"),
    ("ce_weight", "1.0", "SELF1E setting 'ce_weight': expected a number, got '1.0'"),
    ("bce_weight", -1, "SELF1E setting 'bce_weight' must be a finite number >= 0, got -1.0"),
    ("dice_weight", {"a": 1}, "SELF1E setting 'dice_weight': expected a number"),
    ("causal_lm_loss", "yes", "SELF1E setting 'causal_lm_loss': expected true or false, got 'yes'"),
    ("use_thumbnail", 1, "SELF1E setting 'use_thumbnail': expected true or false, got 1"),
    ("loss_short_side", 0, "SELF1E setting 'loss_short_side' must be between 1 and 4096, got 0"),
    ("loss_short_side", "128", "SELF1E setting 'loss_short_side': expected a whole number, got '128'"),
    ("seg_token", 5, "SELF1E setting 'seg_token': expected a string, got 5"),
    ("seg_token", " ", "SELF1E setting 'seg_token' must not be empty"),
]


@pytest.mark.parametrize("field, value, says", BAD_SETTINGS)
def test_ill_typed_settings_name_the_file_and_field(model_dir, field, value, says):
    path = model_dir / "self1e_config.json"
    _edit_json(path, lambda d: d.update({field: value}))
    with pytest.raises(ValueError) as e:
        Self1eModel.from_pretrained(model_dir)
    assert str(e.value).startswith(f"{path}: {says}"), str(e.value)


@pytest.mark.parametrize("text, says", [
    ("[]", "expected a mapping of SELF1E settings, got list"),
    ('"rfa"', "expected a mapping of SELF1E settings, got str"),
    ("{not json", "not valid JSON"),
    ('{"mask_hed": "rfa"}', "unknown Self1eConfig fields: ['mask_hed']"),
    ("\xff\xfe", "not UTF-8 text"),
])
def test_a_malformed_settings_file_names_the_file(model_dir, text, says):
    path = model_dir / "self1e_config.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError) as e:
        load_model(model_dir)
    assert str(e.value).startswith(f"{path}: {says}"), str(e.value)


def test_ill_typed_settings_fail_a_training_config_and_the_cli(model_dir, cli, picture, tmp_path):
    path = model_dir / "self1e_config.json"
    _edit_json(path, lambda d: d.update(max_tiles="4"))
    with pytest.raises(ValueError, match=f"^{path}: SELF1E setting 'max_tiles'"):
        load_config(None, [f"model={model_dir}"])
    err = cli.error("segment", "--model", model_dir, "--image", picture(), "--text", "x", "--out", tmp_path / "m.png")
    assert err.endswith(f"{path}: SELF1E setting 'max_tiles': expected a whole number, got '4'")


# ---- config.json -------------------------------------------------------------------------------------

def _set(sub: str | None, field: str, value):
    def edit(d):
        (d[sub] if sub else d)[field] = value
    return edit


BAD_CONFIGS = {
    "model_type": (_set(None, "model_type", "llava"),
                   "field 'model_type' is 'llava'; supported backbones: internvl, qwen2_5_vl, qwen3_vl"),
    "model_type_number": (_set(None, "model_type", 5), "field 'model_type' is 5"),
    "text_config_string": (_set(None, "text_config", "abc"), "field 'text_config': expected an object"),
    "vision_config_list": (_set(None, "vision_config", []), "field 'vision_config': expected an object"),
    "hidden_size_string": (_set("text_config", "hidden_size", "32"), "field 'text_config.hidden_size'"),
    "hidden_size_negative": (_set("text_config", "hidden_size", -3),
                             "field 'text_config.hidden_size' must be a positive whole number, got -3"),
    "layers_zero": (_set("text_config", "num_hidden_layers", 0), "`num_hidden_layers` (0) must be equal to the number"),
    "heads_zero": (_set("text_config", "num_attention_heads", 0),
                   "field 'text_config.num_attention_heads' must be a positive whole number, got 0"),
    "layers_float": (_set("vision_config", "num_hidden_layers", 2.5), "field 'vision_config.num_hidden_layers'"),
    "vocab_zero": (_set("text_config", "vocab_size", 0), "field 'text_config.vocab_size' must be a positive"),
    "patch_size_zero": (_set("vision_config", "patch_size", [0, 0]), "field 'vision_config.patch_size' must be"),
    "image_size_negative": (_set("vision_config", "image_size", [-56, 56]), "field 'vision_config.image_size'"),
    "image_token_string": (_set(None, "image_token_id", "x"), "field 'image_token_id'"),
    "image_token_out_of_range": (_set(None, "image_token_id", 10**6),
                                 "field 'image_token_id' must be a token id below text_config.vocab_size"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_ill_typed_config_json_names_the_file_and_field(model_dir, name):
    edit, says = BAD_CONFIGS[name]
    path = model_dir / "config.json"
    _edit_json(path, edit)
    with pytest.raises(ValueError) as e:
        Self1eModel.from_pretrained(model_dir)
    assert str(e.value).startswith(f"{path}: ") and says in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, says", [("[1, 2]", "expected a JSON object of config fields, got list"),
                                        ("{", "not valid JSON"), ("", "not valid JSON")])
def test_an_unreadable_config_json_names_the_file(model_dir, text, says):
    (model_dir / "config.json").write_text(text)
    with pytest.raises(ValueError, match=f"^{model_dir / 'config.json'}: {says}"):
        Self1eModel.from_pretrained(model_dir)


# ---- the tokenizer of a self1e checkpoint must hold [SEG] -------------------------------------------

def test_a_self1e_checkpoint_whose_tokenizer_lacks_seg_is_refused(model_dir):
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model_dir / f).unlink(missing_ok=True)
    build_tokenizer().save_pretrained(model_dir)  # the base vocabulary, without [SEG]
    with pytest.raises(ValueError, match=r"is a self1e checkpoint, but its tokenizer has no '\[SEG\]' token"):
        Self1eModel.from_pretrained(model_dir)


def test_the_seg_token_of_the_settings_is_the_one_required(model_dir):
    _edit_json(model_dir / "self1e_config.json", lambda d: d.update(seg_token="<seg>"))
    with pytest.raises(ValueError, match="its tokenizer has no '<seg>' token"):
        load_model(model_dir)


def test_a_plain_internvl_folder_still_gets_seg(plain_internvl_dir):
    assert "[SEG]" not in load_tokenizer(plain_internvl_dir).get_vocab()
    with pytest.raises(ValueError, match="has no"):
        load_tokenizer(plain_internvl_dir, require_seg_token=True)
    model = Self1eModel.from_pretrained(plain_internvl_dir)
    assert model.tokenizer.convert_tokens_to_ids("[SEG]") == model.seg_token_id


# ---- pickle weights are never opened -----------------------------------------------------------------

@pytest.fixture
def pickle_only_dir(plain_internvl_dir, tmp_path) -> Path:
    d = Path(shutil.copytree(plain_internvl_dir, tmp_path / "pickled"))
    (d / "model.safetensors").unlink()
    return d


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "model.ckpt", "state.pkl",
                                  "pytorch_model-00001-of-00002.bin"])
def test_pickle_only_weights_are_refused_without_being_opened(pickle_only_dir, tmp_path, name):
    marker = tmp_path / "payload_ran"
    (pickle_only_dir / name).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError) as e:
        Self1eModel.from_pretrained(pickle_only_dir)
    assert str(e.value).startswith(f"{pickle_only_dir} holds its weights only as pickle files ({name})")
    assert "Convert them to safetensors" in str(e.value)
    assert not marker.exists()


def test_a_self1e_folder_with_only_pickle_weights_is_refused(model_dir, tmp_path):
    (model_dir / "model.safetensors").unlink()  # mask_head.safetensors stays: it is not the base model
    torch.save({"x": torch.zeros(1)}, model_dir / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds its weights only as pickle files \(pytorch_model.bin\)"):
        Self1eModel.from_pretrained(model_dir)


def test_a_pickle_next_to_safetensors_is_ignored(model_dir, tmp_path):
    marker = tmp_path / "payload_ran"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    Self1eModel.from_pretrained(model_dir)
    assert not marker.exists()


def test_a_folder_without_weights_is_named(pickle_only_dir):
    with pytest.raises(ValueError, match=r"no model.safetensors \(the weights must be in safetensors files\)"):
        Self1eModel.from_pretrained(pickle_only_dir)


# ---- the training state: pickle-free, refused cleanly when damaged -----------------------------------

@pytest.fixture(scope="module")
def run_at_step_2(tmp_path_factory):
    """(data, run folder) of a 4-step tiny run stopped at its step-2 checkpoint."""
    root = tmp_path_factory.mktemp("state")
    data = make_boxes(root / "boxes")
    train(tiny_cfg(data, root / "run", "max_steps=4", "save_every=2", "stop_at=2"))
    return data, root / "run"


@pytest.fixture
def damaged(run_at_step_2, tmp_path):
    """``damaged(edit)``: a copy of the run, ``edit(step_000002 folder)`` applied, resumed; returns
    the ValueError's message."""
    data, run = run_at_step_2

    def resume(edit) -> str:
        out = Path(shutil.copytree(run, tmp_path / "run"))
        edit(out / "checkpoints" / "step_000002")
        with pytest.raises(ValueError) as e:
            train(tiny_cfg(data, out, "max_steps=4", "save_every=2"), resume=True)
        assert not (out / "final").exists() or (out / "final").stat().st_mtime <= (run / "final").stat().st_mtime
        return str(e.value)

    return resume


def test_a_checkpoint_holds_no_pickle(run_at_step_2):
    d = run_at_step_2[1] / "checkpoints" / "step_000002"
    assert sorted(p.name for p in d.iterdir()) == [
        "model", "optimizer.json", "optimizer.safetensors", "rng_rank0.json", "rng_rank0.safetensors",
        "scheduler.json", "train_config.yaml", "trainable.safetensors", "trainer_state.json"]
    assert not [p for p in d.rglob("*") if p.suffix in (".pt", ".bin", ".pkl", ".pth")]


def test_an_old_pickle_state_is_refused_and_never_opened(damaged, tmp_path):
    marker = tmp_path / "payload_ran"

    def to_legacy(d: Path) -> None:
        for name in ("optimizer.json", "optimizer.safetensors", "scheduler.json", "rng_rank0.json",
                     "rng_rank0.safetensors"):
            (d / name).unlink()
        for name in ("optimizer.pt", "scheduler.pt", "rng_rank0.pt"):
            (d / name).write_bytes(pickle.dumps(Payload(marker)))

    msg = damaged(to_legacy)
    assert "keeps its training state in pickle files (optimizer.pt, scheduler.pt, rng_rank0.pt)" in msg
    assert "pickles are never loaded" in msg and "step_000002" in msg
    assert not marker.exists()


def _truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _unknown_tensor(state: dict) -> None:
    state["state"]["__items__"][0][1]["exp_avg"] = {"__tensor__": "999"}


DAMAGE = {
    "optimizer_tensors_truncated": (lambda d: _truncate(d / "optimizer.safetensors"),
                                    "cannot read {d}/optimizer.safetensors"),
    "optimizer_tensors_missing": (lambda d: (d / "optimizer.safetensors").unlink(),
                                  "cannot read {d}/optimizer.safetensors"),
    "optimizer_json_garbage": (lambda d: (d / "optimizer.json").write_text("{oops"),
                               "{d}/optimizer.json: not valid JSON"),
    "optimizer_json_a_list": (lambda d: (d / "optimizer.json").write_text("[]"),
                              "{d}/optimizer.json: expected an object"),
    "optimizer_unknown_tensor": (lambda d: _edit_json(d / "optimizer.json", _unknown_tensor),
                                 "{d}/optimizer.json names a tensor '999'"),
    "optimizer_other_model": (lambda d: _edit_json(d / "optimizer.json", lambda j: j["param_groups"].pop()),
                              "{d}/optimizer.json does not fit this run's optimizer"),
    "scheduler_missing": (lambda d: (d / "scheduler.json").unlink(), "cannot read {d}/scheduler.json"),
    "scheduler_a_number": (lambda d: (d / "scheduler.json").write_text("3"), "{d}/scheduler.json: expected an object"),
    "rng_truncated": (lambda d: _truncate(d / "rng_rank0.safetensors"), "cannot read {d}/rng_rank0.safetensors"),
    "rng_json_missing": (lambda d: (d / "rng_rank0.json").unlink(), "cannot read {d}/rng_rank0.json"),
    "state_step_string": (lambda d: _edit_json(d / "trainer_state.json", lambda j: j.update(step="2")),
                          "{d}/trainer_state.json: expected an object with a whole-number 'step'"),
    "state_garbage": (lambda d: (d / "trainer_state.json").write_text("{"), "cannot read {d}/trainer_state.json"),
    "trainable_truncated": (lambda d: _truncate(d / ckpt.TRAINABLE, 100), "cannot read {d}/trainable.safetensors"),
    "trainable_nan": (lambda d: save_file({k: v.fill_(math.nan) for k, v in ckpt.load_file(d / ckpt.TRAINABLE).items()},
                                          d / ckpt.TRAINABLE), "{d}/trainable.safetensors holds NaN or inf values"),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_a_damaged_training_state_names_its_file(damaged, tmp_path, name):
    edit, says = DAMAGE[name]
    msg = damaged(edit)
    assert says.format(d=tmp_path / "run" / "checkpoints" / "step_000002") in msg, msg


def _same(a, b) -> bool:
    """Equal trees: same types, tensors equal in dtype, shape and bits, floats equal by repr (NaN too)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


TREES = {
    "plain": {"a": 1, "b": [1.5, None, True, "s"], "c": (1, (2, 3.25)), "d": {}},
    "int_keys": {0: "zero", 7: {"x": [1]}, "k": 2},
    "tag_like_keys": {"__tensor__": 1, "__tuple__": [2], "__items__": 3},
    "floats": [math.nan, math.inf, -math.inf, -0.0, 1e-310, 0.1, 2**60 + 0.5],
    "big_ints": [2**63 - 1, -(2**63), 0, 4294967295],
    "tensors": {"f64": torch.arange(5, dtype=torch.float64) / 3, "empty": torch.zeros(0, 3),
                "scalar": torch.tensor(3.0), "bool": torch.tensor([True, False]),
                "u8": torch.randint(0, 255, (7,), dtype=torch.uint8),
                "bf16": torch.randn(2, 2).to(torch.bfloat16), "in_tuple": (torch.ones(2, dtype=torch.int64),)},
}


@pytest.mark.parametrize("name", TREES)
def test_state_trees_round_trip_exactly(tmp_path, name):
    ckpt.save_state_tree(tmp_path, "s", TREES[name])
    assert (tmp_path / "s.safetensors").is_file() == (name == "tensors")
    assert _same(ckpt.load_state_tree(tmp_path, "s"), TREES[name])


def test_an_unsupported_object_is_not_pickled(tmp_path):
    with pytest.raises(TypeError, match="cannot save a object in the training state s"):
        ckpt.save_state_tree(tmp_path, "s", {"x": object()})
    assert not (tmp_path / "s.json").exists()


def test_optimizer_and_rng_state_resume_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:]}], lr=1e-2,
                            betas=(0.9, 0.95))

    def step(o, ps):
        o.zero_grad()
        sum((p ** 2).sum() for p in ps).backward()
        o.step()

    for _ in range(3):
        step(opt, params)
    ckpt.save_state_tree(tmp_path, "opt", opt.state_dict())
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = torch.optim.AdamW([{"params": copies[:1], "weight_decay": 0.1}, {"params": copies[1:]}], lr=1e-2)
    opt2.load_state_dict(ckpt.load_state_tree(tmp_path, "opt"))
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95)
    for _ in range(3):
        step(opt, params)
        step(opt2, copies)
    assert all(torch.equal(a, b) for a, b in zip(params, copies))

    ckpt.save_state_tree(tmp_path, "rng", ckpt.rng_state())
    first = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.set_rng_state(ckpt.load_state_tree(tmp_path, "rng"))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


# ---- non-finite weights never give silently empty masks ----------------------------------------------

@pytest.fixture(scope="module", params=["nan", "inf"])
def broken_predictor(request):
    from self1e.inference import Self1ePredictor

    base, tok = build_tiny_base("tiny", seed=3)
    model = Self1eModel.from_base(base, tok)
    with torch.no_grad():
        next(model.head.parameters()).fill_(float(request.param))
    predictor = Self1ePredictor(model)
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    return predictor


CALLS = {
    "predict": lambda p: p.predict("the red circle"),
    "predict_batch": lambda p: p.predict_batch(["a", "the red circle"]),
    "predict_torch": lambda p: p.predict_torch(["the red circle"]),
    "predict_torch_grid": lambda p: p.predict_torch(["the red circle"], original_size=False),
    "predict_many": lambda p: p.predict_many([np.zeros((8, 8, 3), np.uint8)], ["the red circle"]),
    "predict_objects": lambda p: p.predict_objects("the red circle and the blue star",
                                                   ["the red circle", "the blue star"]),
}


@pytest.mark.parametrize("call", CALLS)
def test_non_finite_mask_logits_are_an_error(broken_predictor, call):
    with pytest.raises(ValueError, match=r"^the model produced non-finite mask logits \(NaN or inf\).*check its "
                                         "weights"):
        CALLS[call](broken_predictor)


def test_non_finite_weights_are_one_cli_line(cli, picture, tmp_path):
    base, tok = build_tiny_base("tiny", seed=3)
    model = Self1eModel.from_base(base, tok)
    with torch.no_grad():
        next(model.head.parameters()).fill_(math.nan)
    model.save_pretrained(tmp_path / "nan_model")
    err = cli.error("segment", "--model", tmp_path / "nan_model", "--image", picture(), "--text", "x",
                    "--out", tmp_path / "m.png")
    assert "non-finite mask logits" in err and not (tmp_path / "m.png").exists()
