"""Training that goes wrong: non-finite settings refused up front, a diverging run stopped at the step
where its loss (or gradient, or weights) stops being finite without writing NaN weights anywhere,
resuming when OUT/checkpoints/latest is gone (the newest complete checkpoint, or a refusal), a
truncated weights file named, and kill -9 during a step and during a save, resumed bit for bit."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from self1e.model import Self1eModel
from self1e.train import checkpoint as ckpt
from self1e.train.config import load_config
from self1e.train.loop import train
from train_testdata import losses, make_boxes, tiny_cfg


@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> Path:
    return make_boxes(tmp_path_factory.mktemp("boxes"))


def cli_args(data: Path, out: Path, *overrides: str) -> list[str]:
    """`self1e train` arguments of :func:`tiny_cfg`'s run."""
    sets = ["model=tiny:tiny", f"data=[{data}]", "lora.enabled=false", "lr=3e-3", "warmup_steps=2", "log_every=1",
            "save_every=0", "batch_size=1", *overrides]
    return ["train", "--out", str(out), *[x for s in sets for x in ("--set", s)]]


def assert_same_weights(a: Path, b: Path) -> None:
    """The two model folders hold the same tensors, bit for bit."""
    for name in ("model.safetensors", "mask_head.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert sorted(wa) == sorted(wb)
        different = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert not different, (name, different[:5])


def all_finite(folder: Path) -> bool:
    return all(bool(torch.isfinite(v).all()) for f in folder.rglob("*.safetensors")
               for v in load_file(f).values() if v.is_floating_point())


# ---- non-finite settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("item, key", [
    ("lr=inf", "lr"), ("lr=.inf", "lr"), ("lr=-inf", "lr"), ("lr=nan", "lr"), ("lr=1e400", "lr"),
    ("epochs=inf", "epochs"), ("weight_decay=nan", "weight_decay"), ("grad_clip=inf", "grad_clip"),
    ("max_minutes=.inf", "max_minutes"), ("betas=[0.9, .nan]", "betas"),
])
def test_non_finite_settings_are_refused(item, key):
    with pytest.raises(ValueError, match=rf"^config key '{key}' must be a finite number, got "):
        load_config(None, [item])


@pytest.mark.parametrize("item, says", [
    ("betas=[0.9, 1.0]", "config key 'betas' must be two numbers in [0, 1), got [0.9, 1.0]"),
    ("betas=[-0.1, 0.9]", "config key 'betas' must be two numbers in [0, 1), got [-0.1, 0.9]"),
    ("data=[{spec: a.jsonl, ratio: .inf}]", "config key 'data' (a.jsonl): ratio must be a finite number > 0, got inf"),
    ("data=[{spec: a.jsonl, ratio: 0}]", "config key 'data' (a.jsonl): ratio must be a finite number > 0, got 0.0"),
    ("lora.dropout=1.5", "config key 'lora.dropout' must be in [0, 1), got 1.5"),
    ("lora.r=0", "config keys 'lora.r' and 'lora.alpha' must be >= 1, got 0 and 256"),
    ("self1e.ce_weight=.nan", "SELF1E setting 'ce_weight' must be a finite number >= 0, got nan"),
    ("self1e.max_tiles=1000", "SELF1E setting 'max_tiles' must be between 1 and 64, got 1000"),
    ("max_minutes=-1", "config key 'max_minutes' must be >= 0 or null, got -1.0"),
    ("stop_at=0", "config key 'stop_at' must be >= 1 or null, got 0"),
])
def test_out_of_range_settings_are_refused(item, says):
    with pytest.raises(ValueError) as e:
        load_config(None, [item])
    assert str(e.value) == says


def test_lr_inf_never_starts_on_the_cli(cli, boxes, tmp_path):
    err = cli.error(*cli_args(boxes, tmp_path / "run", "lr=inf", "max_steps=3"))
    assert err.endswith("config key 'lr' must be a finite number, got inf")
    assert not (tmp_path / "run").exists()


# ---- a diverging run stops at its step and writes no NaN weights -------------------------------------

