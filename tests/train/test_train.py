"""Training: config resolution, overfitting a handful of samples, exact resume, atomic
checkpoints and a two-process DDP run on CPU (gloo)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from self1e.train import checkpoint as ckpt
from self1e.train.config import TrainConfig, load_config
from self1e.train.loop import train
from train_testdata import losses, make_boxes, tiny_cfg


@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> Path:
    return make_boxes(tmp_path_factory.mktemp("boxes"))


# ---- config ----------------------------------------------------------------------------------
def test_config_defaults_yaml_overrides_round_trip(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 3e-4\nbatch_size: 4\nlora: {r: 16, alpha: 32}\nself1e: {mask_head: rfr}\n"
                      "data: [a.jsonl, {spec: b.jsonl, ratio: 2}]\n")
    cfg = load_config(recipe, ["batch_size=8", "lora.enabled=false", "betas=[0.8, 0.99]", "val=null"])
    assert cfg.lr == 3e-4  # YAML's "3e-4" string is read as a float
    assert cfg.batch_size == 8  # --set beats the file
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.enabled) == (16, 32, False)
    assert cfg.self1e.mask_head == "rfr" and cfg.self1e.bce_weight == 2.0  # untouched fields keep defaults
    assert [(d.spec, d.ratio) for d in cfg.data] == [("a.jsonl", 1.0), ("b.jsonl", 2.0)]
    assert cfg.betas == (0.8, 0.99) and cfg.warmup_steps == 100 and cfg.grad_clip == 1.0
    cfg.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    assert TrainConfig().lora.train_full and TrainConfig().lr == 1e-4


def test_the_prompt_format_is_a_training_setting(tmp_path):
    from self1e.model.config import AUTHORS_PROMPT

    cfg = load_config(None, ["self1e.prompt=authors"])
    assert cfg.self1e.prompt == AUTHORS_PROMPT
    recipe = tmp_path / "r.yaml"
    recipe.write_text("self1e: {prompt: {system: 'Be brief.', questions: ['Where is {x}?']}}\n")
    cfg = load_config(recipe, ["self1e.prompt.lowercase=true"])
    assert (cfg.self1e.prompt.system, cfg.self1e.prompt.questions, cfg.self1e.prompt.lowercase) == (
        "Be brief.", ("Where is {x}?",), True)
    cfg.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    with pytest.raises(ValueError, match=re.escape("unknown config key 'self1e.prompt.casing'")):
        load_config(None, ["self1e.prompt.casing=lower"])


@pytest.mark.parametrize("text, overrides, key", [
    ("lora: {rank: 4}\n", [], "lora.rank"),
    ("", ["optimiser.lr=1"], "optimiser"),
    ("self1e: {head: rfa}\n", [], "self1e.head"),
    ("data: [{spec: a.jsonl, weight: 2}]\n", [], "data[0].weight"),
])
def test_unknown_keys_are_named(tmp_path, text, overrides, key):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"unknown config key '{key}'")):
        load_config(recipe, overrides)


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="'batch_size'"):
        load_config(None, ["batch_size=two"])
    with pytest.raises(ValueError, match="'lora.enabled'"):
        load_config(None, ["lora.enabled=maybe"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["lr"])


# ---- training ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_overfits_a_handful_of_samples(boxes, tmp_path):
    from self1e.data.jsonl import read_jsonl
    from self1e.eval.evaluate import PredictorSource, evaluate
    from self1e.inference.predictor import Self1ePredictor

    cfg = tiny_cfg(boxes, tmp_path / "run", "max_steps=300", "batch_size=2", "warmup_steps=10", "log_every=20",
                   f"val={boxes}", "val_limit=null")
    final = train(cfg)
    hist = losses(tmp_path / "run")
    assert hist[300] < 0.5 * hist[20]
    result = evaluate(PredictorSource(Self1ePredictor.from_pretrained(final)), read_jsonl(boxes), progress=False)
    assert result.metrics["gIoU"] > 0.9 and result.metrics["cIoU"] > 0.9, result.metrics
    val = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val/cIoU" in x]
    assert val and val[-1]["val/cIoU"] == pytest.approx(result.metrics["cIoU"])  # the loop's own validation
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["max_steps"] == 300


@pytest.mark.parametrize("grow,part", [(0, "llm"), (1, "llm"), (1, "vit")])
def test_resume_continues_exactly(boxes, tmp_path, grow, part):
    """Also with ``add_llm_layers`` / ``add_vit_layers`` (the grown layers are rebuilt, then restored
    from the checkpoint)."""
    from self1e.cli import main

    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_cfg(boxes, straight, "max_steps=6", "save_every=2", f"add_{part}_layers={grow}"))
    # first half through the CLI (stop_at keeps the 6-step schedule), second half resumed
    common = ["--set", "model=tiny:tiny", "--set", f"data=[{boxes}]", "--set", "lora.enabled=false",
              "--set", "lr=3e-3", "--set", "warmup_steps=2", "--set", "log_every=1", "--set", "batch_size=1",
              "--set", "max_steps=6", "--set", "save_every=2", "--set", f"add_{part}_layers={grow}"]
    assert main(["train", "--out", str(split), *common, "--set", "stop_at=3"]) == 0
    assert ckpt.latest_checkpoint(split).name == "step_000003"
    assert main(["train", "--out", str(split), *common, "--resume"]) == 0
    a, b = losses(straight), losses(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "final" / "model.safetensors"), load_file(split / "final" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6
    if grow:  # the exported model has the extra layer, and training moved its zero projections
        from self1e.model import load_model

        section, key, moved = {"llm": ("text_config", "language_model.model.layers.", "self_attn.o_proj.weight"),
                               "vit": ("vision_config", "vision_tower.encoder.layer.", "mlp.fc2.weight")}[part]
        layers = json.loads((split / "final" / "config.json").read_text())[section]["num_hidden_layers"]
        last = max(int(k.split(key)[1].split(".")[0]) for k in wb if key in k)  # (the checkpoint's own keys)
        assert layers == last + 1 == getattr(load_model("tiny:tiny").base.config, section).num_hidden_layers + 1
        assert float(wb[f"{key}{last}.{moved}"].abs().max()) > 0


def test_crash_mid_save_keeps_previous_checkpoint(boxes, tmp_path, monkeypatch):
    from self1e.model import Self1eModel

    real_save, calls = ckpt.save_file, []

    def flaky(tensors, path, *args, **kwargs):  # the second checkpoint dies after its model folder is written
        if Path(path).name == ckpt.TRAINABLE:
            calls.append(1)
            if len(calls) == 2:
                raise OSError("disk full (simulated)")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", flaky)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="simulated"):
        train(tiny_cfg(boxes, out, "max_steps=4", "save_every=2"))
    latest = ckpt.latest_checkpoint(out)
    assert latest.name == "step_000002"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_000002"]
    Self1eModel.from_pretrained(latest / "model")  # loadable
    monkeypatch.setattr(ckpt, "save_file", real_save)
    train(tiny_cfg(boxes, out, "max_steps=4", "save_every=2"), resume=True)
    assert ckpt.latest_checkpoint(out).name == "step_000004"
    assert sorted(losses(out)) == [1, 2, 3, 4]


def test_time_budget_stops_cleanly_and_fresh_runs_do_not_overwrite(boxes, tmp_path):
    from self1e.model import Self1eModel

    out = tmp_path / "budget"
    final = train(tiny_cfg(boxes, out, "max_steps=50", "max_minutes=0"))  # budget spent after one step
    assert sorted(losses(out)) == [1]
    assert ckpt.latest_checkpoint(out).name == "step_000001"
    Self1eModel.from_pretrained(final)
    with pytest.raises(ValueError, match="resume"):
        train(tiny_cfg(boxes, out, "max_steps=50"))


def test_lr_schedule_warms_up_then_decays_linearly():
    from self1e.train.setup import lr_lambda

    f = lr_lambda(warmup=4, total=10)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [round(f(s), 6) for s in range(4, 10)] == [1.0, round(5 / 6, 6), round(4 / 6, 6), 0.5, round(2 / 6, 6),
                                                     round(1 / 6, 6)]
    assert lr_lambda(0, 5)(0) == 1.0


def test_lora_trains_adapters_and_exports_a_plain_checkpoint(boxes, tmp_path):
    from self1e.model import Self1eModel

    out = tmp_path / "lora"
    final = train(tiny_cfg(boxes, out, "lora.enabled=true", "lora.r=4", "lora.alpha=8", "max_steps=2",
                           "save_every=1"))
    trainable = ckpt.load_file(out / "checkpoints" / "step_000002" / ckpt.TRAINABLE)
    adapted = {k.split(".lora_A.")[0].rsplit(".", 1)[1] for k in trainable if ".lora_A." in k}
    assert sum(".lora_A." in k for k in trainable) == 2 * 7 + 2 * 6  # 2 LLM layers x 7, 2 ViT layers x 6
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                       "projection_layer", "fc1", "fc2"}
    assert any(k.startswith("head.") for k in trainable) and "base.lm_head.weight" in trainable
    assert not any("vision_tower.encoder.layer.0.attention.q_proj.base_layer" in k for k in trainable)
    model = Self1eModel.from_pretrained(final)  # strict load: no lora_* or base_layer keys left
    assert not any("lora" in n for n, _ in model.named_parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(boxes, tmp_path):
    script = tmp_path / "run.py"
    script.write_text("import sys\nfrom self1e.cli import main\nsys.exit(main())\n")
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())]
    args = ["train", "--out", str(out), "--set", "model=tiny:tiny", "--set", f"data=[{boxes}]",
            "--set", "lora.enabled=false", "--set", "max_steps=3", "--set", "batch_size=1",
            "--set", "log_every=1", "--set", "save_every=2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(launcher + [str(script)] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks: leave no orphan behind
        log, _ = proc.communicate()
        pytest.fail(f"the two-process run did not finish in 240 s:\n{log[-3000:]}")
    assert proc.returncode == 0, log[-3000:]
    assert sorted(losses(out)) == [1, 2, 3]  # one metrics line per step: only rank 0 writes
    dirs = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert dirs == ["latest", "step_000002", "step_000003"]  # each written once, no temp leftovers
    for step in dirs[1:]:
        d = out / "checkpoints" / step
        assert (d / "rng_rank0.json").is_file() and (d / "rng_rank1.json").is_file()  # both ranks took part
        assert not list(d.rglob("*.pt")) and not list(d.rglob("*.bin"))  # no pickle anywhere
        assert json.loads((d / ckpt.STATE).read_text())["world_size"] == 2
    assert (out / "final" / "model.safetensors").is_file()


def test_data_kinds_filter_keeps_only_listed_kinds():
    from self1e.data.datasets import load_dataset

    cfg = load_config(overrides=["data=[{spec: 'refshapes:train:60:3', kinds: [none, multi]}, 'refshapes:train:20:4']"])
    assert cfg.data[0].kinds == ("none", "multi") and cfg.data[1].kinds is None
    samples = load_dataset(cfg.data[0].spec)
    kept = load_dataset(cfg.data[0].spec, kinds=cfg.data[0].kinds)
    assert kept and {s.kind for s in kept} == {"none", "multi"}
    assert len(kept) == sum(s.kind in ("none", "multi") for s in samples) < len(samples)
    assert len(load_dataset(cfg.data[0].spec, kinds=None)) == len(samples)
    with pytest.raises(ValueError, match="no sample of kinds"):
        load_dataset(cfg.data[0].spec, kinds=("vqa",))


def test_two_steps_on_a_repeat_mix_record_the_seeded_subsets(tmp_path):
    """Repeat mixing, max_images and ignore_as_background through a real (tiny) training run."""
    data = ("data=[{spec: 'refshapes:train:40:3', group: refer_seg, max_images: 4},"
            " {spec: 'refshapes-vqa:train:12:4', group: vqa}]")
    mix = ["mix.mode=repeat", "mix.groups=[refer_seg, vqa]", "mix.repeats=[2, 1]"]

    def run(out, seed):
        base = ["model=tiny:tiny", data, *mix, "lora.enabled=false", "max_steps=2", "batch_size=2",
                "warmup_steps=1", "save_every=0", "log_every=1", f"seed={seed}"]
        train(load_config(None, base, out=str(out)))
        return json.loads((out / "data_subsets.json").read_text())

    a, b, c = run(tmp_path / "a", 0), run(tmp_path / "b", 0), run(tmp_path / "c", 1)
    assert a == b and a["datasets"][0]["sample_ids"] != c["datasets"][0]["sample_ids"]
    assert len(a["datasets"]) == 1 and a["datasets"][0]["max_images"] == 4
    assert (tmp_path / "a" / "final" / "model.safetensors").is_file()


def test_ignore_as_background_drops_ignore_regions(tmp_path):
    from self1e.data.sample import Sample
    from self1e.train.setup import load_source

    sample = Sample(id="x", image="im.png", text="the dog", mask=None, ignore=lambda: None)
    on = load_config(None, ["data=[{spec: 'x.jsonl', ignore_as_background: true}]"])
    assert load_source(on, 0, [sample]).samples[0].ignore is None
    off = load_config(None, ["data=[{spec: 'x.jsonl'}]"])
    assert load_source(off, 0, [sample]).samples[0].ignore is not None
