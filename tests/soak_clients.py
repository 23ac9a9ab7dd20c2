"""The clients of the serve soak (tests/test_serve_soak.py), run as a process of their own so that their
memory and threads are not the server's: `python soak_clients.py URL CLIENTS PHASE_S MAX_BODY TEXT`.

CLIENTS threads send short /v1/extract requests one after another (after a 429, again 0.5 s later). After
PHASE_S seconds one more client sends the maximal request, a body just under MAX_BODY bytes, retrying after
429s like any client; one second after it is answered everyone stops. Prints one JSON object: every short
request's start, end and status, and the maximal request's start (of the attempt that got in), end, status,
body size and answer.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2


def maximal_body(text: str, max_body: int) -> bytes:
    """An extract request of `text` repeated, its body just under `max_body` bytes."""
    long_text = text * (max_body // len(text.encode()))
    while len(body := json.dumps({"text": long_text, "id": "maximal"}, ensure_ascii=False).encode()) >= max_body:
        long_text = long_text[: len(long_text) - 200]
    return body


def hammer(url: str, text: str, stop: threading.Event, client_id: int) -> list[tuple[float, float, int]]:
    """Short requests until `stop`: (start, end, status) of each."""
    sent = []
    with httpx2.Client(timeout=120) as client:
        while not stop.is_set():
            started = time.monotonic()
            status = client.post(f"{url}/v1/extract", json={"text": f"{text}（{client_id}-{len(sent)}）"}).status_code
            sent.append((started, time.monotonic(), status))
            if status == 429:
                time.sleep(0.5)
    return sent


def maximal(url: str, body: bytes) -> dict:
    """The maximal request, retried after 429s, timed from the attempt that got in."""
    while True:
        started = time.monotonic()
        reply = httpx2.post(f"{url}/v1/extract", content=body, headers={"content-type": "application/json"},
                            timeout=120)
        if reply.status_code != 429:
            return {"started": started, "finished": time.monotonic(), "status": reply.status_code,
                    "bytes": len(body), "answer": reply.json()}
        time.sleep(0.02)


def main(url: str, clients: int, phase_s: float, max_body: int, text: str) -> None:
    body = maximal_body(text, max_body)
    stop = threading.Event()
    with ThreadPoolExecutor(clients) as pool:
        running = [pool.submit(hammer, url, text, stop, i) for i in range(clients)]
        time.sleep(phase_s)
        slow = maximal(url, body)
        time.sleep(1.0)
        stop.set()
        sent = [request for client in running for request in client.result()]
    print(json.dumps({"sent": sent, "maximal": slow}, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