def error_after_training_started(cli, *argv) -> str:
    """The error line of a `self1e train` that failed mid-run: exit 2, the error as the last line of
    stderr, and before it only the progress bar's redraws (no traceback)."""
    rc, _, err = cli.run(*argv)
    assert rc == 2, err
    assert err[-1].startswith("self1e train: error: "), err
    assert all(line.startswith("train:") for line in err[:-1] if line.strip()), err
    return err[-1]


def test_a_huge_lr_stops_at_the_first_nan_loss(cli, boxes, tmp_path):
    out = tmp_path / "run"
    err = error_after_training_started(cli, *cli_args(boxes, out, "lr=1e30", "warmup_steps=0", "max_steps=6",
                                                      "save_every=1"))
    assert "step 2 of 6: the loss is nan (not finite)" in err
    assert f"without writing a final model (last checkpoint: {out / 'checkpoints' / 'step_000001'})" in err
    assert not (out / "final").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_000001"]
    assert all_finite(out / "checkpoints")
    assert sorted(losses(out)) == [1]


@pytest.fixture
def nan_at_call(monkeypatch):
    """``nan_at_call(k)``: the k-th forward pass of the run (1-based) returns a NaN loss."""
    forward, calls = Self1eModel.forward, []

    def arm(k: int) -> None:
        def patched(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            calls.append(1)
            if len(calls) == k and out.loss is not None:
                out.loss = out.loss * math.nan
            return out

        monkeypatch.setattr(Self1eModel, "forward", patched)

    return arm


@pytest.mark.parametrize("bad_step, save_every, kept", [
    (1, 2, []), (3, 2, ["step_000002"]), (5, 1, ["step_000003", "step_000004"]), (6, 3, ["step_000003"])])
def test_a_nan_loss_stops_before_backward_and_names_the_step(boxes, tmp_path, nan_at_call, bad_step, save_every, kept):
    nan_at_call(bad_step)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as e:
        train(tiny_cfg(boxes, out, "max_steps=6", f"save_every={save_every}"))
    assert str(e.value).startswith(f"step {bad_step} of 6: the loss is nan (not finite)")
    assert not (out / "final").exists()
    found = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name != "latest") if kept else []
    assert found == kept
    assert not kept or all_finite(out / "checkpoints")
    assert (sorted(losses(out)) if bad_step > 1 else not (out / "metrics.jsonl").exists()) == (
        list(range(1, bad_step)) if bad_step > 1 else True)


def test_nan_weights_after_a_finite_loss_are_never_saved(boxes, tmp_path, monkeypatch):
    step = torch.optim.AdamW.step
    calls = []

    def poisoned(self, *args, **kwargs):  # the 4th (last) update leaves NaN in the weights
        result = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(math.nan)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^step 4: the trained weights hold NaN or inf values \(the run diverged\); "
                                         r"not writing the checkpoint"):
        train(tiny_cfg(boxes, out, "max_steps=4", "save_every=2"))
    assert ckpt.latest_checkpoint(out).name == "step_000002" and not (out / "final").exists()
    assert all_finite(out / "checkpoints")


def test_a_non_finite_gradient_norm_stops_before_the_update(boxes, tmp_path, monkeypatch):
    from accelerate import Accelerator

    clip, calls = Accelerator.clip_grad_norm_, []

    def exploding(self, *args, **kwargs):
        norm = clip(self, *args, **kwargs)
        calls.append(1)
        return torch.tensor(math.inf) if len(calls) == 2 else norm

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", exploding)
    with pytest.raises(ValueError, match=r"^step 2 of 3: the gradient norm is inf \(not finite\)"):
        train(tiny_cfg(boxes, tmp_path / "run", "max_steps=3", "save_every=1"))
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step_000001"


# ---- resuming without OUT/checkpoints/latest ---------------------------------------------------------

@pytest.fixture(scope="module")
def straight(boxes, tmp_path_factory) -> Path:
    """An uninterrupted 6-step run (checkpoints every 2 steps); its final model is the reference."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_cfg(boxes, out, "max_steps=6", "save_every=2"))
    return out


@pytest.fixture(scope="module")
def stopped_at_4(boxes, tmp_path_factory) -> Path:
    """The same run stopped at step 4, with its checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    train(tiny_cfg(boxes, out, "max_steps=6", "save_every=2", "stop_at=4", "keep_checkpoints=3"))
    return out


