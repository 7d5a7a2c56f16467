"""Smoke test of benchmarks/bench_model.py on the tiny geometry (one timed run per variant)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

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
def test_bench_serve_ray_measures_ray_replicas_beside_the_single_process_server(tmp_path):
    pytest.importorskip("ray", reason="needs the ray extra")
    out = tmp_path / "serve.json"
    args = ["--model", "tiny:tiny", "--requests", "4", "--clients", "1,4", "--ray", "--replicas", "1",
            "--out", str(out)]
    assert load_script("bench_serve").main(args) == 0
    result = json.loads(out.read_text())
    assert [(r["server"], r["replicas"], r["clients"]) for r in result["rows"] if r["server"] == "ray"] == [
        ("ray", 1, 1), ("ray", 1, 4)]
    assert all(r["requests"] == 4 and r["requests_per_s"] > 0 and r["p95_ms"] >= r["p50_ms"] for r in result["rows"])
    assert {f"{c}_clients_throughput_ray_1_replicas_over_single" for c in (1, 4)} <= set(result["ratios"])


@pytest.mark.slow
def test_bench_threads_measures_idle_and_loaded(tmp_path):
    out = tmp_path / "threads.json"
    assert load_script("bench_threads").main(["--samples", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["settings"] for r in rows] == ["self1e", "self1e-2-threads", "torch-default"]
    for r in rows:
        assert r["idle_s"] > 0 and r["beside_torch_s"] > 0 and r["beside_python_s"] > 0
        ratio = r["beside_torch_over_idle"]  # from unrounded times: equal up to the rounding of the three
        assert ratio > 0 and abs(ratio * r["idle_s"] - r["beside_torch_s"]) <= 0.01 * (ratio + 1 + r["idle_s"])


@pytest.mark.slow
def test_ablation_from_a_warm_start_writes_table_curves_and_plot(tmp_path, tiny_model_dir):
    results = tmp_path / "ablation.json"
    args = ["--config", "configs/refshapes_tiny.yaml", "--steps", "4", "--seeds", "0", "--rungs",
            "compressed-causal,rfa-causal", "--warm-start", str(tiny_model_dir), "--curve-every", "2",
            "--test", "refshapes:test:6:3:64", "--out", str(tmp_path / "runs"), "--results", str(results),
            "--set", "data=[refshapes:train:40:0:64]", "--set", "batch_size=2", "--set", "val_limit=4",
            "--set", "warmup_steps=1"]
    assert load_script("ablation").main(args) == 0
    runs = json.loads(results.read_text())["runs"]
    assert [(r["rung"], r["mask_grid"]) for r in runs] == [("compressed", 4), ("rfa", 16)]  # 56 px tiles: 4 x 4 tokens
    assert all([s for s, _ in r["curve"]] == [2, 4] and 0 < r["ceiling_cIoU"] <= 1 for r in runs)
    assert runs[0]["ceiling_cIoU"] < runs[1]["ceiling_cIoU"]  # a finer grid can fit the masks better
    assert "grid ceiling cIoU" in results.with_suffix(".md").read_text()
    assert results.with_suffix(".svg").read_text().count("<polyline") == 2


@pytest.mark.slow
def test_ablation_head_only_trains_only_the_head_and_resumes_by_run(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    results, runs_dir = tmp_path / "ablation.json", tmp_path / "runs"
    args = ["--config", "configs/refshapes_tiny.yaml", "--steps", "3", "--seeds", "0", "--rungs",
            "hq-bidirectional", "--warm-start", str(tiny_model_dir), "--head-only", "--curve-every", "0",
            "--test", "refshapes:test:4:3:64", "--out", str(runs_dir), "--results", str(results),
            "--set", "data=[refshapes:train:40:0:64]", "--set", "batch_size=2", "--set", "warmup_steps=1",
            "--set", "lr=1e-2"]
    assert load_script("ablation").main(args) == 0
    record = json.loads(results.read_text())["runs"][0]
    assert (record["rung"], record["attention"], record["head_only"]) == ("hq", "bidirectional", True)
    final_dir = runs_dir / "hq-bidirectional-seed0" / "final"
    start, end = load_file(tiny_model_dir / "model.safetensors"), load_file(final_dir / "model.safetensors")
    assert set(start) == set(end) and all(torch.equal(start[k], end[k]) for k in start)  # backbone and LLM frozen
    head = load_file(final_dir / "mask_head.safetensors")
    assert head and all(v.isfinite().all() for v in head.values())
    assert "| hq | bidirectional | 1 |" in results.with_suffix(".md").read_text()
    # a second call finds the run's record and trains nothing: the checkpoint is not rewritten
    final = final_dir / "mask_head.safetensors"
    stamp = final.stat().st_mtime_ns
    assert load_script("ablation").main(args) == 0
    assert final.stat().st_mtime_ns == stamp and json.loads(results.read_text())["runs"][0] == record
    with pytest.raises(SystemExit):
        load_script("ablation").main([("hq-sideways" if a == "hq-bidirectional" else a) for a in args])


@pytest.mark.slow
def test_bench_predictor_measures_caches_batching_and_prefix_reuse(tmp_path):
    out = tmp_path / "predictor.json"
    returned = load_script("bench_predictor").main(["--geometry", "tiny", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    res = report["results"]["tiny"]
    names = {"cached", "encode_per_call", "sequential", "causal_no_prefix", "causal_prefix", "causal_prefix_first",
             "causal_prefix_sequential"}
    assert set(res["ms"]) == {f"{v}@{n}" for v in names for n in (1, 4, 16)} and all(v > 0 for v in res["ms"].values())
    assert all(len(runs) == 1 for runs in res["runs_ms"].values())
    ratios = {"encode_per_call_over_cached", "sequential_over_batched", "no_prefix_over_prefix",
              "prefix_first_call_over_no_prefix", "prefix_sequential_over_prefix_batched", "causal_over_bidirectional"}
    for key in ("ratios", "cpu_ratios"):
        assert set(res[key]) == {"1", "4", "16"}
        assert all(set(r) == ratios and all(v > 0 for v in r.values()) for r in res[key].values())
    checks = res["checks"]
    assert all(d < 1e-5 for d in checks["max_abs_diff"].values())  # every compared pair gives the same masks
    length, prefix = checks["sequence_length"], checks["prefix_length"]
    assert checks["expressions"] == 16 and 16 < prefix < length  # the 4 x 4 image tokens and more are cached
    assert checks["llm_tokens_per_row"] == {"no_prefix": length, "prefix_pass": prefix, "with_prefix": length - prefix}


@pytest.mark.slow
def test_bench_quantize_smoke_run_compares_float32_and_int8(tmp_path):
    out = tmp_path / "quantize.json"
    returned = load_script("bench_quantize").main(["--samples", "8", "--geometry", "tiny", "--repeats", "1",
                                                   "--out", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    shipped, tiny = report["default"], report["geometry"]["tiny"]
    acc = shipped["accuracy"]
    assert set(acc) == {"float32", "int8", "int8-vit"} and all(v["n"] == 8 for v in acc.values())
    for k in ("int8", "int8-vit"):
        assert 0 <= acc[k]["cIoU"] <= 100
        assert shipped["ciou_minus_float32_points"][k] == pytest.approx(acc[k]["cIoU"] - acc["float32"]["cIoU"],
                                                                        abs=0.02)
        assert shipped["within_target"][k] == (abs(shipped["ciou_minus_float32_points"][k]) <= 1.0)
        assert 0 <= shipped["agreement"][k]["mask_iou_min"] <= shipped["agreement"][k]["mask_iou_mean"] <= 1
    linears = shipped["quantized_linears"]
    assert 0 < linears["int8-vit"] < linears["int8"] and tiny["config"]["quantized_linears"] > 0
    weights = shipped["memory"]["weight_bytes"]
    assert 0 < weights["int8"] < weights["int8-vit"] < weights["float32"]
    assert 0 < tiny["memory"]["weight_bytes"]["int8"] < tiny["memory"]["weight_bytes"]["float32"]
    assert 0 <= tiny["agreement"]["mask_iou_min"] <= tiny["agreement"]["mask_iou_mean"] <= 1
    assert tiny["agreement"]["n"] == 8 and -1 <= tiny["agreement"]["logits_correlation_mean"] <= 1
    for name in ("latency_predict_many", "latency_predict_cached_image"):
        assert set(shipped[name]["ms"]) == {"float32", "int8", "int8-vit"}
        assert set(shipped[name]["over_float32"]) == {"int8", "int8-vit"}
        assert all(v > 0 for v in shipped[name]["over_float32"].values())
    assert tiny["latency_segmentation_forward"]["over_float32"]["int8"] > 0
    fresh = shipped["memory"]["fresh_process"]
    assert set(fresh) == {"float32", "int8", "int8-vit"}
    assert all(v is None or v["peak_rss_bytes"] >= v["rss_bytes"] > 0 for v in fresh.values())


def test_bench_gpu_smoke_run_on_cpu(tmp_path):
    """The GPU benchmark's parts on the CPU with a tiny model: throughput and a LoRA step are measured,
    and an accelerate config whose package is missing is reported as not run, with the reason."""
    module = load_script("bench_gpu")
    report = module.main(["--model", "tiny:tiny", "--device", "cpu", "--dtype", "float32", "--steps", "1",
                          "--images", "2", "--batch-size", "1", "--parts", "predict,step,accelerate",
                          "--configs", "deepspeed_zero2", "--out", str(tmp_path / "gpu.json")])
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    predict, step = saved["results"]["predict"], saved["results"]["train_step"]
    assert predict["images_per_s"] > 0 and predict["expressions_per_s"] > 0 and predict["expressions_per_image"] == 16
    assert step["seconds_per_step"] > 0 and 0 < step["trainable_M"] < step["total_M"]
    zero2 = saved["results"]["accelerate"]["deepspeed_zero2"]
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        assert zero2 == {"status": "not run", "reason": "the deepspeed package is not installed"}
    else:
        assert zero2["status"] != "not run"


def test_bench_eval_splits_wall_time_and_prefetch_keeps_the_result(tmp_path):
    module = load_script("bench_eval")
    report = module.main(["--model", "tiny:tiny", "--samples", "24", "--batch-size", "8", "--repeats", "1",
                          "--out", str(tmp_path / "eval.json")])
    summary = json.loads((tmp_path / "eval.json").read_text())["summary"]
    assert summary == json.loads(json.dumps(report["summary"]))
    for run in summary.values():
        assert 0 < run["model_s"] < run["wall_s"] and 0 < run["outside_share"] < 1
    assert summary["prefetch"]["cIoU"] == summary["no_prefetch"]["cIoU"]


@pytest.mark.slow
def test_backbones_benchmark_trains_each_family_and_resumes(tmp_path):
    """The same tiny budget on two families, one record each; a second call trains nothing again."""
    out = tmp_path / "backbones.json"
    args = ["--geometry", "tiny", "--size", "64", "--steps", "2", "--batch", "2", "--train-n", "30", "--test", "3",
            "--out", str(tmp_path / "b"), "--results", str(out)]
    script = load_script("backbones")
    script.main(["--families", "internvl,smolvlm", *args])
    runs = json.loads(out.read_text())["runs"]
    assert [(r["family"], r["start"]) for r in runs] == [("internvl", "tiny:tiny"), ("smolvlm", "tiny:smolvlm")]
    assert all(0 <= r["segmentation"]["cIoU"] <= 1 and r["vqa"]["n"] == 3 for r in runs)
    final = tmp_path / "b" / "smolvlm" / "final" / "model.safetensors"
    stamp = final.stat().st_mtime_ns
    script.main(["--families", "smolvlm,internvl", *args])
    assert final.stat().st_mtime_ns == stamp and len(json.loads(out.read_text())["runs"]) == 2
    assert "| smolvlm | `tiny:smolvlm` |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        script.main(["--families", "llava", *args])


def test_count_probe_reads_a_count_that_is_there_and_not_one_that_is_not():
    """The probe itself: a count written (noisily) into the features is read back; labels shuffled
    against the features are not."""
    import numpy as np

    probe = load_script("count_probe")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 600)
    x = (rng.normal(0, 0.3, (600, 16)) + np.eye(16)[y] * 2).astype(np.float32)
    assert probe.linear_probe(x, y, 400, steps=300) > 0.95
    assert probe.linear_probe(x, rng.permutation(y), 400, steps=300) < 0.45


def test_count_probe_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir):
    out = tmp_path / "count.json"
    report = load_script("count_probe").main(["--model", str(tiny_model_dir), "--questions", "5",
                                              "--probe-train", "8", "--probe-test", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    r = report["results"][0]
    assert r["questions"] == 5 == sum(c["n"] for c in r["confusion"])
    assert sum(v["n"] for v in r["by_true_count"].values()) == 5
    right = sum(c["n"] for c in r["confusion"] if c["truth"] == c["answer"])
    assert r["exact_match"] == right / 5 and r["probe"]["test"] == 4
    assert all(0 <= r["probe"][k] <= 1 for k in ("accuracy", "model_on_the_same", "majority_answer"))
