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


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module: 2 CPUs, no dashboard, every service on 127.0.0.1 (checked),
    shut down at the module's end. Skipped without the ray extra."""
    ray = pytest.importorskip("ray", reason="needs the ray extra (pip install 'self1e[ray]')")
    from self1e.cli.ray_cluster import loopback_only

    restore = loopback_only()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             namespace="self1e-tests")
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        yield ray
    finally:
        ray.shutdown()
        restore()
