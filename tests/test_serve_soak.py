"""A soak of `smalltune serve`: more clients than the queue holds, one maximal request mixed in.

A real uvicorn server on loopback answers a tiny Qwen3 extract run (grounded constrained decoding); its clients
(tests/soak_clients.py) run in a process of their own. Sixteen of them send short requests one after another
against a queue of four: first alone, then while one more sends the largest body the server accepts. Every
answer is a 200 or a 429; the others' latency while the maximal request is in flight exceeds their latency
without it by at most that request's own engine call; the server's memory stays bounded. The numbers are
printed (run with -s) for the README's Reliability table.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import pytest
from test_serve import COMPLAINT, running

from conftest import make_run_dir
from smalltune.inference.engine import load_engine
from smalltune.serving.app import ServeSettings, create_app

CLIENTS, MAX_QUEUE, PHASE_S = 16, 4, 4.0
MAX_BODY = 1 << 20  # the default limit: the maximal request fills it
RSS_GROWTH_LIMIT_MB = 300  # the grammar cache (64 MiB), a maximal request's tokenisation (~100 MiB), slack
CLIENT_SCRIPT = Path(__file__).with_name("soak_clients.py")


def rss_mb() -> float:
    """This process's resident memory (the server runs in it) in MiB, from /proc."""
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


class PeakMemory:
    """The largest resident memory of this process seen while the block runs (sampled every 20 ms)."""

    def __init__(self):
        self.peak = self.start = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def latencies(sent: list[list]) -> dict[str, float]:
    """Median, 95th percentile and largest latency (s) of the answered requests among (start, end, status)."""
    seconds = sorted(end - start for start, end, status in sent if status == 200)
    return {"n": len(seconds), "p50": statistics.median(seconds), "p95": seconds[int(0.95 * (len(seconds) - 1))],
            "max": seconds[-1]}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's memory from /proc")
def test_serve_under_a_full_queue_with_a_maximal_request_mixed_in(tmp_path, tiny_qwen3_dir):
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir, "extract", infer={"batch_size": 4, "max_new_tokens": 4})
    settings = ServeSettings(max_queue=MAX_QUEUE, max_body_bytes=MAX_BODY)
    with running(create_app(load_engine(run_dir), settings)) as url:  # the engine `serve` loads: adapter merged
        assert httpx2.post(f"{url}/v1/extract", json={"text": COMPLAINT}, timeout=60).status_code == 200  # warm
        with PeakMemory() as memory:
            clients = subprocess.run([sys.executable, str(CLIENT_SCRIPT), url, str(CLIENTS), str(PHASE_S),
                                      str(MAX_BODY), COMPLAINT], capture_output=True, text=True, timeout=300)
        health = httpx2.get(f"{url}/health").json()
    assert clients.returncode == 0, clients.stderr
    result = json.loads(clients.stdout)
    sent, slow = result["sent"], result["maximal"]
    alone = latencies([s for s in sent if s[1] < slow["started"]])
    beside = latencies([s for s in sent if s[0] < slow["finished"] and s[1] > slow["started"]])
    statuses = [status for _, _, status in sent]
    slow_s, growth = slow["finished"] - slow["started"], memory.peak - memory.start
    print(f"\nsoak: {len(sent)} requests from {CLIENTS} clients, queue {MAX_QUEUE}: {statuses.count(200)} answered, "
          f"{statuses.count(429)} refused 429, {len(statuses) - statuses.count(200) - statuses.count(429)} other "
          f"errors; {health['engine_calls']} engine calls, largest batch {health['largest_batch']}")
    print(f"soak: maximal request ({slow['bytes']:,} bytes) answered {slow['status']} in {slow_s:.2f} s")
    print("soak: others' latency (s) without it  p50 {p50:.3f}  p95 {p95:.3f}  max {max:.3f}  (n={n})".format(**alone))
    print("soak: others' latency (s) beside it   p50 {p50:.3f}  p95 {p95:.3f}  max {max:.3f}  (n={n})".format(**beside))
    print(f"soak: server RSS {memory.start:.0f} MiB after warm-up, peak {memory.peak:.0f} MiB (+{growth:.0f} MiB)")

    assert slow["status"] == 200 and slow["answer"]["input_shortened"] is True, slow
    assert set(statuses) <= {200, 429} and statuses.count(200) > CLIENTS, sorted(set(statuses))
    assert beside["n"] > 0
    assert beside["max"] <= alone["max"] + slow_s + 1.0, (alone, beside, slow_s)  # it costs others one engine call
    assert growth < RSS_GROWTH_LIMIT_MB
