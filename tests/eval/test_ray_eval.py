"""`self1e eval --ray` and `self1e batch`: the Ray Data pipeline on a local Ray (loopback only, 2 CPUs, no
dashboard; one Ray for the whole module, shut down at its end), against `self1e eval` without Ray."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from self1e.cli import main
from self1e.common.images import read_mask
from self1e.eval.metrics import score_sample

pytestmark = pytest.mark.slow
DATA = "refshapes:test:300:11:112"


@pytest.fixture(scope="module")
def ray_local(local_ray):
    return local_ray


def eval_cli(tmp, model, data, name, *extra):
    out = tmp / f"{name}.json"
    code = main(["eval", "--model", str(model), "--data", str(data), "--out", str(out), "--device", "cpu",
                 "--save-masks", str(tmp / f"{name}_masks"), "--no-progress", *extra])
    return code, out


def per_sample_ious(masks_dir: Path, data: str) -> dict[str, float]:
    from self1e.data.datasets import load_dataset

    out = {}
    for s in load_dataset(data):
        if s.text is None or s.is_multi_object:
            continue
        pred = read_mask(masks_dir / f"{s.id}.png")
        size = (pred.shape[1], pred.shape[0])
        out[s.id] = score_sample(pred, s.load_mask(size), s.load_ignore(size)).iou
    return out


def test_eval_on_ray_with_two_actors_equals_plain_eval(ray_local, tiny_model_dir, tmp_path):
    code, plain = eval_cli(tmp_path, tiny_model_dir, DATA, "plain")
    assert code == 0
    code, on_ray = eval_cli(tmp_path, tiny_model_dir, DATA, "ray", "--ray", "--actors", "2")
    assert code == 0
    a, b = json.loads(plain.read_text()), json.loads(on_ray.read_text())
    (da,), (db,) = a["datasets"].values(), b["datasets"].values()
    assert da["n"] == db["n"] == 300 and da["counts"] == db["counts"]
    for key in ("cIoU", "gIoU", "N_acc", "T_acc", "P@0.5", "P@0.9"):
        assert abs(da[key] - db[key]) <= 1e-6, key
    assert da["kinds"] == db["kinds"] and da.get("seg_emission") == db.get("seg_emission")
    assert a["self1e"] == b["self1e"] and a["device"] == b["device"] == "cpu"
    files = sorted(p.name for p in (tmp_path / "plain_masks").iterdir())
    assert len(files) >= 300 and files == sorted(p.name for p in (tmp_path / "ray_masks").iterdir())
    for name in files:  # the same saved masks, byte for byte
        assert (tmp_path / "plain_masks" / name).read_bytes() == (tmp_path / "ray_masks" / name).read_bytes(), name
    ious_a, ious_b = per_sample_ious(tmp_path / "plain_masks", DATA), per_sample_ious(tmp_path / "ray_masks", DATA)
    assert len(ious_a) > 250 and all(abs(ious_a[k] - ious_b[k]) <= 1e-6 for k in ious_a)


@pytest.fixture
def shapes_jsonl(tmp_path):
    from self1e.data.refshapes import generate

    return generate(tmp_path / "data", "test", 24, seed=5, size=64, progress=False)


def test_a_bad_sample_is_reported_as_plain_eval_reports_it_and_ray_goes_on(ray_local, tiny_model_dir, shapes_jsonl,
                                                                           tmp_path, capsys):
    lines = [json.loads(x) for x in shapes_jsonl.read_text().splitlines()]
    broken = shapes_jsonl.parent / lines[13]["image"]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # a corrupt image in the 2nd batch
    code, _ = eval_cli(tmp_path, tiny_model_dir, shapes_jsonl, "plain")
    plain_err = capsys.readouterr().err.strip().splitlines()[-1]
    code_ray, _ = eval_cli(tmp_path, tiny_model_dir, shapes_jsonl, "ray", "--ray", "--actors", "2")
    ray_err = capsys.readouterr().err.strip().splitlines()[-1]
    first = next(k for k, x in enumerate(lines) if x["image"] == lines[13]["image"])  # the first sample of it
    assert code == code_ray == 2 and plain_err == ray_err
    assert plain_err.startswith("self1e eval: error:") and broken.name in plain_err
    assert f"(id '{lines[first]['id']}')" in plain_err  # named by its id
    # the same saved masks up to the failure (the batches before the bad sample's), and Ray is alive
    assert sorted(os.listdir(tmp_path / "plain_masks")) == sorted(os.listdir(tmp_path / "ray_masks"))
    assert len(os.listdir(tmp_path / "ray_masks")) == first // 8 * 8 > 0 and ray_local.is_initialized()

    # a file that goes missing after the dataset was read: the same exception, at the same sample
    from self1e.data.datasets import load_dataset
    from self1e.eval.evaluate import PredictorSource, evaluate
    from self1e.eval.ray_data import PoolOptions, RayDataSource
    from self1e.inference import Self1ePredictor

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(broken)  # readable again
    samples = load_dataset(str(shapes_jsonl))
    missing = shapes_jsonl.parent / lines[3]["image"]
    missing.unlink()
    with pytest.raises(Exception) as plain:
        evaluate(PredictorSource(Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")), samples,
                 progress=False)
    source = RayDataSource(samples, PoolOptions(str(tiny_model_dir), "cpu", actors=2, cpus_per_actor=0.75))
    with pytest.raises(Exception) as on_ray:
        evaluate(source, samples, progress=False)
    source.close()
    assert type(on_ray.value) is type(plain.value) and str(on_ray.value) == str(plain.value)
    assert missing.name in str(plain.value)


def dies_once_actor(marker: Path, starts: Path):
    """PredictorActor that, the first time it meets batch 2, kills its own process (as an actor that runs
    out of memory or crashes would); ``marker`` remembers that it did, ``starts`` logs every actor start."""
    from self1e.eval.ray_data import PredictorActor

    class Flaky(PredictorActor):
        def __init__(self, options):
            with starts.open("a") as f:
                f.write(f"{os.getpid()}\n")
            super().__init__(options)

        def __call__(self, batch):
            if 2 in [int(b) for b in batch["batch"]] and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    return Flaky


def test_an_actor_that_dies_is_replaced_and_its_batch_retried(ray_local, tiny_model_dir, tmp_path):
    import ray.cloudpickle

    from self1e.data.datasets import load_dataset
    from self1e.eval.evaluate import PredictorSource, evaluate
    from self1e.eval.ray_data import PoolOptions, RayDataSource
    from self1e.inference import Self1ePredictor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    samples = load_dataset("refshapes:test:40:4:64")
    marker, starts = tmp_path / "died", tmp_path / "starts"
    flaky = dies_once_actor(marker, starts)
    source = RayDataSource(samples, PoolOptions(str(tiny_model_dir), "cpu", actors=2, cpus_per_actor=0.75),
                           actor_cls=flaky)
    got = evaluate(source, samples, progress=False, save_masks=tmp_path / "ray")
    want = evaluate(PredictorSource(Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")), samples,
                    progress=False, save_masks=tmp_path / "plain")
    assert marker.exists() and len(starts.read_text().split()) >= 3  # an actor died and a new one started
    assert source._stream is None  # the stream was closed at the last batch, not left to the garbage collector
    assert got.accumulator.counts() == want.accumulator.counts() and got.metrics == want.metrics
    assert got.emission == want.emission
    for p in (tmp_path / "plain").iterdir():
        assert p.read_bytes() == (tmp_path / "ray" / p.name).read_bytes()


def test_batch_writes_one_rle_result_per_image_and_expression(ray_local, tiny_model_dir, shapes_jsonl, tmp_path,
                                                              predictor_cpu):
    from pycocotools import mask as mask_utils

    folder = shapes_jsonl.parent / "test" / "images"
    (folder / "broken.png").write_bytes(b"not an image")
    texts = ["the red circle", "the blue star"]
    out = tmp_path / "results.jsonl"
    args = ["batch", "--model", str(tiny_model_dir), "--device", "cpu", "--data", str(folder), "--out", str(out),
            "--actors", "2", "--batch-size", "4", "--no-progress"]
    assert main([*args, "--text", texts[0], "--text", texts[1]]) == 0
    records = [json.loads(x) for x in out.read_text().splitlines()]
    images = sorted(p for p in folder.iterdir())
    assert [(r["id"], r["text"]) for r in records] == [(p.stem, t) for p in images for t in texts]
    bad = [r for r in records if "error" in r]
    assert [r["id"] for r in bad] == ["broken", "broken"] and "broken.png" in bad[0]["error"]
    good = [r for r in records if "error" not in r]
    first = [p for p in images if p.stem != "broken"][:4]  # the first model batch (4 images, 2 texts each)
    want = predictor_cpu.predict_images([Image.open(p).convert("RGB") for p in first], [texts] * len(first))
    for r, w in zip(good, [x for group in want for x in group]):
        mask = mask_utils.decode({"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()}).astype(bool)
        assert np.array_equal(mask, w.mask) and (r["width"], r["height"]) == (64, 64)
    assert all(r["rle"]["size"] == [64, 64] for r in good)

    # a JSONL input brings its own texts, one result per line, in its order
    out2 = tmp_path / "from_jsonl.jsonl"
    (folder / "broken.png").unlink()
    assert main(["batch", "--model", str(tiny_model_dir), "--device", "cpu", "--data", str(shapes_jsonl),
                 "--out", str(out2), "--actors", "1", "--no-progress"]) == 0
    lines = [json.loads(x) for x in shapes_jsonl.read_text().splitlines()]
    got = [json.loads(x) for x in out2.read_text().splitlines()]
    assert sorted((r["id"], r["text"]) for r in got) == sorted((x["id"], x["text"]) for x in lines)
    assert not any("error" in r for r in got)


@pytest.fixture
def predictor_cpu(tiny_model_dir):
    from self1e.inference import Self1ePredictor

    return Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")
