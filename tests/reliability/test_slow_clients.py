"""Point 5, slow and idle clients (issue 21, items 5-7 and 14): they cannot starve the API.

One ``python -m api`` (2 workers, the default settings: ``api.client_timeout_s`` 10 s,
as in the issue) is attacked, one kind at a time,
by another process holding connections from 8 loopback addresses
(``bench.slow_clients.ATTACKS``: slow heads, slow 4 MB ``Content-Length`` and chunked
bodies, ``Expect: 100-continue`` then silence, 2,000 idle connections, 200 bodies of
1 MB one byte short). Meanwhile one client sends ``/predict`` after ``/predict``, each on a
new connection. Every one must be answered within 5 s, the p99 must stay within
:data:`P99_FACTOR` x the p99 measured alone just before (plus :data:`P99_SLACK_MS`: the
2 cores are shared with other test runs), and no worker may grow by more than
:data:`RSS_BOUND_MB` (peak RSS, VmHWM, over its RSS before the attack).

The 1 MB flood is a bandwidth attack more than a slow one: the caps close the longest
waiting bodies and the attacker sends them again (1,014 connections of 1 MB opened in
6.5 s in one run), both ends on the same 2 cores as the measured client. Its bound is
the RSS one (item 7) and every request answered; its p99 gets the looser
:data:`FLOOD_P99_FACTOR` (measured: 5.2 ms against 2.4 ms alone at a low load, 41 ms
against 7 ms at load average 9).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from api_fixtures import publish_candidates
from conftest import throwaway_settings
from servers import ApiServer

from bench.slow_clients import ATTACKS, Attack, measure, raise_open_files
from conf.contract import FEATURES
from registry_bridge.store import ModelStore

AREA = "5 hostile input"
SECONDS = 4.0  # /predict measured under each attack (half that alone, just before)
P99_FACTOR = 2.0
P99_SLACK_MS = 10.0
FLOOD = "1 MB bodies, 1 byte short"
FLOOD_P99_FACTOR = 10.0
# The worker's buffered-bytes cap (api.max_buffered_mb, 64 by default) and 32 MB for the
# connections' objects and the allocator. Without caps, 200 bodies of 1 MB held ~1.8 MB
# each (issue 21, item 7).
RSS_BOUND_MB = 96

# Latency, memory and timeouts measured: run alone, after the parallel part (Makefile).
pytestmark = [pytest.mark.slow, pytest.mark.serial]


@pytest.fixture(scope="module")
def server(
    mongo_client, mongo_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    tmp = tmp_path_factory.mktemp("slow-clients")
    db_name = f"test_{uuid.uuid4().hex[:12]}"
    settings = throwaway_settings(mongo_server.uri, db_name, tmp)
    publish_candidates(ModelStore(mongo_client, settings), settings)
    raise_open_files(4096)  # 2,000 attack connections, in a child that inherits this
    api = ApiServer(settings, tmp, workers=2)
    with api:
        yield api
    mongo_client.drop_database(db_name)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_predict_keeps_its_latency_under_slow_and_idle_clients(server, attack: Attack, figure):
    """Check that under each attack every /predict is answered within 5 s, its p99 stays
    within 2x (+10 ms) its p99 alone, and no worker's peak RSS grows by more than 96 MB."""
    assert server.process is not None
    body = json.dumps({name: 50.0 for name in FEATURES}).encode()
    result = measure(server.port, server.process.pid, body, attack, SECONDS)
    alone, loaded = result["alone"], result["under_attack"]
    factor = FLOOD_P99_FACTOR if attack.name == FLOOD else P99_FACTOR
    bound = factor * alone["p99_ms"] + P99_SLACK_MS
    figure(f"/predict p99 alone, before: {attack.name} (ms)", alone["p99_ms"])
    figure(
        f"/predict p99 under: {attack.name} (ms)",
        loaded["p99_ms"],
        f"<= {factor:g} x alone + {P99_SLACK_MS:g}",
    )
    figure(f"/predict unanswered in 5 s under: {attack.name}", loaded["unanswered"], "= 0")
    figure(
        f"worker peak RSS growth under: {attack.name} (MB)",
        result["worker_peak_rss_growth_mb"],
        f"<= {RSS_BOUND_MB}",
    )
    counts = result["attack_counts"]
    assert counts.get("opened", 0) >= attack.count, counts  # the attack was there
    assert loaded["unanswered"] == 0, result
    assert loaded["requests"] >= 50, result
    assert loaded["p99_ms"] <= bound, result
    assert result["worker_peak_rss_growth_mb"] <= RSS_BOUND_MB, result
    assert "Traceback" not in server.log()


