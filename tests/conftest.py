"""Shared fixtures: tiny random InternVL models saved in the real on-disk formats."""
from __future__ import annotations

import pytest
import torch

# One thread per test process: the suite runs under pytest-xdist on 2 cores, and OpenMP threads
# spinning against each other (or against other processes) slow small CPU models by 10-40x.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def plain_internvl_dir(tmp_path_factory):
    """A plain InternVL folder (no [SEG], no heads) written with save_pretrained."""
    from self1e.model.tiny import build_tiny_base

    base, tok = build_tiny_base("tiny", seed=0)
    d = tmp_path_factory.mktemp("plain_internvl")
    base.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A self1e checkpoint of the tiny geometry (random weights)."""
    from self1e.model import Self1eModel
    from self1e.model.tiny import build_tiny_base

    base, tok = build_tiny_base("tiny", seed=1)
    d = tmp_path_factory.mktemp("tiny_self1e")
    Self1eModel.from_base(base, tok).save_pretrained(d)
    return d
