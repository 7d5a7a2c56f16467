"""The shipped model's evaluation on an idle CPU and beside other work, with self1e's thread
settings and with torch's defaults, in one run.

    python benchmarks/bench_threads.py [--samples 200] [--out benchmarks/results/bench_threads.json]

Each measurement is a fresh `self1e eval --model default` process on the same fresh RefShapes
samples; its time is the evaluation's own (the report's ``throughput.seconds``, model loading
excluded). Beside it, this script starts and afterwards stops (by its pid) one of:

- ``torch``: another PyTorch process doing small matrix products on torch's default threads and
  OpenMP settings (what a second notebook or training job does);
- ``python``: a plain busy Python loop (one core taken).

Settings: ``self1e`` (what the library chooses: sleeping OpenMP threads, one thread for the small
shipped model), ``self1e-2-threads`` (sleeping threads, two of them: ``SELF1E_THREADS=2``) and
``torch-default`` (``SELF1E_THREADS=0``: torch's own thread count and OpenMP's spinning wait).
Target: loaded / idle <= 2 with self1e's settings.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEIGHBOURS = {
    "torch": "import torch\na = torch.randn(96, 96)\nwhile True:\n    a = torch.tanh(a @ a)\n",
    "python": "x = 0\nwhile True:\n    x = (x * 31 + 7) % 1000003\n",
}
SETTINGS = {"self1e": {}, "self1e-2-threads": {"SELF1E_THREADS": "2"}, "torch-default": {"SELF1E_THREADS": "0"}}


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "SELF1E_THREADS",
                                                            "MKL_NUM_THREADS", "GOMP_SPINCOUNT")}
    return {**env, **extra}


def evaluate(spec: str, extra: dict[str, str], timeout: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "self1e.cli", "eval", "--model", "default", "--device", "cpu",
                        "--data", spec, "--out", str(out)], env=clean_env(extra), check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(json.loads(out.read_text())["throughput"]["seconds"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per evaluation")
    p.add_argument("--out", default="benchmarks/results/bench_threads.json")
    args = p.parse_args(argv)
    spec = f"refshapes:test:{args.samples}:77"
    rows = []
    for name, extra in SETTINGS.items():
        idle = evaluate(spec, extra, args.timeout)
        row = {"settings": name, "idle_s": round(idle, 2)}
        for neighbour, code in NEIGHBOURS.items():
            proc = subprocess.Popen([sys.executable, "-c", code], env=clean_env({}),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(2.0)  # let it get going
                loaded = evaluate(spec, extra, args.timeout)
            finally:
                proc.kill()
                proc.wait(10)
            row[f"beside_{neighbour}_s"] = round(loaded, 2)
            row[f"beside_{neighbour}_over_idle"] = round(loaded / idle, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "data": spec, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
