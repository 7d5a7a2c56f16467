"""What the predictor's caches and batching save: one image with 1, 4 and 16 expressions.

For each geometry (the tiny test config, and InternVL3-1B's real shapes with random weights, built by
``bench_model.build_base``), timed through ``Self1ePredictor`` and measured in one run as ratios:

(a) cached image features (``set_image`` once, then ``predict_batch``) against encoding the image on
    every call (``set_image`` + ``predict_batch``);
(b) batched (``predict_batch`` of all expressions) against sequential (``predict`` of each);
(c) under ``seg_attention="causal"``: the language model's keys and values for the prompt up to and
    including the image computed once per image and reused (``reuse_prefix=True``) against running
    the whole prompt for every expression.

(a) and (b) use the default bidirectional model, where no prefix can be reused; (c) a causal twin
sharing its weights. Variants are interleaved in rounds with the order rotated each round
(``bench_model.timed``); each ratio is the median over rounds of the ratio within a round.

    python benchmarks/bench_predictor.py --geometry tiny,internvl3-1b --repeats 3 --threads 1
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from self1e.inference import Self1ePredictor
from self1e.model import Self1eConfig, Self1eModel

if str(Path(__file__).resolve().parent) not in sys.path:  # bench_model, also when loaded from a test
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_base, run_geometries, timed  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "bench_predictor.json"
COUNTS = (1, 4, 16)
EXPRESSIONS = [  # of different lengths, so batched rows pad as they do in use
    "the red circle", "star", "the small blue square on the left", "the green triangle below the big yellow star",
    "all the purple shapes", "the shape in the top right corner", "the second circle from the left",
    "the large orange hexagon next to the small red square", "the blue one", "the cross at the bottom",
    "the yellow circle that is partly hidden behind the green square", "the leftmost triangle",
    "the biggest shape", "the pink star above the grey circle", "the two small squares at the top left",
    "the shape in the middle"]
# (label, numerator variant, denominator variant): ratios > 1 mean the denominator is faster.
RATIOS = [("encode_per_call_over_cached", "encode_per_call", "cached"),  # (a)
          ("sequential_over_batched", "sequential", "cached"),  # (b)
          ("no_prefix_over_prefix", "causal_no_prefix", "causal_prefix"),  # (c): the prefix reuse speed-up
          ("prefix_first_call_over_no_prefix", "causal_prefix_first", "causal_no_prefix"),
          ("prefix_sequential_over_prefix_batched", "causal_prefix_sequential", "causal_prefix"),
          ("causal_over_bidirectional", "causal_no_prefix", "cached")]
VARIANTS = ["cached", "encode_per_call", "sequential", "causal_no_prefix", "causal_prefix", "causal_prefix_first",
            "causal_prefix_sequential"]


def build(geometry: str, dtype: torch.dtype) -> tuple[Self1eModel, Self1eModel, np.ndarray]:
    """The default (bidirectional, rfa) model, a causal twin sharing its base and head, and one
    random image at the model's tile size (one tile, as bench_model.py)."""
    base, tokenizer = build_base(geometry)
    base.to(dtype)
    model = Self1eModel.from_base(base, tokenizer, Self1eConfig(mask_head="rfa", seg_attention="bidirectional")).eval()
    causal = Self1eModel.from_base(base, tokenizer, Self1eConfig(mask_head="rfa", seg_attention="causal")).eval()
    causal.head = model.head  # the same weights; only the attention mask differs
    size = model.processor.image_size
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return model, causal, image


def variants(model: Self1eModel, causal: Self1eModel, image: np.ndarray,
             texts: list[str]) -> dict[str, Callable[[], object]]:
    """The timed calls for one expression count. Every predictor but ``encode_per_call``'s has the
    image set beforehand; ``causal_prefix``'s prefix is computed by its warm-up call and then reused."""
    cached, per_call = Self1ePredictor(model), Self1ePredictor(model)
    no_prefix, prefix = Self1ePredictor(causal, reuse_prefix=False), Self1ePredictor(causal)
    first = Self1ePredictor(causal)
    for p in (cached, no_prefix, prefix, first):
        p.set_image(image)

    def encode_per_call() -> object:
        per_call.set_image(image)
        return per_call.predict_batch(texts)

    def prefix_first() -> object:  # the first call after set_image, which computes the prefix
        first._prefix = None  # what set_image does, without re-running the vision side
        return first.predict_batch(texts)

    return {"cached": lambda: cached.predict_batch(texts),
            "encode_per_call": encode_per_call,
            "sequential": lambda: [cached.predict(t) for t in texts],
            "causal_no_prefix": lambda: no_prefix.predict_batch(texts),
            "causal_prefix": lambda: prefix.predict_batch(texts),
            "causal_prefix_first": prefix_first,
            "causal_prefix_sequential": lambda: [prefix.predict(t) for t in texts]}


