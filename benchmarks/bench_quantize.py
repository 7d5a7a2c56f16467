"""float32 against int8 (CPU dynamic quantization, ``quantize="int8"`` and ``"int8-vit"``) inference,
in one run.

Two models, each loaded in float32 and with Linear layers in int8 (``int8``: the ViT's and the LLM's;
``int8-vit``: the ViT's only; the mask head, projector, LM head and embeddings stay float32; see
``self1e.model.quantize``):

- ``default``, the shipped RefShapes model, in float32, ``int8`` and ``int8-vit``: cIoU, gIoU, N-acc and
  T-acc of each on fresh RefShapes test samples (target: within 1 cIoU point of float32), and how far
  their masks agree with float32's (IoU between the float32 and the int8 mask of each sample).
- a geometry of random weights (``--geometry internvl3-1b``: InternVL3-1B's real shapes, built by
  ``bench_model.py``; ``tiny`` for a smoke run) on RefShapes images and expressions: random weights
  have no accuracy, so the agreement of masks (IoU, the same emptiness) and of logits (correlation,
  relative error); float32 and ``int8``.

For both: the weights' bytes in memory, the peak of resident memory above the loaded models during
one forward (Linux; ``/proc/self/clear_refs`` resets the peak), for the shipped model also the peak
of a fresh process that loads it and segments once, and latency: the variants interleaved (order
rotating each round, after a warm-up), each ratio the median over rounds of int8 / float32 within a
round. Ratios and differences are keyed by the quantized variant (``over_float32: {"int8": ...}``).

    python benchmarks/bench_quantize.py --samples 500 --geometry internvl3-1b --repeats 5 --threads 1
    python benchmarks/bench_quantize.py --samples 8 --geometry tiny --repeats 1     # smoke run
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from self1e import Self1ePredictor
from self1e.data.datasets import load_dataset
from self1e.eval.evaluate import PredictorSource, evaluate
from self1e.model import Self1eConfig, Self1eModel
from self1e.model.quantize import quantize_int8, quantized_modules, weight_bytes

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_quantize.json"
SHIPPED_VARIANTS = ("float32", "int8", "int8-vit")  # float32 first: the reference
GEOMETRY_VARIANTS = ("float32", "int8")
TEST_SEED = 8128  # RefShapes test scenes no training run or earlier measurement used
CIOU_TARGET_POINTS = 1.0


@functools.lru_cache(maxsize=1)
def bench_model_module():
    """benchmarks/bench_model.py, whose geometry builder and interleaved timer this script reuses."""
    spec = importlib.util.spec_from_file_location("bench_model", HERE / "bench_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- memory ---------------------------------------------------------------------------------------
def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def forward_peak_bytes(fn: Callable[[], object]) -> int | None:
    """Resident memory at its peak while ``fn`` runs, above the level before it (None off Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = _status_bytes("VmRSS")
    fn()
    peak = _status_bytes("VmHWM")
    return None if before is None or peak is None else max(0, peak - before)


FRESH_PROCESS = """
import json, sys
from pathlib import Path
from self1e import Self1ePredictor
from self1e.data.datasets import load_dataset
s = [x for x in load_dataset(sys.argv[3]) if not x.is_multi_object][:int(sys.argv[4])]
p = Self1ePredictor.from_pretrained(sys.argv[1], device="cpu", quantize=sys.argv[2], threads=1)
p.predict_many([x.load_image() for x in s], [x.text for x in s])
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
print(json.dumps({k: int(status[k].split()[0]) * 1024 for k in ("VmHWM", "VmRSS")}))
"""


def fresh_process_memory(model: str, quantize: str, spec: str, batch: int) -> dict | None:
    """Peak and final resident bytes of a new process that loads ``model`` and segments one batch."""
    if not Path("/proc/self/status").exists():
        return None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, model, quantize, spec, str(batch)],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the fresh-process memory probe failed:\n{proc.stderr[-2000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_bytes": raw["VmHWM"], "rss_bytes": raw["VmRSS"]}


# ---- timing -----------------------------------------------------------------------------------------
def latency(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict:
    """Interleaved wall and CPU milliseconds (bench_model's timer) and each quantized variant's ratio to
    float32, the median over rounds of the ratio within one round."""
    wall, cpu = bench_model_module().timed(fns, repeats, warmup)

    def ratios(runs: dict[str, list[float]]) -> dict[str, float]:
        return {k: round(statistics.median(q / f for f, q in zip(runs["float32"], v)), 4)
                for k, v in runs.items() if k != "float32"}

    return {"ms": {k: round(statistics.median(v), 3) for k, v in wall.items()},
            "cpu_ms": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
            "runs_ms": {k: [round(x, 3) for x in v] for k, v in wall.items()},
            "over_float32": ratios(wall), "over_float32_cpu": ratios(cpu)}


# ---- agreement --------------------------------------------------------------------------------------
def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def agreement(masks: list[tuple[np.ndarray, np.ndarray]],
              logits: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """How far the float32 and int8 masks (and, where given, logits) of the same inputs agree."""
    ious = [mask_iou(a, b) for a, b in masks]
    out = {"n": len(masks), "mask_iou_mean": round(float(np.mean(ious)), 4), "mask_iou_min": round(min(ious), 4),
           "same_emptiness": round(float(np.mean([a.any() == b.any() for a, b in masks])), 4),
           "float32_foreground_mean": round(float(np.mean([a.mean() for a, _ in masks])), 4)}
    if logits:
        corr = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) if a.std() > 0 and b.std() > 0
                else float(np.array_equal(a, b)) for a, b in logits]
        rel = [float(np.linalg.norm(a - b) / max(float(np.linalg.norm(a)), 1e-12)) for a, b in logits]
        out.update(logits_correlation_mean=round(float(np.mean(corr)), 5),
                   logits_relative_error_mean=round(float(np.mean(rel)), 5))
    return out


class RecordingSource(PredictorSource):
    """A predictor source that keeps each sample's prediction (an image or, per object, a list)."""

    def __init__(self, predictor: Self1ePredictor) -> None:
        super().__init__(predictor, count_emission=False)
        self.masks: dict[int, object] = {}

    def finish(self, items, preds):
        out = super().finish(items, preds)
        self.masks.update({it.index: m for it, m in zip(items, out)})
        return out


def _pct(metrics: dict, key: str) -> float | None:
    return None if metrics.get(key) is None else round(100 * metrics[key], 2)


def sizes(models: dict[str, torch.nn.Module]) -> dict:
    out = {k: weight_bytes(m) for k, m in models.items()}
    return {"weight_bytes": out, "over_float32": {k: round(v / out["float32"], 4) for k, v in out.items()
                                                  if k != "float32"}}


# ---- the two benchmarks -----------------------------------------------------------------------------
@torch.inference_mode()
def bench_shipped(n: int, batch: int, repeats: int, warmup: int, threads: int) -> dict:
    spec = f"refshapes:test:{n}:{TEST_SEED}"
    samples = load_dataset(spec)
    predictors = {k: Self1ePredictor.from_pretrained("default", device="cpu", threads=threads,
                                                     quantize=k.replace("float32", "none"))
                  for k in SHIPPED_VARIANTS}
    print(f"[default] evaluating {', '.join(predictors)} on {len(samples)} samples of {spec}", flush=True)
    metrics, masks = {}, {}
    for name, predictor in predictors.items():
        source = RecordingSource(predictor)
        metrics[name] = evaluate(source, samples, batch_size=8, progress=False).metrics
        masks[name] = source.masks

    def pairs(variant: str) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for index, fm in masks["float32"].items():
            qm = masks[variant][index]
            out += zip(fm if isinstance(fm, list) else [fm], qm if isinstance(qm, list) else [qm])
        return out

    single = [s for s in samples if not s.is_multi_object][:batch]
    images, texts = [s.load_image() for s in single], [s.text for s in single]
    first = single[0]
    for p in predictors.values():
        p.set_image(first.load_image())

    def one(p: Self1ePredictor) -> Callable[[], object]:
        return lambda: p.predict(first.text)

    fns = {k: (lambda p=p: p.predict_many(images, texts)) for k, p in predictors.items()}
    cached = {k: one(p) for k, p in predictors.items()}
    quantized = [k for k in predictors if k != "float32"]
    delta = {k: round((metrics[k]["cIoU"] - metrics["float32"]["cIoU"]) * 100, 2) for k in quantized}
    return {
        "data": spec, "batch": len(single),
        "accuracy": {k: {m: _pct(v, m) for m in ("cIoU", "gIoU", "P@0.5", "N_acc", "T_acc")} | {"n": v["n"]}
                     for k, v in metrics.items()},
        "ciou_minus_float32_points": delta,
        "within_target": {k: abs(v) <= CIOU_TARGET_POINTS for k, v in delta.items()},
        "agreement": {k: agreement(pairs(k)) for k in quantized},
        "quantized_linears": {k: len(quantized_modules(predictors[k].model)) for k in quantized},
        "memory": sizes({k: p.model for k, p in predictors.items()})
        | {"forward_peak_extra_bytes": {k: forward_peak_bytes(f) for k, f in fns.items()},
           "fresh_process": {k: fresh_process_memory("default", k.replace("float32", "none"), spec, batch)
                             for k in SHIPPED_VARIANTS}},
        "latency_predict_many": latency(fns, repeats, warmup),
        "latency_predict_cached_image": latency(cached, repeats, warmup),
    }


@torch.inference_mode()
def bench_geometry(geometry: str, n: int, repeats: int, warmup: int) -> dict:
    start = time.perf_counter()
    base, tokenizer = bench_model_module().build_base(geometry)
    float_model = Self1eModel.from_base(base, tokenizer, Self1eConfig(mask_head="rfa",
                                                                      seg_attention="bidirectional")).eval()
    int8_model = copy.deepcopy(float_model)
    quantize_int8(int8_model)
    build_s = time.perf_counter() - start
    models = dict(zip(GEOMETRY_VARIANTS, (float_model, int8_model)))
    predictors = {k: Self1ePredictor(m) for k, m in models.items()}
    size = max(64, float_model.processor.image_size)
    spec = f"refshapes:test:{n}:{TEST_SEED}:{size}"
    samples = [s for s in load_dataset(spec) if not s.is_multi_object]
    print(f"[{geometry}] built and quantized in {build_s:.0f} s; {len(samples)} samples of {spec}", flush=True)
    images, texts = [s.load_image() for s in samples], [s.text for s in samples]
    results = {k: [r for i, t in zip(images, texts) for r in p.predict_many([i], [t])] for k, p in predictors.items()}
    p = float_model.processor
    batch = p.segmentation_batch([p.image_input(images[0])], [texts[0]]).to("cpu", torch.float32)
    fns = {k: (lambda m=m: m(batch)) for k, m in models.items()}
    text = float_model.base.config.text_config
    return {
        "config": {"image_size": p.image_size, "sequence_length": int(batch.input_ids.shape[1]),
                   "hidden_size": text.hidden_size, "vocab_size": text.vocab_size,
                   "parameters": sum(t.numel() for t in float_model.parameters()),
                   "quantized_linears": len(quantized_modules(int8_model)), "build_seconds": round(build_s, 1)},
        "data": spec,
        "agreement": agreement([(a.mask, b.mask) for a, b in zip(results["float32"], results["int8"])],
                               [(a.logits, b.logits) for a, b in zip(results["float32"], results["int8"])]),
        "memory": sizes(models) | {"forward_peak_extra_bytes": {k: forward_peak_bytes(f) for k, f in fns.items()}},
        "latency_segmentation_forward": latency(fns, repeats, warmup),
    }


def print_summary(report: dict) -> None:
    d = report.get("default")
    if d:
        acc = d["accuracy"]
        print(f"\n== default (shipped model), {d['data']}")
        for k, delta in d["ciou_minus_float32_points"].items():
            a = d["agreement"][k]
            print(f"  {k}: cIoU {acc[k]['cIoU']} against float32 {acc['float32']['cIoU']} ({delta:+.2f} points; "
                  f"within {CIOU_TARGET_POINTS} point: {d['within_target'][k]}); N-acc {acc[k]['N_acc']} against "
                  f"{acc['float32']['N_acc']}; mask IoU with float32 mean {a['mask_iou_mean']}, same emptiness "
                  f"{a['same_emptiness']}")
        _print_common(d, ("latency_predict_many", "latency_predict_cached_image"))
        fresh = d["memory"]["fresh_process"]
        if fresh["float32"]:
            print("  fresh process peak RSS: " + ", ".join(f"{k} {v['peak_rss_bytes'] / 2**20:.1f} MiB"
                                                          for k, v in fresh.items()))
    for geometry, g in report.get("geometry", {}).items():
        print(f"\n== {geometry} (random weights), {g['config']['parameters'] / 1e6:.1f} M parameters, {g['data']}")
        a = g["agreement"]
        print(f"  mask IoU int8/float32 mean {a['mask_iou_mean']} (min {a['mask_iou_min']}), same emptiness "
              f"{a['same_emptiness']}, float32 foreground {a['float32_foreground_mean']}, logits correlation "
              f"{a['logits_correlation_mean']}, relative error {a['logits_relative_error_mean']}")
        _print_common(g, ("latency_segmentation_forward",))


def _print_common(res: dict, timings: tuple[str, ...]) -> None:
    mem = res["memory"]
    print("  weights: " + ", ".join(f"{k} {v:,} B" for k, v in mem["weight_bytes"].items())
          + f" (over float32: {mem['over_float32']})")
    peak = mem["forward_peak_extra_bytes"]
    if peak["float32"] is not None:
        print("  forward peak above the loaded model: " + ", ".join(f"{k} {v:,} B" for k, v in peak.items()))
    for name in timings:
        t = res[name]
        print(f"  {name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in t["ms"].items())
              + f"; over float32 {t['over_float32']} wall, {t['over_float32_cpu']} CPU")


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, run, print, write the JSON; returns the JSON object."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=500, help="fresh RefShapes test samples for the shipped model")
    ap.add_argument("--geometry", default="internvl3-1b",
                    help="random-weight geometry: internvl3-1b, or a tiny one (tiny, small, small112); '' skips it")
    ap.add_argument("--geometry-samples", type=int, default=8, help="RefShapes samples for the geometry")
    ap.add_argument("--batch", type=int, default=8, help="expressions per timed predict_many of the shipped model")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per variant first")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, steadiest on a shared machine)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    for name in ("samples", "geometry_samples", "batch", "repeats", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    info = bench_model_module().machine_info(args.threads, quantized_engine=torch.backends.quantized.engine)
    report: dict = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    report["default"] = bench_shipped(args.samples, args.batch, args.repeats, args.warmup, args.threads)
    geometries = [g for g in args.geometry.split(",") if g]
    report["geometry"] = {g: bench_geometry(g, args.geometry_samples, args.repeats, args.warmup) for g in geometries}
    print_summary(report)
    return bench_model_module().write_report(report, args.out)


if __name__ == "__main__":
    main()
