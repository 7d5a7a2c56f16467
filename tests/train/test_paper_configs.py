"""The paper configs on a tree of every source of the authors' mix: `self1e data plan` finds every
dataset, and the SEG recipe's repeats scale each group's units exactly."""
import json

import pytest

from data.fixture_paper import PAPER_CONFIGS, paper_config, write_paper_tree
from self1e.cli import main
from self1e.data.datasets import load_dataset
from self1e.train.batching import image_key
from self1e.train.config import load_config


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_paper_tree(tmp_path_factory.mktemp("paper_data"))


def _plan(config, capsys):
    assert main(["data", "plan", str(config), "--json", "--processes", "8"]) == 0
    return json.loads(capsys.readouterr().out)


def test_both_paper_configs_find_every_source_and_repeat_it_as_the_authors_do(tree, tmp_path, capsys):
    paper, seg = (_plan(paper_config(name, tree, tmp_path / f"{k}.yaml"), capsys) for k, name in
                  enumerate(PAPER_CONFIGS))
    assert paper["missing"] == [] and len(paper["datasets"]) == 15 and paper["global_batch"] == 160
    cfg = load_config(tmp_path / "0.yaml")
    for row, d in zip(paper["datasets"], cfg.data):
        samples = load_dataset(d.spec)
        assert row["samples_found"] == len(samples) > 0, d.spec
        per_image = {}
        for s in samples:
            per_image.setdefault((image_key(s), s.is_vqa), []).append(s)
        assert row["units_per_epoch"] == sum(-(-len(v) // 3) for v in per_image.values()), d.spec  # K = 3
    groups = ("sem_seg", "refer_seg", "reason_seg", "vqa")
    assert list(paper["groups"]) == list(groups)
    for group, factor in zip(groups, (6, 20, 6, 1)):
        assert seg["groups"][group]["units_per_epoch"] == factor * paper["groups"][group]["units_per_epoch"]
    assert abs(sum(g["share"] for g in seg["groups"].values()) - 1) < 1e-9
    assert seg["steps_per_epoch"] == seg["units_per_epoch"] // 160


def test_a_missing_source_is_named_and_fails_the_plan(tree, tmp_path, capsys):
    config = paper_config(PAPER_CONFIGS[0], tree, tmp_path / "p.yaml")
    config.write_text(config.read_text().replace("paco_lvis:train@", "paco_lvis:val@"))
    assert main(["data", "plan", str(config)]) == 1
    out = capsys.readouterr().out
    assert "paco_lvis:val@" in out and "MISSING" in out and "1 dataset(s) missing" in out


def test_two_training_steps_on_the_paper_mix_of_fixtures(tree, tmp_path):
    """The paper config itself (its mix, caps, prompt) drives a tiny model for two CPU steps."""
    from self1e.train.loop import train

    config = paper_config(PAPER_CONFIGS[1], tree, tmp_path / "seg.yaml")
    cfg = load_config(config, ["model=tiny:tiny", "lora.enabled=false", "batch_size=2", "grad_accum=1",
                               "max_steps=2", "warmup_steps=1", "gradient_checkpointing=false", "num_workers=0",
                               "val=null", "save_every=0", "log_every=1", "bf16=false"], out=str(tmp_path / "run"))
    final = train(cfg)
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [s["step"] for s in steps] == [1, 2] and all(s["mask_loss"] > 0 for s in steps)
    saved = json.loads((final / "self1e_config.json").read_text())
    assert saved["prompt"]["system"] == "You are an helpful assistant." and saved["use_thumbnail"] is False
    subsets = json.loads((tmp_path / "run" / "data_subsets.json").read_text())
    assert [d["spec"].split(":")[0] for d in subsets["datasets"]] == ["cocostuff", "paco_lvis"]