def check(model: Self1eModel, causal: Self1eModel, image: np.ndarray, texts: list[str]) -> dict:
    """Every compared pair gives the same masks (max |diff| of the mask logits; cached features
    against ``predict_images``, the uncached model pass, at the image's size, the rest at the head's
    grid), and how many tokens the language model runs per row with and without the cached prefix."""
    bidi, prefix = Self1ePredictor(model), Self1ePredictor(causal)
    no_prefix = Self1ePredictor(causal, reuse_prefix=False)
    for p in (bidi, no_prefix, prefix):
        p.set_image(image)
    batched = bidi.predict_torch(texts, original_size=False)
    single = torch.cat([bidi.predict_torch([t], original_size=False) for t in texts])
    uncached = torch.from_numpy(np.stack([r.logits for r in bidi.predict_images([image], [texts])[0]]))
    lengths: list[int] = []
    hook = causal.base.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: lengths.append(int(kwargs["inputs_embeds"].shape[1])), with_kwargs=True)
    try:
        plain = no_prefix.predict_torch(texts, original_size=False)
        reused = prefix.predict_torch(texts, original_size=False)
    finally:
        hook.remove()
    if prefix._prefix is None:
        raise RuntimeError("the causal predictor did not cache its prompt prefix")
    diff = lambda a, b: float((a.float() - b.float()).abs().max())  # noqa: E731
    return {"max_abs_diff": {"prefix_vs_no_prefix": diff(reused, plain), "batched_vs_sequential": diff(batched, single),
                             "cached_vs_uncached": diff(bidi.predict_torch(texts), uncached)},
            "expressions": len(texts), "sequence_length": lengths[0], "prefix_length": prefix._prefix.length,
            "llm_tokens_per_row": {"no_prefix": lengths[0], "prefix_pass": lengths[1], "with_prefix": lengths[2]}}


def ratios(runs: dict[str, list[float]], n: int) -> dict[str, float]:
    """Per expression count, each ratio the median over rounds of the ratio within one round."""
    rounds = len(runs[f"cached@{n}"])
    return {label: round(statistics.median(runs[f"{a}@{n}"][r] / runs[f"{b}@{n}"][r] for r in range(rounds)), 4)
            for label, a, b in RATIOS}


@torch.inference_mode()
def bench_geometry(geometry: str, repeats: int, warmup: int, dtype: torch.dtype) -> dict:
    start = time.perf_counter()
    model, causal, image = build(geometry, dtype)
    build_s = time.perf_counter() - start
    fns: dict[str, Callable[[], object]] = {}
    for n in COUNTS:
        fns.update({f"{name}@{n}": fn for name, fn in variants(model, causal, image, EXPRESSIONS[:n]).items()})
    checks = check(model, causal, image, EXPRESSIONS[:max(COUNTS)])
    print(f"[{geometry}] built in {build_s:.0f} s; timing {len(fns)} variants x {repeats}", flush=True)
    wall, cpu = timed(fns, repeats, warmup)
    text = model.base.config.text_config
    return {
        "config": {"image_size": model.processor.image_size, "hidden_size": text.hidden_size,
                   "layers": text.num_hidden_layers, "vocab_size": text.vocab_size,
                   "base_parameters": sum(t.numel() for t in model.base.parameters()),
                   "dtype": str(dtype).removeprefix("torch."), "build_seconds": round(build_s, 1)},
        "ms": {k: round(statistics.median(v), 3) for k, v in wall.items()},
        "cpu_ms": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
        "runs_ms": {k: [round(x, 3) for x in v] for k, v in wall.items()},
        "runs_cpu_ms": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "ratios": {str(n): ratios(wall, n) for n in COUNTS},
        "cpu_ratios": {str(n): ratios(cpu, n) for n in COUNTS},
        "checks": checks,
    }


def print_table(results: dict[str, dict]) -> None:
    for geometry, res in results.items():
        cfg, c = res["config"], res["checks"]
        print(f"\n== {geometry}: C={cfg['hidden_size']}, {cfg['base_parameters'] / 1e6:.1f} M params, {cfg['dtype']}; "
              f"L={c['sequence_length']} tokens, prefix {c['prefix_length']} cached")
        print(f"  {'variant (wall ms)':<26}" + "".join(f"{f'{n} expr':>12}" for n in COUNTS))
        for name in VARIANTS:
            print(f"  {name:<26}" + "".join(f"{res['ms'][f'{name}@{n}']:>12.2f}" for n in COUNTS))
        print(f"  {'ratio (wall; cpu)':<40}" + "".join(f"{f'{n} expr':>16}" for n in COUNTS))
        for label, _, _ in RATIOS:
            cells = [f"{res['ratios'][str(n)][label]:.3f}; {res['cpu_ratios'][str(n)][label]:.3f}" for n in COUNTS]
            print(f"  {label:<40}" + "".join(f"{cell:>16}" for cell in cells))
        print(f"  max |diff| of mask logits: {c['max_abs_diff']}")


def main(argv: list[str] | None = None) -> dict:
    return run_geometries(__doc__.splitlines()[0], bench_geometry, print_table, DEFAULT_OUT, argv, "timed rounds")


if __name__ == "__main__":
    main()
