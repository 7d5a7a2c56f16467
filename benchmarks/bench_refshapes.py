"""RefShapes generation speed: samples per second written to disk (one core), and in memory.

    python benchmarks/bench_refshapes.py [--n 4000] [--size 224] [--dir /dev/shm]
"""
from __future__ import annotations

import argparse
import tempfile
import time

from self1e.data.refshapes import generate, iter_scenes, render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--per-image", type=int, default=4)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder; "
                                                "/dev/shm measures CPU rather than the disk)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        t = time.perf_counter()
        generate(d, "train", args.n, seed=0, size=args.size, progress=False, per_image=args.per_image)
        disk = args.n / (time.perf_counter() - t)
    t = time.perf_counter()
    for item in iter_scenes("train", 1, args.n, args.size, args.per_image):
        render(item.scene)
    memory = args.n / (time.perf_counter() - t)
    print(f"RefShapes {args.size}px, {args.per_image} samples/image: {disk:.0f} samples/s written "
          f"(JSONL + PNG), {memory:.0f} samples/s in memory")


if __name__ == "__main__":
    main()
