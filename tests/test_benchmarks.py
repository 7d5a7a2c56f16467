"""Smoke test of benchmarks/bench_model.py on the tiny geometry (one timed run per variant)."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_model.py"
VARIANTS = {"plain", "seg", "seg_causal", "seg_lm_logits", "seg_labelled", "seg_eager", "seg_eager_llm",
            "head", "hq_projection"}
RATIOS = {"seg_over_plain", "seg_causal_over_plain", "seg_lm_logits_over_plain", "seg_labelled_over_plain",
          "head_share_of_plain", "eager_over_sdpa", "eager_llm_over_sdpa"}


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_writes_positive_times(tmp_path):
    out = tmp_path / "bench.json"
    returned = load_bench().main(["--geometry", "tiny", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert {"cpu_count", "torch", "transformers", "threads", "date"} <= set(report["machine"])
    res = report["results"]["tiny"]
    for key in ("ms", "cpu_ms"):
        assert set(res[key]) == VARIANTS and all(v > 0 for v in res[key].values())
    assert all(len(runs) == 1 for runs in res["runs_ms"].values())
    for key in ("ratios", "cpu_ratios"):
        assert set(res[key]) == RATIOS and all(v > 0 for v in res[key].values())
    checks = res["checks"]
    assert checks["eager_calls"] == {"seg": {"llm": 0, "vit": 0}, "seg_eager": {"llm": 2, "vit": 2},
                                     "seg_eager_llm": {"llm": 2, "vit": 0}}  # 2 layers each in the tiny model
    assert all(diff < 1e-4 for diff in checks["max_abs_diff_vs_sdpa"].values())
    assert checks["llm_passes_labelled"] == 2  # the LM loss adds a causal pass under the bidirectional mask
    assert checks["mask_grid"] == [16, 16]  # rfa: 4x the 4x4 LLM grid of the 56 px tiny tile


def test_mask_ceiling_grows_with_the_grid_and_is_exact_at_full_resolution():
    spec = importlib.util.spec_from_file_location("mask_ceiling", SCRIPT.parent / "mask_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--data", "refshapes:test:30:3:64", "--grids", "4", "16", "64"])
    assert result[64] == 100.0  # one cell per pixel: the resize is the identity
    assert result[4] < result[16] < 100.0


def load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_vqa_preserved_and_seg_emission_run_end_to_end(tmp_path):
    """Two tiny training runs each, measured; the numbers themselves come from the real budgets."""
    out = tmp_path / "vqa.json"
    load_script("vqa_preserved").main(["--start", "tiny:tiny", "--size", "64", "--steps", "2", "--batch", "2",
                                       "--train-n", "30",
                                       "--test", "3", "--out", str(tmp_path / "v"), "--results", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert [r["run"] for r in runs] == ["vqa_only", "vqa_and_segmentation"]
    assert all(0 <= r["vqa"]["exact_match"] <= 1 and r["vqa"]["n"] == 3 for r in runs)
    out = tmp_path / "emission.json"
    load_script("seg_emission").main(["--start", "tiny:tiny", "--size", "64", "--steps", "2", "--test", "3",
                                      "--train-n", "30",
                                      "--out", str(tmp_path / "e"), "--results", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert [r["causal_lm_loss"] for r in runs] == [False, True]
    assert all(r["seg_token_loss_causal"] > 0 and 0 <= r["vqa_without_seg"] <= 1 for r in runs)


@pytest.mark.slow
def test_bench_serve_measures_both_batching_modes(tmp_path):
    out = tmp_path / "serve.json"
    args = ["--model", "tiny:tiny", "--requests", "4", "--clients", "1,4", "--out", str(out)]
    assert load_script("bench_serve").main(args) == 0
    result = json.loads(out.read_text())
    assert [(r["batching"], r["clients"]) for r in result["rows"]] == [(True, 1), (True, 4), (False, 1), (False, 4)]
    assert all(r["requests"] == 4 and r["requests_per_s"] > 0 and r["p95_ms"] >= r["p50_ms"] for r in result["rows"])
    assert set(result["ratios"]) == {"1_clients_throughput_batched_over_unbatched",
                                     "4_clients_throughput_batched_over_unbatched"}


@pytest.mark.slow
def test_bench_threads_measures_idle_and_loaded(tmp_path):
    out = tmp_path / "threads.json"
    assert load_script("bench_threads").main(["--samples", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["settings"] for r in rows] == ["self1e", "torch-default"]
    for r in rows:
        assert r["idle_s"] > 0 and r["beside_torch_s"] > 0 and r["beside_python_s"] > 0
        assert abs(r["beside_torch_over_idle"] - r["beside_torch_s"] / r["idle_s"]) < 0.02
