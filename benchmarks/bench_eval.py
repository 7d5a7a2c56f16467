"""Where evaluation time goes: the share of wall time spent outside the model.

``self1e eval`` on RefShapes written to disk (JSONL + PNG images and masks, as a real dataset is
read), with the predicted masks written back (``--save-masks``): the model's forward passes are
timed from inside (the forward of the loaded model wrapped), everything else (reading and decoding
the files, resizing, the metrics, writing) is the rest of the wall time. Measured in one run, with
and without the evaluation's prefetching of the next batch (``prefetch=0``), alternated over
``--repeats`` rounds; the median of each is reported.

    python benchmarks/bench_eval.py --samples 600 --repeats 3
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from self1e.data.datasets import load_dataset
from self1e.data.refshapes import generate
from self1e.eval.evaluate import PredictorSource, evaluate
from self1e.inference import Self1ePredictor

if str(Path(__file__).resolve().parent) not in sys.path:  # bench_model, also when loaded from a test
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import write_report  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "bench_eval.json"


def timed_forward(model) -> list[float]:
    """Wrap ``model.forward`` so each call's seconds are appended to the returned list."""
    seconds: list[float] = []
    forward = model.forward

    @functools.wraps(forward)
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    model.forward = run
    return seconds


def one_run(predictor, samples, batch_size: int, prefetch: int, forward_s: list[float], masks: Path) -> dict:
    forward_s.clear()
    start = time.perf_counter()
    result = evaluate(PredictorSource(predictor), samples, batch_size=batch_size, save_masks=masks,
                      progress=False, prefetch=prefetch)
    wall = time.perf_counter() - start
    model = sum(forward_s)
    return {"wall_s": wall, "model_s": model, "outside_share": 1 - model / wall, "cIoU": result.metrics["cIoU"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: self1e's choice)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "data", "test", args.samples, 2026, progress=False)
        samples = load_dataset(str(data))
        predictor = Self1ePredictor.from_pretrained(args.model, device="cpu", threads=args.threads)
        forward_s = timed_forward(predictor.model)
        runs: dict[str, list[dict]] = {"prefetch": [], "no_prefetch": []}
        for r in range(args.repeats):
            for name in (("prefetch", "no_prefetch") if r % 2 == 0 else ("no_prefetch", "prefetch")):
                runs[name].append(one_run(predictor, samples, args.batch_size, 1 if name == "prefetch" else 0,
                                          forward_s, Path(tmp) / f"masks-{name}"))
    summary = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    for name, s in summary.items():
        print(f"{name:12s} wall {s['wall_s']:.2f} s, model {s['model_s']:.2f} s, outside the model "
              f"{100 * s['outside_share']:.1f} %, cIoU {100 * s['cIoU']:.2f}")
    ratio = summary["no_prefetch"]["wall_s"] / summary["prefetch"]["wall_s"]
    print(f"wall without / with prefetch: {ratio:.2f}")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "threads": torch.get_num_threads(),
              "summary": summary, "no_prefetch_over_prefetch_wall": ratio, "runs": runs}
    return write_report(report, args.out)


if __name__ == "__main__":
    main()