def _answers(sock: socket.socket, timeout: float, arrivals: list[float] | None = None) -> bytes:
    """Everything the server sends until it closes (or ``timeout`` s pass); the monotonic
    time each piece arrived is appended to ``arrivals``."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
            if arrivals is not None:
                arrivals.append(time.monotonic())
    except (TimeoutError, OSError):
        pass
    return received


def _predict_bytes(body: bytes, close: bool = False) -> bytes:
    return (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


def test_pipelined_requests_are_answered_in_order_however_they_are_split(server, figure):
    """Check that requests sent back to back on one connection are all answered 200: one
    split across two reads in the middle of its head (item 14: gunicorn's unread() put the
    second read before the bytes left from the first, and the request got a 400), and one
    that arrived whole with the request before it (it waited for bytes that never came)."""
    body = json.dumps({name: 50.0 for name in FEATURES}).encode()
    first, second, last = _predict_bytes(body), _predict_bytes(body), _predict_bytes(body, True)
    cut = second.index(b"Content-Type")  # the Content-Length comes with the second read
    outcomes = {}
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(first + second[:cut])
        time.sleep(0.3)  # the worker has served the first request by now
        sock.sendall(second[cut:] + last)
        outcomes["split across two reads"] = _answers(sock, 10)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(first + second + last)  # one write: the second and third come buffered
        outcomes["whole, behind the first"] = _answers(sock, 10)
    for name, received in outcomes.items():
        statuses = re.findall(rb"^HTTP/1\.1 (\d{3}) ", received, re.MULTILINE)
        figure(f"pipelined /predict x3, {name}: answered 200", statuses.count(b"200"), "= 3")
        assert statuses == [b"200"] * 3, (name, received[:600])


def test_small_body_after_expect_100_continue_gets_one_100_and_its_answer(server, figure):
    """Check that the loop answers Expect: 100-continue for a small body and the thread does
    not send a second 100 Continue (gunicorn would, the header is removed once answered)."""
    body = json.dumps({name: 50.0 for name in FEATURES}).encode()
    head = _predict_bytes(body, close=True)[: -len(body)].replace(
        b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(5)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        rest = _answers(sock, 10)
    figure(
        "Expect: 100-continue, small body: 100s sent after the first", rest.count(b" 100 "), "= 0"
    )
    assert rest.startswith(b"HTTP/1.1 200"), rest[:300]
    assert b"100 Continue" not in rest


@dataclass
class _Probe:
    name: str
    opening: bytes
    after: bytes = b""  # sent once 0.2 s after the opening, then nothing
    answer: bytes = b""
    seconds: float = 0.0  # until the server closed the connection
    answered: float = 0.0  # until the last piece of the answer arrived


# After a 100 Continue, granian (hyper) may keep the connection open once our 408 is sent,
# waiting for the body the client announced: seen once in a clean-clone CI run (closed
# 20 s after the 408, which arrived in time), never in five runs alone. The answer's
# deadline is ours and strict; the close is the server's, bounded by this.
LINGER_S = 21


def _run_probe(port: int, probe: _Probe) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(probe.opening)
        time.sleep(0.2)
        if probe.after:
            sock.sendall(probe.after)
        arrivals: list[float] = []
        probe.answer = _answers(sock, 30, arrivals)
    probe.seconds = time.monotonic() - started
    probe.answered = (arrivals[-1] if arrivals else time.monotonic()) - started


def test_every_read_of_a_request_has_a_deadline(published, tmp_path, figure):
    """Check that with api.client_timeout_s 2 a request that stops arriving, at any point,
    is closed within the timeout plus 2 s: a late head without an answer, a late body
    (buffered, chunked, streamed, after 100 Continue) with a 408 JSON error, whether the
    loop or a thread was reading."""
    timeout = 2
    big = 4 * 1024 * 1024
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    length = f"Content-Length: {big}\r\n".encode()
    chunked = b"Transfer-Encoding: chunked\r\n\r\n"
    probes = [
        _Probe("head", head),
        _Probe("small Content-Length body (loop)", head + b"Content-Length: 100\r\n\r\n{"),
        _Probe("chunked body (loop)", head + chunked + b"1\r\n{\r\n"),
        _Probe("4 MB Content-Length body (thread)", head + length + b"\r\n", b" " * (2 << 20)),
        _Probe("2 MB chunk (thread)", head + chunked + b"200000\r\n", b" " * (1 << 20)),
        _Probe(
            "4 MB /batch-predict upload (thread)",
            b"POST /batch-predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
            + length
            + b"\r\n"
            + ",".join(FEATURES).encode()
            + b"\n",
            b"1,2,3,4,5,6\n" * 100_000,
        ),
        _Probe(
            "4 MB body after 100 Continue (thread)", head + length + b"Expect: 100-continue\r\n\r\n"
        ),
    ]
    api = ApiServer(
        published.settings, tmp_path, workers=1, config={"api": {"client_timeout_s": timeout}}
    )
    with api:
        threads = [threading.Thread(target=_run_probe, args=(api.port, p)) for p in probes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        log = api.log()
    problems = []
    for probe in probes:
        final = re.sub(rb"^HTTP/1\.1 100 Continue\r\n\r\n", b"", probe.answer)
        figure(
            f"request stopped arriving, {probe.name}: answered after (s)",
            round(probe.answered, 1),
            f"<= {timeout + 2}",
        )
        figure(
            f"request stopped arriving, {probe.name}: closed after (s)",
            round(probe.seconds, 1),
            f"<= {timeout + 2 + LINGER_S}",
        )
        if probe.name == "head":
            # granian (hyper) closes a connection whose head is late without an answer, as
            # nginx's client_header_timeout does: nothing was asked yet.
            if final:
                problems.append(f"{probe.name}: {probe.answer[:300]!r}")
        elif not final.startswith(b"HTTP/1.1 408") or b'"REQUEST_TIMEOUT"' not in final:
            problems.append(f"{probe.name}: {probe.answer[:300]!r}")
        elif probe.answered > timeout + 2:
            problems.append(f"{probe.name}: answered after {probe.answered:.1f} s")
        elif probe.seconds > timeout + 2 + LINGER_S:
            problems.append(f"{probe.name}: closed after {probe.seconds:.1f} s")
    assert not problems, "\n".join(problems)
    assert "Traceback" not in log, log[-3000:]
