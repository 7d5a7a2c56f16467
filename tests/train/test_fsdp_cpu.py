"""FSDP on CPU: two gloo processes shard the self1e model with torch's FSDP2 (``fully_shard``, the
engine behind ``configs/accelerate/fsdp.yaml``: each decoder and ViT layer, then the root) and train
it to exactly the weights one process reaches on the same data.

Why not through ``accelerate launch --config_file configs/accelerate/fsdp.yaml``: accelerate 1.16
turns an FSDP config into FSDP only for accelerator process groups (CUDA, XPU, NPU, ...); with
``use_cpu: true`` it silently runs plain CPU data parallelism instead (``DistributedType.MULTI_CPU``),
so a CPU launch would not test FSDP at all. This test drives FSDP2 itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = r'''
import json, sys
import numpy as np, torch, torch.distributed as dist
from PIL import Image
from self1e.model import Self1eConfig, Self1eModel
from self1e.model.tiny import build_tiny_base

rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
torch.manual_seed(0)
base, tok = build_tiny_base("tiny", seed=0)
model = Self1eModel.from_base(base, tok, Self1eConfig(mask_head="rfa", seg_attention="bidirectional")).train()
p = model.processor
rng = np.random.default_rng(7)
image = Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8))
im = p.image_input(image)
rows = [p.conversation(p.seg_question(t), "Sure, [SEG].", 1) for t in ("the red circle", "the blue box")]
targets = [p.mask_target(rng.random((56, 56)) > 0.5) for _ in rows]
batch = p.collate(rows, [im, im], [0, 1], targets)
if world > 1:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    layers = [m for m in model.modules() if type(m).__name__ in ("Qwen2DecoderLayer", "InternVLVisionLayer")]
    assert layers, "no layer to wrap"
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    sharded = [n for n, q in model.named_parameters() if type(q).__name__ == "DTensor"]
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
losses = []
for _ in range(3):  # every rank sees the whole batch: the averaged gradient is the one-process one
    loss = model(batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    losses.append(float(loss.detach()))
if world > 1:
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
else:
    state, sharded = model.state_dict(), []
if rank == 0:
    torch.save({k: v.detach().clone() for k, v in state.items()}, out + ".pt")
    json.dump({"losses": losses, "sharded": len(sharded), "params": len(list(model.parameters()))},
              open(out + ".json", "w"))
if world > 1:
    dist.barrier()
    dist.destroy_process_group()
'''


def _run(tmp_path: Path, world: int) -> tuple[dict, dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = str(tmp_path / f"world{world}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(world), str(tmp_path / f"store{world}"), out],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("an FSDP worker did not finish in 240 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    import torch

    return json.loads(Path(out + ".json").read_text()), torch.load(out + ".pt")


@pytest.mark.slow
def test_fsdp2_two_cpu_processes_train_like_one(tmp_path):

    one, weights_one = _run(tmp_path, 1)
    two, weights_two = _run(tmp_path, 2)
    assert two["sharded"] == two["params"] > 0  # every parameter is a DTensor shard: FSDP really ran
    assert one["losses"][0] == pytest.approx(two["losses"][0], abs=1e-6)  # same model, same batch
    assert one["losses"][-1] < one["losses"][0]  # it trains
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-4)
    assert weights_one.keys() == weights_two.keys()
    worst = max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one)
    assert worst < 1e-4, f"gathered FSDP weights differ from one process by {worst}"
