"""Throughput and latency of `fastinv serve` over HTTP: model replicas × max batch size × concurrent clients.

python benchmarks/serve.py [--replicas 1,2] [--batches 1,8] [--clients 1,4,16] [--requests 24] [--steps 10]

A local Ray with this machine's CPUs runs the service (`fastinv.serve.deploy`, the shipped default model) once
per replicas × max batch size; each client count then sends --requests POST /v1/invert requests (euler,
--steps steps, the 6 held-out photos as PNG files, in turn) from that many threads, each with its own
keep-alive connection, after 4 warm-up requests. Per setting: requests per second, p50 / p99 latency, the
mean size of the batched calls the requests ran in, and the batching gain (throughput over max batch size
1's at the same replicas and clients). Writes serve.json (figures, command, hardware, versions) to --out.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import shlex
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import ray
import requests
from PIL import Image
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv import serve
from fastinv.files import save_json
from fastinv.training.photos import HELD_OUT, load_photo

console = Console()


def photo_files() -> list[bytes]:
    """The held-out photos as PNG files."""
    files = []
    for name in HELD_OUT:
        buffer = io.BytesIO()
        Image.fromarray(load_photo(name)).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def burst(url: str, files: list[bytes], requests_count: int, clients: int, steps: int) -> dict[str, Any]:
    """Send `requests_count` inversions from `clients` threads; seconds, latencies and batch sizes."""
    local = threading.local()

    def one(index: int) -> tuple[float, int]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        start = time.perf_counter()
        response = local.session.post(
            f"{url}/v1/invert",
            data=files[index % len(files)],
            params={"method": "euler", "steps": steps},
            timeout=600,
        )
        response.raise_for_status()
        return time.perf_counter() - start, response.json()["batch"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests_count)))
    seconds = time.perf_counter() - start
    latencies = sorted(latency for latency, _ in results)
    return {
        "seconds": seconds,
        "requests_per_second": requests_count / seconds,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "mean_batch": statistics.mean(batch for _, batch in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--batches", default="1,8", help="max batch sizes")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=24, help="per setting (24: about 5 min on 2 cores)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    files = photo_files()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    rows: list[dict[str, Any]] = []
    try:
        for replicas in (int(r) for r in args.replicas.split(",")):
            for max_batch in (int(b) for b in args.batches.split(",")):
                with console.status(f"deploying {replicas} replica(s), max batch {max_batch}"):
                    service = serve.deploy({}, port=port, replicas=replicas, max_batch_size=max_batch)
                    burst(service.url, files, 4, 4, args.steps)  # warm-up
                for clients in (int(c) for c in args.clients.split(",")):
                    with console.status(f"{replicas} replica(s), max batch {max_batch}, {clients} clients"):
                        result = burst(service.url, files, args.requests, clients, args.steps)
                    console.print(
                        f"{replicas} replica(s), max batch {max_batch}, {clients} clients: "
                        f"{result['requests_per_second']:.2f} req/s"
                    )
                    rows.append(
                        {"replicas": replicas, "max_batch_size": max_batch, "clients": clients} | result
                    )
                serve.undeploy(shutdown=False)
    finally:
        serve.undeploy(shutdown=True)
        ray.shutdown()
    single = {
        (r["replicas"], r["clients"]): r["requests_per_second"] for r in rows if r["max_batch_size"] == 1
    }
    for row in rows:
        base = single.get((row["replicas"], row["clients"]))
        row["batching_gain"] = None if base is None else row["requests_per_second"] / base
    table = Table(title=f"fastinv serve: {args.requests} euler inversions at {args.steps} steps per setting")
    for column in ("replicas", "max batch", "clients", "req/s", "p50 s", "p99 s", "mean batch", "× batch 1"):
        table.add_column(column, justify="right")
    for row in rows:
        gain = row["batching_gain"]
        table.add_row(
            str(row["replicas"]),
            str(row["max_batch_size"]),
            str(row["clients"]),
            f"{row['requests_per_second']:.2f}",
            f"{row['p50_s']:.3f}",
            f"{row['p99_s']:.3f}",
            f"{row['mean_batch']:.1f}",
            "" if gain is None else f"{gain:.2f}",
        )
    console.print(table)
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "requests": args.requests,
            "steps": args.steps,
            "method": "euler",
            "photos": list(HELD_OUT),
        },
        "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "versions": {
            "fastinv": fastinv.__version__,
            "ray": ray.__version__,
            "torch": version("torch"),
            "fastapi": version("fastapi"),
        },
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out / 'serve.json')}")


if __name__ == "__main__":
    main()
