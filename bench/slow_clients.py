"""``python -m bench.slow_clients``: /predict latency alone, then with slow-header clients open.

The API (``python -m api``, its default worker) serves the workspace's model; one client
sends ``/predict`` requests one after the other on a kept-alive connection, first alone,
then while 2 x workers x threads other connections each send a request head one byte
every 2 s (a slow-loris). Both sets of latencies are summarised (median, p99, max) in
``slow_clients.json``. gunicorn's plain gthread worker gives every thread to such a
client, so there /predict does not answer at all (tests/test_api_exposure.py).
"""

from __future__ import annotations

import http.client
import socket
import statistics
import threading
import time
from typing import Any

from api.__main__ import THREADS_PER_WORKER
from bench.common import serving
from bench.online import request_body
from bench.workspace import BenchModel, Workspace, run_single_part

BYTE_EVERY_S = 2.0
HEAD = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def _slow_client(port: int, stop: threading.Event, sent: list[int], index: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for byte in HEAD:  # bounded: never more than the head's bytes
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return
            sent[index] += 1
            if stop.wait(BYTE_EVERY_S):
                return


def _latencies_ms(port: int, body: bytes, requests: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            connection.request(
                "POST", "/predict", body=body, headers={"Content-Type": "application/json"}
            )
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"/predict answered {answer.status}")
            times.append((time.perf_counter() - started) * 1000)
    finally:
        connection.close()
    return times


def _summary(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "requests": len(ordered),
        "median_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "max_ms": round(ordered[-1], 2),
    }


def run(ws: Workspace, model: BenchModel, quick: bool = False, workers: int = 2) -> dict[str, Any]:
    """Latency of /predict alone and with 2 x workers x threads slow clients."""
    requests = 100 if quick else 500
    body = request_body(ws.settings)
    with serving(ws.api_server(workers, name="api-slow-clients"), timeout_s=180) as server:
        _latencies_ms(server.port, body, 20)  # warm-up, not recorded
        alone = _latencies_ms(server.port, body, requests)
        count = 2 * workers * THREADS_PER_WORKER
        stop, sent = threading.Event(), [0] * count
        clients = [
            threading.Thread(target=_slow_client, args=(server.port, stop, sent, i), daemon=True)
            for i in range(count)
        ]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while min(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # every slow client connected and trickling
        try:
            loaded = _latencies_ms(server.port, body, requests)
            still_sending = sum(client.is_alive() for client in clients)
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=10)
    return {
        "workers": workers,
        "threads_per_worker": THREADS_PER_WORKER,
        "slow_clients": count,
        "slow_clients_still_sending": still_sending,
        "byte_every_s": BYTE_EVERY_S,
        "alone": _summary(alone),
        "with_slow_clients": _summary(loaded),
    }


def main(argv: list[str] | None = None) -> int:
    """Train or reuse the model, measure, write slow_clients.json."""
    return run_single_part("slow_clients", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
