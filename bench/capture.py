"""Capture benchmark: ``/predict`` throughput with data capture at 0 % and at 100 %.

``python -m bench.capture [--quick] [--workers N] [--out DIR]``

Two API servers on the same registry (one with ``CAPTURE_SAMPLE_PERCENT=0``, one with
100) run at once; wrk sends the online benchmark's one-record body at 8 clients, the
servers alternating round by round so slow drifts of the machine hit both alike. After
each round of the capturing server the benchmark waits until its writer threads have
written every record of the round (``api_capture_written_total``, with the dropped and the
failed ones, has grown by the round's requests), so the next round of the other server
does not pay for the writes. The capturing server's cap is lifted: every request is
written. Goal: capture at 100 % costs at most 5 % of the throughput (median over rounds).
"""

from __future__ import annotations

import logging
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from api.launcher import Server, start_all
from bench.common import load_average, ratio, wrk_summary
from bench.online import run_wrk, wrk_post
from bench.workspace import BenchModel, Workspace, run_single_part

log = logging.getLogger("bench")

FULL = {"connections": 8, "rounds": 5, "duration_s": 5}
# One round in quick mode: a second one checked nothing new and cost ~4 s (a wrk second
# per server and the drain) on the loaded 2-core machine.
# The warm-up stays in quick mode too: without it the 100 % server's capture counters
# had not moved when the round's drain ended (0 records written of 2,361 and 3,813
# requests, two runs), so the part checked nothing.
QUICK = {"connections": 8, "rounds": 1, "duration_s": 1}
GOAL_MAX_COST = 0.05
SETTINGS = {"capture_0": "0", "capture_100": "100"}
# Every request written: under the default cap (capture.max_records_per_minute, 60,000 a
# minute per instance) each 5 s window keeps a uniform sample, and a round at ~4,000 req/s
# goes past it (the 2026-12-07 11:07 run wrote 50,573 records of 137,760 requests).
UNCAPPED = {"capture": {"max_records_per_minute": 1_000_000_000}}
_COUNTER = re.compile(r"^(api_capture_(?:written|dropped|failed)_total)\s+([0-9.e+]+)$", re.M)


def capture_counters(base_url: str) -> dict[str, float]:
    """The capture counters of every worker, from ``/metrics``."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counters = {"written": 0.0, "dropped": 0.0, "failed": 0.0}
    for name, value in _COUNTER.findall(text):
        counters[name.split("_")[2]] += float(value)
    return counters


def wait_drained(
    base_url: str, since: dict[str, float], requests: int, timeout_s: float = 60.0
) -> dict[str, float]:
    """Wait until the records of ``requests`` more requests than at ``since`` are written,
    dropped or failed (the writer keeps a window's records up to 5 s before writing them:
    the counters standing still says nothing), or ``timeout_s`` pass; the counters then."""
    deadline = time.monotonic() + timeout_s
    while True:
        counters = capture_counters(base_url)
        done = sum(counters.values()) - sum(since.values()) >= requests
        if done or time.monotonic() > deadline:
            return counters
        time.sleep(0.25)


def run(
    ws: Workspace,
    model: BenchModel,
    quick: bool = False,
    workers: int = 2,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure both servers; the result document (see the module docstring)."""
    _, script = wrk_post(ws, "post-capture.lua")
    plan = dict(plan or (QUICK if quick else FULL))
    servers = {}
    for name, percent in SETTINGS.items():
        server = ws.api_server(workers, name=name, config=UNCAPPED)
        server.env["CAPTURE_SAMPLE_PERCENT"] = percent
        servers[name] = server
    load_before = load_average()
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    try:
        start_all(servers, dict.fromkeys(servers, "/ready"), timeout_s=180)
        for name, server in servers.items():  # warm-up, not recorded
            _round(server, script, plan["connections"], 1, drain=name == "capture_100")
        before = capture_counters(servers["capture_100"].base_url)
        for number in range(plan["rounds"]):
            for name, server in servers.items():
                result = _round(
                    server, script, plan["connections"], plan["duration_s"], name == "capture_100"
                )
                rounds[name].append(result)
                log.info(
                    "capture round %d %-12s %8.1f req/s  p99 %7.2f ms  errors %d",
                    number + 1,
                    name,
                    result["rps"],
                    result["p99_ms"],
                    result["errors"],
                )
        after = capture_counters(servers["capture_100"].base_url)
        off_counters = capture_counters(servers["capture_0"].base_url)
    finally:
        for server in servers.values():
            server.stop()
    load_after = load_average()
    return _document(
        plan, workers, model, rounds, before, after, off_counters, load_before, load_after
    )


def _round(
    server: Server, script: Path, connections: int, seconds: float, drain: bool
) -> dict[str, Any]:
    """wrk on ``server``'s ``/predict``; with ``drain`` (the capturing server), then the
    wait until the round's records are written (``drain_s``)."""
    since = capture_counters(server.base_url) if drain else {}
    result = run_wrk(server.base_url + "/predict", script, connections, seconds)
    if drain:
        started = time.monotonic()
        wait_drained(server.base_url, since, result["requests"])
        result["drain_s"] = round(time.monotonic() - started, 1)
    return result


def _document(
    plan: dict[str, Any],
    workers: int,
    model: BenchModel,
    rounds: dict[str, list[dict[str, Any]]],
    before: dict[str, float],
    after: dict[str, float],
    off_counters: dict[str, float],
    load_before: list[float],
    load_after: list[float],
) -> dict[str, Any]:
    results = {name: wrk_summary(runs) for name, runs in rounds.items()}
    kept = ratio(results["capture_100"]["rps"]["median"], results["capture_0"]["rps"]["median"], 3)
    cost = None if kept is None else round(1 - kept, 3)
    captured = {k: after[k] - before[k] for k in after}
    return {
        "benchmark": "capture",
        "plan": {
            **plan,
            "workers": workers,
            "load_generator": "wrk (closed loop, keep-alive), one record per request",
            "order": "per round: capture_0 -> capture_100 (then wait for its queues to drain)",
        },
        "model": model.__dict__,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": results,
        "captured_during_rounds": captured,
        "records_written_by_the_0_percent_server": off_counters["written"],
        "comparison": {
            "rps_ratio_100_over_0": kept,
            "throughput_cost": cost,
            "goal_cost_at_most_5_percent": None if cost is None else cost <= GOAL_MAX_COST,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.capture``: train or reuse the model, measure, write capture.json."""
    return run_single_part("capture", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