@pytest.fixture
def interrupted(stopped_at_4, tmp_path) -> Path:
    return Path(shutil.copytree(stopped_at_4, tmp_path / "run"))


def resume(boxes, out: Path) -> Path:
    return train(tiny_cfg(boxes, out, "max_steps=6", "save_every=2", "keep_checkpoints=3"), resume=True)


def test_resume_is_exact_bit_for_bit(boxes, straight, interrupted):
    assert_same_weights(resume(boxes, interrupted), straight / "final")
    a, b = load_file(straight / "checkpoints" / "step_000006" / ckpt.TRAINABLE), \
        load_file(interrupted / "checkpoints" / "step_000006" / ckpt.TRAINABLE)
    assert all(torch.equal(a[k], b[k]) for k in a) and sorted(a) == sorted(b)
    assert losses(interrupted) == losses(straight)


@pytest.mark.parametrize("damage, resumed_from", [
    ("none", 4),  # latest gone: the newest complete checkpoint
    ("no_trainable", 2), ("no_state", 2), ("no_optimizer", 2), ("no_scheduler", 2), ("no_rng", 2),
])
def test_a_missing_latest_resumes_from_the_newest_complete_checkpoint(boxes, straight, interrupted, caplog, damage,
                                                                    resumed_from):
    root = interrupted / "checkpoints"
    (root / "latest").unlink()
    victim = root / "step_000004"
    files = {"no_trainable": [ckpt.TRAINABLE], "no_state": [ckpt.STATE],
             "no_optimizer": ["optimizer.json", "optimizer.safetensors"], "no_scheduler": ["scheduler.json"],
             "no_rng": ["rng_rank0.json"]}.get(damage, [])
    for name in files:
        (victim / name).unlink()
    with caplog.at_level("INFO"):
        final = resume(boxes, interrupted)
    assert f"taking the newest complete checkpoint, step_{resumed_from:06d}" in caplog.text
    assert f"resumed from {root / f'step_{resumed_from:06d}'} at step {resumed_from}" in caplog.text
    assert_same_weights(final, straight / "final")


def test_only_incomplete_checkpoints_and_no_latest_is_a_refusal(boxes, interrupted):
    root = interrupted / "checkpoints"
    (root / "latest").unlink()
    for step in ("step_000002", "step_000004"):
        (root / step / ckpt.TRAINABLE).unlink()
    with pytest.raises(ValueError, match=r"holds checkpoints \(step_000004, step_000002\) but none is complete and "
                                         r".*latest is missing; refusing to start over them"):
        resume(boxes, interrupted)
    assert not (root / "step_000006").exists()


