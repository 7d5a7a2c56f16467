"""Sharded evaluation: two gloo processes on CPU give exactly the one-process result."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from eval_testdata import samples_of, write_dataset, write_predictions
from self1e.eval.evaluate import FolderSource, evaluate


def _rows_and_preds(n: int = 11, seed: int = 0):
    """Random rectangles on images of different sizes; some no-target, some ignore, some missing."""
    rng = np.random.default_rng(seed)

    def rand_rect(w, h):
        y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
        return (int(y0), int(rng.integers(y0 + 1, h + 1)), int(x0), int(rng.integers(x0 + 1, w + 1)))

    rows, preds, sizes = [], {}, {}
    for i in range(n):
        w, h = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        sid = f"img{i:02d}"
        rows.append({
            "id": sid, "text": f"object {i}", "size": (w, h), "kind": "xyz"[i % 3],
            "gt": None if i % 4 == 3 else rand_rect(w, h),
            "ignore": rand_rect(w, h) if i % 5 == 1 else None,
        })
        sizes[sid] = (w, h)
        if i % 5 != 4:  # every fifth prediction is missing
            preds[sid] = None if i % 7 == 6 else rand_rect(w, h)
    return rows, preds, sizes


def _run(rank: int, tmp: str, world: int, preds: str) -> None:
    tmp_path = Path(tmp)
    store = tmp_path / f"store_{preds}"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        rows, _, _ = _rows_and_preds()
        samples = samples_of(tmp_path / "data", rows)
        try:
            res = evaluate(FolderSource(tmp_path / preds), samples, batch_size=2, progress=False,
                           save_masks=tmp_path / "out2" / "masks", overlays=4, overlay_dir=tmp_path / "out2" / "ov")
            out = {"metrics": res.metrics, "state": res.accumulator.state_dict(), "world": res.world_size,
                   "missing": res.missing_predictions}
        except ValueError as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        (tmp_path / f"{preds}_rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_two_process_sharded_eval_equals_one_process(tmp_path):
    rows, preds, sizes = _rows_and_preds()
    write_dataset(tmp_path / "data", rows)
    write_predictions(tmp_path / "preds", preds, sizes)
    single = evaluate(FolderSource(tmp_path / "preds"), samples_of(tmp_path / "data", rows), batch_size=3,
                      progress=False, save_masks=tmp_path / "out1" / "masks", overlays=4,
                      overlay_dir=tmp_path / "out1" / "ov")
    assert single.world_size == 1 and single.n == 11 and single.missing_predictions == 2
    assert 0 < single.metrics["cIoU"] < 1 and "N_acc" in single.metrics  # a non-trivial case

    mp.spawn(_run, args=(str(tmp_path), 2, "preds"), nprocs=2, join=True)

    for rank in (0, 1):  # every rank holds the full, exact result
        got = json.loads((tmp_path / f"preds_rank{rank}.json").read_text())
        assert got["world"] == 2 and got["missing"] == 2
        assert got["state"] == json.loads(json.dumps(single.accumulator.state_dict()))
        assert got["metrics"] == json.loads(json.dumps(single.metrics))  # bit for bit
    # Same files as one process writes, whichever rank wrote them.
    assert _files(tmp_path / "out2" / "masks") == _files(tmp_path / "out1" / "masks")
    assert list(_files(tmp_path / "out2" / "ov")) == list(_files(tmp_path / "out1" / "ov"))
    assert len(_files(tmp_path / "out1" / "ov")) == 4


@pytest.mark.slow
def test_an_error_on_one_rank_reaches_every_rank_without_hanging(tmp_path):
    rows, preds, sizes = _rows_and_preds()
    write_dataset(tmp_path / "data", rows)
    write_predictions(tmp_path / "bad", preds, sizes)
    w, h = sizes["img01"]  # sample 1 belongs to rank 1
    write_predictions(tmp_path / "bad", {"img01": None}, (w + 1, h))
    mp.spawn(_run, args=(str(tmp_path), 2, "bad"), nprocs=2, join=True)
    own = json.loads((tmp_path / "bad_rank1.json").read_text())["error"]
    other = json.loads((tmp_path / "bad_rank0.json").read_text())["error"]
    assert own.startswith("DataError:") and "img01.png" in own
    assert other.startswith("ValueError: evaluation failed on rank 1: DataError:") and "img01.png" in other
