"""Throughput and latency of `self1e serve` on loopback: 1, 8 and 32 concurrent clients, dynamic
batching on (``--max-batch 8``) and off (``--max-batch 1``), in one run; with ``--ray`` also
`self1e serve --ray` with 1 and 2 model replicas (Ray Serve's batching, ``--max-batch 8``) beside them.

    python benchmarks/bench_serve.py [--model default] [--requests 96] [--ray [--replicas 1,2]]
                                     [--out benchmarks/results/bench_serve.json]

Each configuration is a fresh `self1e serve` process (the model on the CPU, torch's thread setting
as the server chooses it); the clients run in this process as threads, each sending its share of
``--requests`` `POST /v1/segment` requests (a 224 px RefShapes scene, two expressions) back to back.
Reports requests/s and the median and 95th-percentile latency; the batching ratio compares the same
client count with and without batching. Each Ray configuration starts its own local Ray (its start-up
is not timed: the clients start once /healthz answers) and stops it at the end.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CLIENTS = (1, 8, 32)
EXPRESSIONS = ["the red circle", "the blue star"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, ray_replicas: int | None = None) -> tuple[subprocess.Popen, str]:
    """`self1e serve` (or with ``ray_replicas``, `self1e serve --ray --replicas N`) on a free loopback port."""
    port = _free_port()
    ray = ["--ray", "--replicas", str(ray_replicas)] if ray_replicas else []
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "self1e.cli", "serve", "--model", model, "--device", "cpu",
                             "--port", str(port), "--max-batch", str(max_batch), "--queue-size", "256", *ray],
                            stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + (300 if ray else 120)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError("the server did not answer /healthz in time")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (a Ray server then shuts its app and its local Ray down), SIGKILL after 60 s."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_clients(url: str, body: dict, clients: int, requests: int) -> dict:
    import httpx

    per_client = max(1, requests // clients)
    latencies: list[float] = []

    def client(_):
        with httpx.Client(timeout=120) as c:
            out = []
            for _ in range(per_client):
                t = time.perf_counter()
                r = c.post(f"{url}/v1/segment", json=body)
                r.raise_for_status()
                out.append(time.perf_counter() - t)
            return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for lat in pool.map(client, range(clients)):
            latencies += lat
    wall = time.perf_counter() - start
    latencies.sort()
    return {"clients": clients, "requests": len(latencies), "seconds": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--requests", type=int, default=96, help="requests per configuration (default: %(default)s)")
    p.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="client counts (default: %(default)s)")
    p.add_argument("--ray", action="store_true", help="also `self1e serve --ray` with --replicas model replicas")
    p.add_argument("--replicas", default="1,2", help="Ray replica counts with --ray (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results/bench_serve.json")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    replicas = [int(r) for r in args.replicas.split(",")] if args.ray else []
    from self1e.data.datasets import load_dataset

    buf = io.BytesIO()
    load_dataset("refshapes:test:1:7")[0].load_image().save(buf, format="PNG")
    body = {"image": base64.b64encode(buf.getvalue()).decode(), "texts": EXPRESSIONS}
    rows = []
    for max_batch, n_replicas in [(8, None), (1, None)] + [(8, r) for r in replicas]:
        proc, url = start_server(args.model, max_batch, n_replicas)
        try:
            run_clients(url, body, 4, 8)  # warm-up
            for clients in counts:
                row = {"server": "ray" if n_replicas else "single", "replicas": n_replicas or 1,
                       "batching": max_batch > 1, "max_batch": max_batch,
                       **run_clients(url, body, clients, args.requests)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            stop_server(proc)
    single = {(r["batching"], r["clients"]): r for r in rows if r["server"] == "single"}
    on_ray = {(r["replicas"], r["clients"]): r for r in rows if r["server"] == "ray"}
    ratios = {f"{c}_clients_throughput_batched_over_unbatched":
              round(single[(True, c)]["requests_per_s"] / single[(False, c)]["requests_per_s"], 2) for c in counts}
    for n in replicas:
        for c in counts:
            ratios[f"{c}_clients_throughput_ray_{n}_replicas_over_single"] = round(
                on_ray[(n, c)]["requests_per_s"] / single[(True, c)]["requests_per_s"], 2)
    print(json.dumps(ratios, indent=1))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": args.model,
              "expressions_per_request": len(EXPRESSIONS), "rows": rows, "ratios": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
