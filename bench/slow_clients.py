"""``python -m bench.slow_clients``: /predict latency alone, then under each slow-client attack.

The API (``python -m api``, its default worker) serves the workspace's model. One client
sends ``/predict`` requests one after the other, each on a new connection (as the
attacks' victims would), first alone, then while another process holds connections of
one kind (:data:`ATTACKS`): a request head sent one byte every 2 s; a 4 MB
``Content-Length`` body, a chunked body or nothing after ``Expect: 100-continue``, sent
at the same pace; 2,000 idle connections; 200 heads each followed by 1 MB - 1 of a 1 MB
body. Every connection the server closes is opened again after :data:`REOPEN_S`, as a
persistent attacker would. Latencies (median, p99, max), requests that got no answer
within :data:`ANSWER_TIMEOUT_S` and each worker's peak RSS over its RSS before the
attack go to ``slow_clients.json``. ``tests/reliability/test_slow_clients.py`` runs the
same attacks against bounds.
"""

from __future__ import annotations

import errno
import multiprocessing
import resource
import selectors
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DRIP_EVERY_S = 2.0
REOPEN_S = 0.5  # a closed attack connection is opened again after this long
ANSWER_TIMEOUT_S = 5.0
RAMP_S = 1.5  # attack connections opened and sending before latencies are measured
BIG_BODY = 4 * 1024 * 1024  # over the 1 MB the worker's loop buffers, under max_request_mb
HEAD = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
# Attack connections come from these loopback addresses (Linux routes all of 127/8 to
# lo): several clients, so the per-worker caps are reached as well as the per-client ones.
SOURCES = tuple(f"127.0.0.{n}" for n in range(2, 10))


@dataclass(frozen=True)
class Attack:
    """Connections of one kind: what each sends at once, then one piece per 2 s."""

    name: str
    count: int
    opening: bytes
    drip: bytes = b""  # the pieces, one byte each (a slow head) or ``piece`` repeated
    piece: bytes = b""


ATTACKS: tuple[Attack, ...] = (
    Attack("slow head", 64, b"", drip=HEAD),
    Attack(
        "slow Content-Length body",
        64,
        HEAD + f"Content-Length: {BIG_BODY}\r\n\r\n".encode(),
        piece=b" ",
    ),
    Attack(
        "slow chunked body",
        64,
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n",
        piece=b"1\r\n \r\n",
    ),
    Attack(
        "Expect: 100-continue, then silence",
        64,
        HEAD + f"Content-Length: {BIG_BODY}\r\nExpect: 100-continue\r\n\r\n".encode(),
    ),
    Attack("2,000 idle connections", 2000, b""),
    Attack(
        "1 MB bodies, 1 byte short",
        200,
        HEAD + f"Content-Length: {1 << 20}\r\n\r\n".encode() + b" " * ((1 << 20) - 1),
    ),
)