def test_steps_are_ordered_by_number_not_by_name(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (999999, 1000000):
        d = root / f"step_{step:06d}"
        d.mkdir(parents=True)
        for name in (ckpt.STATE, ckpt.TRAINABLE, "scheduler.json", "rng_rank0.json", "optimizer.json"):
            (d / name).write_text("{}")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_1000000"


@pytest.mark.parametrize("pointer", ["../../elsewhere", "step_000003", "", "step_x"])
def test_a_bad_latest_pointer_is_an_error(interrupted, pointer):
    (interrupted / "checkpoints" / "latest").write_text(pointer + "\n")
    with pytest.raises(ValueError, match=f"latest names {pointer!r}, which is missing or incomplete"):
        ckpt.latest_checkpoint(interrupted)


def test_the_cli_resumes_without_latest_and_refuses_a_fresh_start_over_checkpoints(cli, boxes, straight, interrupted):
    (interrupted / "checkpoints" / "latest").unlink()
    err = cli.error(*cli_args(boxes, interrupted, "max_steps=6", "save_every=2"))
    assert "holds an earlier run: pass --resume" in err
    rc, out, _ = cli.run(*cli_args(boxes, interrupted, "max_steps=6", "save_every=2", "keep_checkpoints=3"), "--resume")
    assert rc == 0 and out.strip() == str(interrupted / "final")
    assert_same_weights(interrupted / "final", straight / "final")


def test_a_truncated_trainable_file_is_named(cli, boxes, interrupted):
    path = interrupted / "checkpoints" / "step_000004" / ckpt.TRAINABLE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    err = error_after_training_started(cli, *cli_args(boxes, interrupted, "max_steps=6", "save_every=2"), "--resume")
    assert f"cannot read {path}: " in err and "truncated" in err


# ---- kill -9 during a step and during a save, then --resume ------------------------------------------

ENTRY = '''"""Runs `self1e train`, made slow where the test wants to kill it: "slow-step SECONDS" sleeps in every
forward pass; "slow-save STEP" hangs in the save of checkpoint STEP once its model folder is written,
after creating OUT/saving_STEP."""
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
from self1e.cli import main  # noqa: E402
from self1e.model import Self1eModel  # noqa: E402
from self1e.train import checkpoint as ckpt  # noqa: E402

mode, arg, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if mode == "slow-step":
    forward = Self1eModel.forward

    def slow(self, *args, **kwargs):
        time.sleep(float(arg))
        return forward(self, *args, **kwargs)

    Self1eModel.forward = slow
elif mode == "slow-save":
    export = ckpt.export_model

    def hang(model, directory):
        export(model, directory)
        if directory.parent.name == f".tmp_step_{int(arg):06d}":
            (directory.parents[2] / f"saving_{arg}").touch()
            time.sleep(600)

    ckpt.export_model = hang
sys.exit(main(argv))
'''


class Trainer:
    """``self1e train`` in a subprocess through the entry script above."""

    def __init__(self, script: Path, args: list[str]) -> None:
        self.script, self.args = script, args
        self.env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}

    def start(self, mode: str, arg: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(self.script), mode, arg, *self.args, *extra], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def run(self, *extra: str) -> None:
        proc = self.start("plain", "-", *extra)
        try:
            log, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("training did not finish in 300 s:\n" + proc.communicate()[0][-3000:])
        assert proc.returncode == 0, log[-3000:]

    @staticmethod
    def kill_when(proc: subprocess.Popen, ready, what: str) -> None:
        """SIGKILL ``proc`` as soon as ``ready()`` is true."""
        deadline = time.monotonic() + 300
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"never saw {what} (exit {proc.poll()}):\n{proc.communicate()[0][-3000:]}")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL


def _latest_name(out: Path) -> str | None:
    try:
        return (out / "checkpoints" / "latest").read_text().strip()
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_kill_9_during_a_step_and_during_a_save_then_resume_bit_for_bit(boxes, tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    straight_out, out = tmp_path / "straight", tmp_path / "killed"
    sets = ("max_steps=6", "save_every=2", "keep_checkpoints=3")
    Trainer(script, cli_args(boxes, straight_out, *sets)).run()
    trainer = Trainer(script, cli_args(boxes, out, *sets))

    # 1. killed inside step 3: every forward pass sleeps 0.5 s, the kill follows the step-2 checkpoint
    proc = trainer.start("slow-step", "0.5")
    trainer.kill_when(proc, lambda: _latest_name(out) == "step_000002", "the step-2 checkpoint")
    assert _latest_name(out) == "step_000002" and not (out / "final").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_000002"]

    # 2. resumed, then killed while saving step 4 (its model folder written, nothing published)
    proc = trainer.start("slow-save", "4", "--resume")
    trainer.kill_when(proc, lambda: (out / "saving_4").exists(), "the save of step 4")
    assert _latest_name(out) == "step_000002" and not (out / "final").exists()
    partial = out / "checkpoints" / ".tmp_step_000004"
    assert (partial / "model").is_dir() and not (partial / ckpt.TRAINABLE).exists()

    # 3. resumed to the end: the same weights as the run that was never interrupted
    trainer.run("--resume")
    assert_same_weights(out / "final", straight_out / "final")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest", "step_000002", "step_000004", "step_000006"]  # the partial save is gone
    assert losses(out) == losses(straight_out)
    assert json.loads((out / "checkpoints" / "step_000006" / ckpt.STATE).read_text())["step"] == 6
