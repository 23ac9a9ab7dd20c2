"""Load test for `smalltune serve`: throughput and latency at several concurrency levels.

Starts `smalltune serve RUN_DIR` on a loopback port, then for each concurrency level keeps that many
requests in flight (held-out records of the run's task, cycled) for --seconds, and prints one row
per level: requests/s, p50/p95 latency of answered requests, 429s and other errors by status.
The last level is above what the server accepts (max-queue + batch size), so it shows 429s.

    python benchmarks/serve_load.py runs/complaints --seconds 30
    python benchmarks/serve_load.py runs/complaints --seconds 5 --levels 1,4 --max-queue 4   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from rich.console import Console
from rich.table import Table

from smalltune.config import TaskConfig, load_config
from smalltune.data.records import Record, load_splits
from smalltune.tasks import build_task

@dataclass
class LevelResult:
    """What one concurrency level measured."""

    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    unparsed: int = 0  # answered 200, but the task's parser rejected the answer

    def row(self) -> list[str]:
        ok = sorted(self.latencies)
        others = {s: n for s, n in sorted(self.statuses.items(), key=str) if s not in (200, 429)}
        return [
            str(self.concurrency), f"{len(ok) / self.seconds:.2f}",
            f"{percentile(ok, 0.50):.2f}" if ok else "-", f"{percentile(ok, 0.95):.2f}" if ok else "-",
            str(len(ok)), str(self.unparsed), str(self.statuses.get(429, 0)),
            ", ".join(f"{s}: {n}" for s, n in others.items()) or "-",
        ]


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def request_for(config: TaskConfig, record: Record) -> tuple[str, dict]:
    """The endpoint and body a client of this task would send for the record."""
    if config.kind == "extract":
        return "/v1/extract", {"text": record.input, "id": record.id}
    if config.kind == "classify":
        return "/v1/classify", {"text": record.input, "id": record.id, "candidates": list(record.candidates) or None}
    return "/v1/chat/completions", {"model": config.name, "messages": build_task(config).messages(record)}


def held_out(config: TaskConfig) -> list[Record]:
    """The run's test records (validation records when there is no test split)."""
    splits = load_splits(config.data, check=build_task(config).check)
    records = splits.test or splits.validation
    if not records:
        sys.exit(f"{config.data.train}: the task has no held-out records to send")
    return records


async def run_level(url: str, requests: list[tuple[str, dict]], concurrency: int, seconds: float, grace: float) -> LevelResult:
    """Keep `concurrency` requests in flight for `seconds`; then wait at most `grace` seconds for the last ones."""
    result = LevelResult(concurrency, seconds)
    cycle = itertools.cycle(requests)
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=seconds + grace) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                path, body = next(cycle)
                sent = time.perf_counter()
                try:
                    reply = await client.post(path, json=body)
                except httpx2.HTTPError as exc:
                    result.statuses[type(exc).__name__] += 1
                    continue
                result.statuses[reply.status_code] += 1
                if reply.status_code == 200:
                    result.latencies.append(time.perf_counter() - sent)
                    result.unparsed += reply.json().get("error") is not None
                elif reply.status_code == 429:
                    await asyncio.sleep(0.05)  # a polite client backs off a little

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=seconds + grace)
        for task in pending:
            task.cancel()
        if pending:
            result.statuses["client gave up"] += len(pending)
        result.seconds = time.perf_counter() - started
    return result


def start_server(run_dir: Path, port: int, max_queue: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "smalltune.cli", "serve", str(run_dir), "--port", str(port), "--max-queue", str(max_queue)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, **quiet)


def wait_until_idle(url: str, server: subprocess.Popen, timeout: float) -> dict:
    """Poll /health until the server answers with an empty queue; returns its last health."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with status {server.returncode}; run `smalltune serve` by hand to see why")
        try:
            health = httpx2.get(f"{url}/health", timeout=5).json()
            if health["queued"] == 0:
                return health
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"{url}: not ready within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (runs/<name>)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time per concurrency level")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels; one above the queue limit is added")
    parser.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue")
    parser.add_argument("--grace", type=float, default=240.0,
                        help="seconds a level waits for its last answers (long enough to drain a full queue)")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    args = parser.parse_args()

    config = load_config(args.run_dir / "task.yaml")
    requests = [request_for(config, r) for r in held_out(config)]
    over_limit = 2 * (args.max_queue + config.infer.batch_size)
    levels = sorted({int(n) for n in args.levels.split(",")} | {over_limit})
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    console = Console(width=120)
    server = start_server(args.run_dir, port, args.max_queue)
    try:
        wait_until_idle(url, server, timeout=600)
        path, body = requests[0]
        httpx2.post(f"{url}{path}", json=body, timeout=600)  # warm-up: first-call costs stay out of the table
        table = Table(title=f"smalltune serve {args.run_dir} ({config.kind}, batch {config.infer.batch_size}, "
                            f"max-queue {args.max_queue}, {args.seconds:.0f} s per level, {len(requests)} held-out records)")
        for column in ("concurrency", "req/s", "p50 s", "p95 s", "answered", "unparsed", "429", "other errors"):
            table.add_column(column, justify="right")
        for level in levels:
            result = asyncio.run(run_level(url, requests, level, args.seconds, args.grace))
            table.add_row(*result.row())
            console.print(f"concurrency {level}: done")
            wait_until_idle(url, server, timeout=args.grace)
        health = httpx2.get(f"{url}/health").json()
        console.print(table)
        console.print(f"engine calls {health['engine_calls']}, requests batched {health['requests_batched']}, "
                      f"largest batch {health['largest_batch']}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(args.grace)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