def raise_open_files(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to ``wanted`` (or the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE,
            (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard),
        )


@dataclass(eq=False)
class _Slot:
    sock: socket.socket
    out: bytes
    connected: bool = False
    dripped: int = 0
    next_drip: float = 0.0


def _attack_loop(port: int, attack: Attack, stop: Any, ready: Any, stats: Any) -> None:
    """Hold ``attack.count`` connections until ``stop`` is set (runs in its own process)."""
    raise_open_files(attack.count + 256)
    selector = selectors.DefaultSelector()
    slots: list[_Slot | None] = [None] * attack.count
    reopen_at = [0.0] * attack.count
    counts = {"opened": 0, "closed_by_server": 0, "answered_408": 0, "answered_503": 0}

    def close(index: int, by_server: bool) -> None:
        slot = slots[index]
        if slot is None:
            return
        selector.unregister(slot.sock)
        slot.sock.close()
        slots[index] = None
        reopen_at[index] = time.monotonic() + REOPEN_S
        counts["closed_by_server"] += by_server

    def interest(index: int, slot: _Slot) -> None:
        events = selectors.EVENT_READ | (
            selectors.EVENT_WRITE if slot.out or not slot.connected else 0
        )
        selector.modify(slot.sock, events, index)

    def flush(index: int, slot: _Slot) -> None:
        try:
            sent = slot.sock.send(slot.out)
        except BlockingIOError:
            return
        except OSError:
            close(index, by_server=True)
            return
        slot.out = slot.out[sent:]
        interest(index, slot)

    started = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        for index in range(attack.count):
            if slots[index] is None and reopen_at[index] <= now:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    sock.bind((SOURCES[index % len(SOURCES)], 0))
                    code = sock.connect_ex(("127.0.0.1", port))
                except OSError:
                    sock.close()
                    reopen_at[index] = now + REOPEN_S
                    continue
                if code not in (0, errno.EINPROGRESS):
                    sock.close()
                    reopen_at[index] = now + REOPEN_S
                    continue
                slots[index] = _Slot(sock, attack.opening, next_drip=now + DRIP_EVERY_S)
                selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, index)
                counts["opened"] += 1
            current = slots[index]
            if current is not None and current.connected and current.next_drip <= now:
                slot = current
                slot.next_drip = now + DRIP_EVERY_S
                if attack.drip and slot.dripped < len(attack.drip):
                    slot.out += attack.drip[slot.dripped : slot.dripped + 1]
                    slot.dripped += 1
                elif attack.piece:
                    slot.out += attack.piece
                if slot.out:
                    flush(index, slot)
        if counts["opened"] >= attack.count and not ready.is_set():
            ready.set()
        for key, events in selector.select(timeout=0.05):
            index = key.data
            slot = slots[index]
            if slot is None:
                continue
            if events & selectors.EVENT_READ:
                try:
                    data = slot.sock.recv(65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    close(index, by_server=True)
                    continue
                if data:
                    counts["answered_408"] += data.startswith(b"HTTP/1.1 408")
                    counts["answered_503"] += data.startswith(b"HTTP/1.1 503")
            if events & selectors.EVENT_WRITE:
                if not slot.connected:
                    if slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        close(index, by_server=True)
                        continue
                    slot.connected = True
                flush(index, slot)
        if time.monotonic() - started > 600:  # never outlive a forgotten caller
            break
    counts["open_at_end"] = sum(slot is not None for slot in slots)
    for index in range(attack.count):
        close(index, by_server=False)
    stats.put(counts)


class AttackProcess:
    """An attack in a process of its own, so its work never shares the measuring client's GIL."""

    def __init__(self, port: int, attack: Attack):
        context = multiprocessing.get_context("fork")
        self.stop, self.ready = context.Event(), context.Event()
        self.stats: Any = context.Queue()
        self.process = context.Process(
            target=_attack_loop,
            args=(port, attack, self.stop, self.ready, self.stats),
            daemon=True,
        )
        self.counts: dict[str, int] = {}

    def __enter__(self) -> AttackProcess:
        self.process.start()
        self.ready.wait(30)
        time.sleep(RAMP_S)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        try:
            self.counts = self.stats.get(timeout=30)
        except Exception:  # the process died: its counts are lost, the caller sees {}
            self.counts = {}
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


def predict_once(port: int, request: bytes) -> float | None:
    """Milliseconds for one /predict on a new connection; None without a 200 in time."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if time.perf_counter() - started > ANSWER_TIMEOUT_S:
                    return None
    except OSError:
        return None
    if not answer.startswith(b"HTTP/1.1 200"):
        return None
    return (time.perf_counter() - started) * 1000


def predict_request(body: bytes) -> bytes:
    """A complete /predict request that asks the server to close after answering."""
    return HEAD + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body


def latencies_ms(
    port: int, body: bytes, seconds: float, give_up_after: int = 3
) -> tuple[list[float], int]:
    """Sequential /predict calls for ``seconds``: (latencies of the answered, unanswered)."""
    request = predict_request(body)
    times, missed = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and missed < give_up_after:
        took = predict_once(port, request)
        if took is None:
            missed += 1
        else:
            times.append(took)
    return times, missed


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("inf")


def summary(times: list[float], missed: int = 0) -> dict[str, Any]:
    ordered = sorted(times) or [float("nan")]
    return {
        "requests": len(times),
        "unanswered": missed,
        "median_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(p99(times), 2),
        "max_ms": round(ordered[-1], 2),
    }


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers: the master's child processes."""
    kids: list[int] = []
    for task in Path(f"/proc/{master}/task").iterdir():
        kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def reset_peak_rss(pid: int) -> None:
    # "5" resets VmHWM to the current RSS (Linux >= 4.0).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def measure(port: int, master: int, body: bytes, attack: Attack, seconds: float) -> dict[str, Any]:
    """/predict alone, then under ``attack``: latencies, misses, workers' peak RSS growth."""
    from bench.common import peak_rss_kb, rss_kb

    alone, alone_missed = latencies_ms(port, body, seconds / 2)
    pids = worker_pids(master)
    before = {pid: rss_kb(pid) for pid in pids}
    for pid in pids:
        reset_peak_rss(pid)
    with AttackProcess(port, attack) as running:
        loaded, missed = latencies_ms(port, body, seconds)
    growth_mb = {pid: round((peak_rss_kb(pid) - before[pid]) / 1024, 1) for pid in pids}
    return {
        "attack": attack.name,
        "connections": attack.count,
        "alone": summary(alone, alone_missed),
        "under_attack": summary(loaded, missed),
        "p99_ratio": round(p99(loaded) / p99(alone), 2) if alone else None,
        "worker_peak_rss_growth_mb": max(growth_mb.values(), default=0.0),
        "attack_counts": running.counts,
    }


def run(
    ws: Any,
    model: Any,
    quick: bool = False,
    workers: int = 2,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Latency of /predict alone and under each attack of :data:`ATTACKS` (``plan``: the
    seconds of each measurement, ``{"seconds": 4.0}``)."""
    from api.launcher import serving
    from bench.online import request_body

    seconds = float((plan or {}).get("seconds", 4.0 if quick else 10.0))
    body = request_body(ws.settings)
    raise_open_files(4096)
    with serving(ws.api_server(workers, name="api-slow-clients"), timeout_s=180) as server:
        latencies_ms(server.port, body, 1.0)  # warm-up, not recorded
        results = [measure(server.port, server.pid, body, attack, seconds) for attack in ATTACKS]
    return {
        "workers": workers,
        "drip_every_s": DRIP_EVERY_S,
        "reopen_s": REOPEN_S,
        "answer_timeout_s": ANSWER_TIMEOUT_S,
        "attacks": results,
    }


def main(argv: list[str] | None = None) -> int:
    """Train or reuse the model, measure, write slow_clients.json."""
    from bench.workspace import run_single_part

    return run_single_part("slow_clients", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
