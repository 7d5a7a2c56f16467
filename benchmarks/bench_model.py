"""Latency of the SELF1E segmentation forward against a plain InternVL forward on the same weights.

For each geometry (the tiny test config, and InternVL3-1B's real shapes with random weights) one
image and one expression are timed through: transformers' own forward (``plain``), the mask path
under several settings, the mask head alone, and ``sdpa`` against ``eager`` attention under the
segmentation mask. Variants are interleaved; wall and process-CPU medians of ``--repeats`` runs are
reported. On a shared machine ``--threads 1`` with the CPU-time columns gives the steadiest ratios.

    python benchmarks/bench_model.py --geometry tiny,internvl3-1b --repeats 5 [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import InternVLConfig, InternVLForConditionalGeneration, PreTrainedModel, Qwen2Config
from transformers.models.internvl import modeling_internvl
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
from transformers.models.qwen2 import modeling_qwen2

from self1e.model import Self1eConfig, Self1eModel
from self1e.model.config import INFERENCE_ANSWER
from self1e.model.pixel_shuffle import project_replicated
from self1e.model.processing import IGNORE_INDEX, IMG_CONTEXT, Batch
from self1e.model.self1e import Self1eOutput
from self1e.model.tiny import TINY_SPECS, build_tiny_base, build_tokenizer

EXPRESSION = "the red circle on the left"
DEFAULT_OUT = Path(__file__).parent / "results" / "bench_model.json"


def checked(cls: type, **kwargs):
    """Build a transformers config, refusing field names it does not know (it would accept them silently)."""
    unknown = set(kwargs) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return cls(**kwargs)


def internvl3_1b_config(image_token_id: int) -> InternVLConfig:
    """InternVL3-1B-hf shapes: InternViT-300M (448 px) + Qwen2.5-0.5B with the real 151,674 vocabulary.
    Embeddings are untied (as for InternVL3-2B); tying would not change the timing."""
    vision = checked(InternVLVisionConfig, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, patch_size=(14, 14), image_size=(448, 448), norm_type="layer_norm",
                     attention_bias=True, use_qk_norm=False, layer_norm_eps=1e-6)
    text = checked(Qwen2Config, vocab_size=151674, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                   num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    return checked(InternVLConfig, vision_config=vision, text_config=text, image_token_id=image_token_id,
                   image_seq_length=256, tie_word_embeddings=False)


def build_base(geometry: str) -> tuple[InternVLForConditionalGeneration, object]:
    """Random-weight InternVL base and the tiny word-level tokenizer (which has InternVL's image tokens)."""
    if geometry in TINY_SPECS:
        return build_tiny_base(geometry, seed=0)
    if geometry != "internvl3-1b":
        raise ValueError(f"unknown geometry {geometry!r}; choose from {sorted(TINY_SPECS) + ['internvl3-1b']}")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    base = InternVLForConditionalGeneration(internvl3_1b_config(tokenizer.convert_tokens_to_ids(IMG_CONTEXT)))
    return base.eval(), tokenizer


@contextlib.contextmanager
def attention(module: PreTrainedModel, impl: str) -> Iterator[None]:
    """Run ``module`` (the whole InternVL, or only its language model) under ``impl``, then sdpa again."""
    module.set_attn_implementation(impl)
    try:
        yield
    finally:
        module.set_attn_implementation("sdpa")


@contextlib.contextmanager
def count_eager_calls() -> Iterator[dict[str, mock.MagicMock]]:
    """Spies on the LLM's and the ViT's eager attention. transformers looks these functions up in their
    modules at call time, so patching the module attributes sees every call."""
    name = "eager_attention_forward"
    with mock.patch.object(modeling_qwen2, name, wraps=getattr(modeling_qwen2, name)) as llm, \
         mock.patch.object(modeling_internvl, name, wraps=getattr(modeling_internvl, name)) as vit:
        yield {"llm": llm, "vit": vit}


def timed(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
          min_run_s: float = 0.05) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU milliseconds per call, variants interleaved and their order rotated each
    round to spread drift. Fast variants loop inside one run (at least ``min_run_s``) so timer and
    scheduler noise averages out. CPU time (all threads) is the steadier number on a shared machine."""
    names, warmup = list(fns), max(warmup, 1)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    number = {}
    for name in names:  # warm-up, which also sets the calls per run
        start = time.perf_counter()
        for _ in range(warmup):
            fns[name]()
        number[name] = max(1, round(min_run_s * warmup / (time.perf_counter() - start)))
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(number[name]):
                fns[name]()
            wall[name].append((time.perf_counter() - start) * 1e3 / number[name])
            cpu[name].append((time.process_time() - start_cpu) * 1e3 / number[name])
    return wall, cpu


def build(geometry: str, dtype: torch.dtype) -> tuple[Self1eModel, Self1eModel, Batch, Batch]:
    """The rfa model (bidirectional mask), a causal-mask twin sharing its base and head, the
    segmentation batch (one image, one expression; no LM targets) and the same prompt with LM labels
    on the answer "[SEG]." as a training or validation batch has them."""
    base, tokenizer = build_base(geometry)
    base.to(dtype)
    model = Self1eModel.from_base(base, tokenizer, Self1eConfig(mask_head="rfa", seg_attention="bidirectional")).eval()
    causal = Self1eModel.from_base(base, tokenizer, Self1eConfig(mask_head="rfa", seg_attention="causal")).eval()
    causal.head = model.head  # same weights everywhere; only the attention mask differs
    p = model.processor
    pixels = np.random.default_rng(0).integers(0, 255, (p.image_size, p.image_size, 3), dtype=np.uint8)
    image = p.image_input(Image.fromarray(pixels))
    batch = p.segmentation_batch([image], [EXPRESSION]).to("cpu", dtype)
    row = p.conversation(p.seg_question(EXPRESSION), INFERENCE_ANSWER, image.grid, close=False)
    labelled = p.collate([row], [image], [0]).to("cpu", dtype)
    if not torch.equal(batch.input_ids, labelled.input_ids):
        raise RuntimeError("segmentation_batch and conversation() disagree on the prompt")
    return model, causal, batch, labelled


def variants(model: Self1eModel, causal: Self1eModel, batch: Batch, labelled: Batch) -> dict[str, Callable[[], object]]:
    """The timed calls. ``seg*`` compute masks only (no LM targets) unless named ``labelled``."""
    base, inner = model.base, model.base.model
    batch = replace(batch, labels=torch.full_like(batch.labels, IGNORE_INDEX))  # masks only
    # Head-only inputs at the real shapes: encoder features from the model, LLM states random.
    vc = base.config.vision_config
    g = vc.image_size[0] // vc.patch_size[0]
    f_v0 = inner.vision_tower(pixel_values=batch.pixel_values).last_hidden_state[:, 1:].reshape(1, g, g, -1)
    feats = model.encode_images(batch.pixel_values, batch.grids)
    f_v1, f_hq = feats.f_v1[0][None], feats.f_v1_hq[0][None]
    f_img, h_seg = torch.randn_like(f_v1), torch.randn_like(f_v1[:, 0, 0])

    def eager(module: PreTrainedModel) -> Callable[[], Self1eOutput]:
        def run() -> Self1eOutput:
            with attention(module, "eager"):
                return model(batch)
        return run

    return {
        "plain": lambda: base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              pixel_values=batch.pixel_values),
        "seg": lambda: model(batch),
        "seg_causal": lambda: causal(batch),
        "seg_lm_logits": lambda: model(batch, return_lm_logits=True),
        "seg_labelled": lambda: model(labelled),  # LM loss on "[SEG].": a causal pass, lm_head, CE
        "seg_eager": eager(base),  # ViT and LLM, as from_pretrained(attn_implementation="eager")
        "seg_eager_llm": eager(inner.language_model),  # only the LLM, where the segmentation mask is
        "head": lambda: model.head(f_img, h_seg, f_v1, f_hq),
        "hq_projection": lambda: project_replicated(inner.multi_modal_projector, f_v0),
    }


def check(model: Self1eModel, fns: dict[str, Callable[[], object]], batch: Batch, labelled: Batch) -> dict:
    """Eager really runs where asked (and sdpa never falls back to it), with the same masks; and how
    many LLM passes the labelled batch costs; whether ``segmentation_batch`` gives LM targets."""
    n_llm, n_vit = model.base.config.text_config.num_hidden_layers, model.base.config.vision_config.num_hidden_layers
    expected = {"seg": {"llm": 0, "vit": 0}, "seg_eager": {"llm": n_llm, "vit": n_vit},
                "seg_eager_llm": {"llm": n_llm, "vit": 0}}
    masks, calls = {}, {}
    for name in expected:
        with count_eager_calls() as counted:
            masks[name] = fns[name]().mask_logits[0]
        calls[name] = {k: spy.call_count for k, spy in counted.items()}
    if calls != expected:
        raise RuntimeError(f"attention switch failed: eager calls {calls}, expected {expected}")
    passes: list[int] = []
    hook = model.base.model.language_model.register_forward_hook(lambda *_: passes.append(1))
    model(labelled)
    hook.remove()
    return {"eager_calls": calls, "mask_grid": list(masks["seg"].shape), "llm_passes_labelled": len(passes),
            "segmentation_batch_has_labels": bool((batch.labels != IGNORE_INDEX).any()),
            "max_abs_diff_vs_sdpa": {k: float((m - masks["seg"]).abs().max()) for k, m in masks.items()}}


@torch.inference_mode()
def bench_geometry(geometry: str, repeats: int, warmup: int, dtype: torch.dtype) -> dict:
    """Build one geometry, check it, time every variant; medians, raw runs, ratios and checks."""
    start = time.perf_counter()
    model, causal, batch, labelled = build(geometry, dtype)
    build_s = time.perf_counter() - start
    fns = variants(model, causal, batch, labelled)
    checks = check(model, fns, batch, labelled)
    print(f"[{geometry}] built in {build_s:.0f} s; timing {len(fns)} variants x {repeats}", flush=True)
    wall, cpu = timed(fns, repeats, warmup)
    ms = {k: round(statistics.median(v), 3) for k, v in wall.items()}
    cpu_ms = {k: round(statistics.median(v), 3) for k, v in cpu.items()}
    cpu_ratios = ratios(cpu)
    checks["within_5pct_of_plain_cpu"] = {k: cpu_ratios[f"{k}_over_plain"] <= 1.05
                                          for k in ("seg", "seg_lm_logits", "seg_labelled")}
    text = model.base.config.text_config
    return {
        "config": {"image_size": model.processor.image_size, "sequence_length": int(batch.input_ids.shape[1]),
                   "image_tokens": model.processor.tokens_per_tile, "hidden_size": text.hidden_size,
                   "vocab_size": text.vocab_size, "base_parameters": sum(t.numel() for t in model.base.parameters()),
                   "head_parameters": sum(t.numel() for t in model.head.parameters()),
                   "dtype": str(dtype).removeprefix("torch."), "build_seconds": round(build_s, 1)},
        "ms": ms, "cpu_ms": cpu_ms,
        "runs_ms": {k: [round(x, 3) for x in v] for k, v in wall.items()},
        "runs_cpu_ms": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "ratios": ratios(wall), "cpu_ratios": cpu_ratios, "checks": checks,
    }


def ratios(runs: dict[str, list[float]]) -> dict[str, float]:
    """The headline ratios, each the median over rounds of the ratio within one round: the variants of
    a round ran back to back, so slow drift from other load on the machine cancels out."""
    per_round = []
    for r in range(len(runs["plain"])):
        ms = {k: v[r] for k, v in runs.items()}
        out = {f"{k}_over_plain": ms[k] / ms["plain"] for k in ("seg", "seg_causal", "seg_lm_logits", "seg_labelled")}
        out["head_share_of_plain"] = (ms["head"] + ms["hq_projection"]) / ms["plain"]
        out["eager_over_sdpa"] = ms["seg_eager"] / ms["seg"]
        out["eager_llm_over_sdpa"] = ms["seg_eager_llm"] / ms["seg"]
        per_round.append(out)
    return {k: round(statistics.median(x[k] for x in per_round), 4) for k in per_round[0]}


def print_table(results: dict[str, dict]) -> None:
    for geometry, res in results.items():
        cfg, ms, cpu = res["config"], res["ms"], res["cpu_ms"]
        print(f"\n== {geometry}: L={cfg['sequence_length']}, C={cfg['hidden_size']}, V={cfg['vocab_size']}, "
              f"{cfg['base_parameters'] / 1e6:.1f} M params, {cfg['dtype']}, mask {res['checks']['mask_grid']}")
        print(f"  {'variant':<16}{'wall ms':>12}{'cpu ms':>12}{'wall/plain':>12}{'cpu/plain':>12}")
        for name in ms:
            print(f"  {name:<16}{ms[name]:>12.2f}{cpu[name]:>12.2f}{ms[name] / ms['plain']:>12.3f}"
                  f"{cpu[name] / cpu['plain']:>12.3f}")
        print(f"  {'ratio (median within rounds)':<30}{'wall':>8}{'cpu':>8}")
        for name, value in res["ratios"].items():
            print(f"  {name:<30}{value:>8.3f}{res['cpu_ratios'][name]:>8.3f}")


def geometry_args(ap: argparse.ArgumentParser, default_out: Path, what: str = "timed runs per variant") -> None:
    """The options this script shares with the other geometry benchmarks (bench_predictor.py)."""
    ap.add_argument("--geometry", default="tiny,internvl3-1b", help="comma-separated: tiny, small, internvl3-1b")
    ap.add_argument("--repeats", type=int, default=3, help=f"{what} (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", type=Path, default=default_out)


def machine_info(threads: int | None = None, **extra) -> dict:
    """Set torch's threads (when given) and describe the machine and software; printed as one line."""
    if threads:
        torch.set_num_threads(threads)
    info = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}
    print(f"torch {info['torch']}, transformers {info['transformers']}, {info['threads']} threads, "
          f"{info['cpu_count']} CPUs", flush=True)
    return info


def write_report(report: dict, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return report


def run_geometries(description: str, bench: Callable, table: Callable, default_out: Path,
                   argv: list[str] | None, what: str = "timed runs per variant") -> dict:
    """A geometry benchmark's command line: parse, ``bench(geometry, repeats, warmup, dtype)`` for
    each geometry, print ``table(results)``, write the JSON; returns the JSON object."""
    ap = argparse.ArgumentParser(description=description)
    geometry_args(ap, default_out, what)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    info = machine_info(args.threads)
    results = {g: bench(g, args.repeats, args.warmup, getattr(torch, args.dtype)) for g in args.geometry.split(",")}
    table(results)
    return write_report({"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                        args.out)


def main(argv: list[str] | None = None) -> dict:
    return run_geometries(__doc__.splitlines()[0], bench_geometry, print_table, DEFAULT_OUT, argv)


if __name__ == "__main__":
    main()
