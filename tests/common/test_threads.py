"""Thread settings: the count by model size or request, the sleeping wait policy set before torch loads."""
import os
import subprocess
import sys

import pytest
import torch

from self1e.common import threads as th


@pytest.fixture(autouse=True)
def one_thread_after():
    yield
    torch.set_num_threads(1)  # the suite's setting (tests/conftest.py)


def test_choose_threads_by_size_request_and_environment(monkeypatch):
    monkeypatch.delenv(th.THREADS_ENV, raising=False)
    assert th.choose_threads(750_000) == 1  # the shipped model
    assert th.choose_threads(900_000_000) == th.available_cpus()
    assert th.choose_threads(750_000, threads=3) == 3
    assert th.choose_threads(750_000, threads=0) is None  # torch's own choice
    monkeypatch.setenv(th.THREADS_ENV, "2")
    assert th.choose_threads(900_000_000) == 2 and th.choose_threads(1, threads=4) == 4
    monkeypatch.setenv(th.THREADS_ENV, "many")
    with pytest.raises(ValueError, match="SELF1E_THREADS must be a whole number"):
        th.choose_threads(1)
    with pytest.raises(ValueError, match="--threads must be a whole number >= 0"):
        th.choose_threads(1, threads=-2)


def test_prepare_openmp_sets_passive_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv(th.THREADS_ENV, raising=False)
    th.prepare_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    th.prepare_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice stays
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv(th.THREADS_ENV, "0")
    th.prepare_openmp()
    assert "OMP_WAIT_POLICY" not in os.environ  # 0 = leave OpenMP and torch alone


def test_importing_self1e_before_torch_gives_sleeping_threads():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", th.THREADS_ENV)}
    code = "import self1e, os, torch; torch.ones(64, 64) @ torch.ones(64, 64); print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "PASSIVE", out.stderr


def test_the_predictor_sets_threads_on_the_cpu(tiny_model_dir, monkeypatch):
    from self1e import Self1ePredictor

    monkeypatch.delenv(th.THREADS_ENV, raising=False)
    torch.set_num_threads(2)
    Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")
    assert torch.get_num_threads() == 1  # a tiny model: one thread
    Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu", threads=2)
    assert torch.get_num_threads() == 2


def test_cli_refuses_a_bad_thread_count(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    from self1e.cli import main

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    assert main(["segment", "--model", str(tiny_model_dir), "--image", str(tmp_path / "a.png"), "--text", "x",
                 "--out", str(tmp_path / "m.png"), "--threads", "-1"]) == 2
    assert "--threads must be a whole number >= 0" in capsys.readouterr().err
