"""One GPU, a few minutes: segmentation throughput, a LoRA training step, and each accelerate config.

At the InternVL3-2B geometry (``random:configs/models/internvl3-2b-hf``: the real shapes with random
weights, so nothing is downloaded), in bfloat16:

1. segmentation throughput through ``Self1ePredictor``: images/s (a batch of images, one expression
   each) and expressions/s (one image, 16 expressions, the image encoded once);
2. one training step of the recipe (``configs/internvl3_2b.yaml``: LoRA r 128 on the LLM and the
   ViT, gradient checkpointing, 4 images x 3 expressions): seconds per step and peak GPU memory;
3. a few steps of ``self1e train`` under each accelerate config a single GPU can run
   (``configs/accelerate/{ddp,deepspeed_zero2,deepspeed_zero3,fsdp}.yaml`` with one process): seconds
   per step, peak memory, or the error (DeepSpeed needs the ``deepspeed`` package; without it that
   config is reported as not run, with the reason).

    python benchmarks/bench_gpu.py                       # all three parts (sized for a few minutes; not yet run)
    python benchmarks/bench_gpu.py --parts predict,step  # a subset
    python benchmarks/bench_gpu.py --model tiny:tiny --device cpu --steps 2   # a smoke run (what the tests do)

Writes ``benchmarks/results/bench_gpu.json`` with the hardware; prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if str(Path(__file__).resolve().parent) not in sys.path:  # bench_model, also when loaded from a test
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = f"random:{ROOT / 'configs' / 'models' / 'internvl3-2b-hf'}"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bench_gpu.json"
ACCELERATE_CONFIGS = ("ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp")
EXPRESSIONS = ["the red circle", "the small blue square on the left", "the green triangle below the big star",
               "all the purple shapes", "the shape in the top right corner", "the second circle from the left",
               "the large orange hexagon", "the blue one", "the cross at the bottom", "the leftmost triangle",
               "the biggest shape", "the pink star above the grey circle", "the two small squares",
               "the shape in the middle", "the yellow circle", "the lowest shape"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def per_call(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_predict(model_name: str, device: torch.device, dtype: torch.dtype, images: int, repeats: int) -> dict:
    from self1e.inference import Self1ePredictor

    reset_peak(device)
    predictor = Self1ePredictor.from_pretrained(model_name, device=str(device), dtype=dtype)
    size = predictor.processor.image_size
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(images)]
    many = per_call(lambda: predictor.predict_many(pictures, EXPRESSIONS[:images]), repeats, device)
    predictor.set_image(pictures[0])
    one = per_call(lambda: predictor.predict_batch(EXPRESSIONS), repeats, device)
    return {"tile_px": size, "images_per_batch": images, "images_per_s": images / many,
            "expressions_per_image": len(EXPRESSIONS), "expressions_per_s": len(EXPRESSIONS) / one,
            "peak_gib": peak_gib(device)}


def recipe(model_name: str, out: str, overrides: list[str]):
    from self1e.train.config import load_config

    return load_config(ROOT / "configs" / "internvl3_2b.yaml",
                       [f"model={model_name}", "data=[refshapes:train:256:0]", "val=null", "num_workers=0",
                        "grad_accum=1", "log_every=1", "save_every=0", *overrides], out=out)


def bench_step(model_name: str, device: torch.device, dtype: torch.dtype, steps: int, batch_size: int) -> dict:
    """The recipe's trainable set and gradient checkpointing; bf16 weights (on a GPU the trainer uses
    bf16 autocast over float32 master weights instead: see part 3 for that path)."""
    from self1e.model import load_model
    from self1e.train.setup import build_batches, configure_trainable

    cfg = recipe(model_name, tempfile.mkdtemp(), [f"batch_size={batch_size}"])
    reset_peak(device)
    model = load_model(cfg.model, config=cfg.self1e, dtype=dtype, device=str(device))
    model.base.activation_checkpointing_enable({"use_reentrant": False})
    trainable = configure_trainable(model, cfg.lora)
    model.train()
    batches = iter(build_batches(cfg, model, 0, 1))
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas)

    def step():
        out = model(next(batches).to(device))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = per_call(step, steps, device)
    rows = cfg.batch_size * cfg.expressions_per_image
    return {"images_per_step": cfg.batch_size, "max_rows_per_step": rows, "seconds_per_step": seconds,
            "trainable_M": sum(p.numel() for p in trainable) / 1e6,
            "total_M": sum(p.numel() for p in model.parameters()) / 1e6, "peak_gib": peak_gib(device)}


def bench_accelerate(name: str, model_name: str, steps: int, batch_size: int, timeout: int) -> dict:
    """``steps`` optimizer steps of ``self1e train`` under one accelerate config, one process."""
    if name.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            return {"status": "not run", "reason": "the deepspeed package is not installed"}
    out = Path(tempfile.mkdtemp()) / name
    over = [f"model={model_name}", "data=[refshapes:train:256:0]", "val=null", "num_workers=0", "grad_accum=1",
            "log_every=1", "save_every=0", f"max_steps={steps}", f"batch_size={batch_size}"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / f"{name}.yaml"), "--num_processes", "1", "-m", "self1e.cli",
           "train", "--config", str(ROOT / "configs" / "internvl3_2b.yaml"), "--out", str(out),
           *(x for o in over for x in ("--set", o))]
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, "TQDM_DISABLE": "1"})
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": timeout}
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
        return {"status": "failed", "returncode": proc.returncode, "log_tail": tail}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if "time" in r]
    per_step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
    peak = re.findall(r"peak GPU memory ([\d.]+) GiB", proc.stdout + proc.stderr)
    return {"status": "ok", "steps": len(times), "seconds_per_step_after_first": per_step,
            "wall_s": round(time.time() - start, 1), "final_loss": rows[-1].get("loss"),
            "peak_gib": float(peak[-1]) if peak else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: the InternVL3-2B geometry)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--parts", default="predict,step,accelerate")
    ap.add_argument("--configs", default=",".join(ACCELERATE_CONFIGS), help="accelerate configs for part 3")
    ap.add_argument("--images", type=int, default=8, help="images per batch for images/s")
    ap.add_argument("--batch-size", type=int, default=4, help="training images per step (x3 expressions)")
    ap.add_argument("--steps", type=int, default=5, help="timed calls / training steps per measurement")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per accelerate run")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    parts = set(args.parts.split(","))
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "model": args.model, "dtype": args.dtype,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(info), flush=True)
    results: dict = {}
    if "predict" in parts:
        results["predict"] = bench_predict(args.model, device, dtype, args.images, args.steps)
        print("predict", json.dumps(results["predict"]), flush=True)
    if "step" in parts:
        results["train_step"] = bench_step(args.model, device, dtype, args.steps, args.batch_size)
        print("train_step", json.dumps(results["train_step"]), flush=True)
    if "accelerate" in parts:
        results["accelerate"] = {}
        for name in filter(None, args.configs.split(",")):
            results["accelerate"][name] = bench_accelerate(name, args.model, args.steps, args.batch_size,
                                                           args.timeout)
            print(name, json.dumps(results["accelerate"][name]), flush=True)
    report = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    return write_report(report, args.out)


if __name__ == "__main__":
    main()
