"""Activation benchmark: from ``POST /models/activate`` to predictions by the new version.

``python -m bench.activation [--quick] [--workers N] [--out DIR]``

The API runs with N workers while a few client threads keep sending ``/predict`` (each
on a new connection so the kernel spreads them over the workers, pausing 10 ms between
requests: steady traffic, not saturation). Every round publishes
a fresh version (never loaded by any worker, so each switch is cold) of the demo model
and of a ~30 MB random forest, then activates it and records, from the moment the
activation request is sent: the preparation (staged until every worker loaded it, as the
answer reports), when it was acknowledged, the first prediction answered by the new
version, and when every worker had answered with it, also counted from the
acknowledgement. The steady p99 of the second before the activation is compared with
the slowest request sent during the switch (from the pointer write, as the answer's
``switch_s`` places it, until every worker served the new version); the slowest request
sent before it, while the version was checked and the workers prepared (loaded it in
the background), is reported on its own. A response with the old version to a request
sent after the acknowledgement would break the API's promise; those are counted, as are
errors. The whole is run on three API servers: the defaults, a pointer lease of 0 (a
pointer read per request) and MLflow's mirror off (``mlflow.mirror: false``: what
moving the ``@production`` alias costs the switch); ``--quick`` runs the defaults only.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Any

import numpy as np

from api.launcher import Server, serving
from bench.common import load_average, summarize
from bench.online import request_body
from bench.workspace import BenchModel, Workspace, run_single_part

log = logging.getLogger("bench")

# One API server each, by (name, settings over conf/default.yaml): the defaults; a
# pointer read per request (what the lease buys); MLflow's mirror off (what moving the
# @production alias costs the switch).
SERVERS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "default": ("api-activation", None),
    "zero": ("api-activation-lease0", {"api": {"pointer_lease_ms": 0}}),
    "no_mirror": ("api-activation-no-mirror", {"mlflow": {"mirror": False}}),
}
# ~30 MB of ONNX (measured: 5.3 MB per 10 trees on 40k rows); quick mode keeps it small,
# and one round: every switch is checked the same in each round, and a round of the two
# models took 4-9 s per server on the loaded 2-core machine. The lease-0 and mirror-off
# servers are diagnostics of the full run; quick mode checks the harness on the defaults
# (the lease-0 server cost ~12 s of its ~25 s on the loaded 2-core machine: a server
# start and two switches).
FULL = {
    "rounds": 3,
    "large_rows": 40_000,
    "large_trees": 58,
    "pollers": 4,
    "servers": tuple(SERVERS),
}
QUICK = {"rounds": 1, "large_rows": 4_000, "large_trees": 3, "pollers": 4, "servers": ("default",)}
SWITCH_TIMEOUT_S = 30.0
STEADY_S = 1.0  # traffic before the switch: the steady p99 it is compared with
# Each client pauses this long between requests: steady traffic (~100 req/s per client),
# not a saturating load that would measure the machine's queue instead of the switch.
POLL_PAUSE_S = 0.01


Record = tuple[
    float, float, int, "int | None", "int | None", bool
]  # sent, done, status, version, pid, stale


class Poller:
    """Client threads sending ``/predict`` on fresh connections, recording who answered what."""

    def __init__(self, port: int, body: bytes, threads: int):
        self.port = port
        self.body = body
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _one(self) -> tuple[int, int | None, int | None, bool]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(
                "POST", "/predict", body=self.body, headers={"Content-Type": "application/json"}
            )
            answer = connection.getresponse()
            answer.read()
            version = answer.getheader("X-Model-Version")
            pid = answer.getheader("X-Worker-Pid")
            stale = answer.getheader("X-Model-Stale") == "true"
            return (
                answer.status,
                int(version) if version else None,
                int(pid) if pid else None,
                stale,
            )
        finally:
            connection.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            sent = time.perf_counter()
            try:
                status, version, pid, stale = self._one()
            except OSError:
                status, version, pid, stale = 0, None, None, False
            with self._lock:
                self.records.append((sent, time.perf_counter(), status, version, pid, stale))
            self._stop.wait(POLL_PAUSE_S)

    def start(self) -> Poller:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)


def _activate(server: Server, token: str, name: str, version: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        connection.request(
            "POST",
            "/models/activate",
            body=json.dumps({"name": name, "version": version, "reason": "benchmark"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        answer = connection.getresponse()
        payload = answer.read()
    finally:
        connection.close()
    if answer.status != 200:
        raise RuntimeError(f"activating v{version} answered {answer.status}: {payload[:300]!r}")
    return json.loads(payload)


def measure_switch(
    server: Server, token: str, name: str, version: int, body: bytes, pollers: int, workers: int
) -> dict[str, Any]:
    """Activate ``version`` under a light /predict load; timings in seconds from the request."""
    poller = Poller(server.port, body, pollers).start()
    try:
        time.sleep(0.3)  # traffic is flowing before the steady window
        steady_from = time.perf_counter()
        time.sleep(STEADY_S)
        sent = time.perf_counter()
        answer = _activate(server, token, name, version)
        acked = time.perf_counter()
        deadline = acked + SWITCH_TIMEOUT_S
        while time.perf_counter() < deadline:
            fresh = {
                pid
                for _, _, status, v, pid, _ in poller.snapshot()
                if status == 200 and v == version
            }
            if len(fresh) >= workers:
                break
            time.sleep(0.02)
        time.sleep(0.1)
    finally:
        poller.stop()
    everything = poller.snapshot()
    steady = [(r[1] - r[0]) * 1000 for r in everything if steady_from <= r[0] and r[1] < sent]
    records = [r for r in everything if r[1] >= sent]
    first_new: float | None = None
    first_by_pid: dict[int, float] = {}
    for _, done, status, v, pid, _ in sorted(records, key=lambda r: r[1]):
        if status == 200 and v == version:
            first_new = done if first_new is None else first_new
            if pid is not None and pid not in first_by_pid:
                first_by_pid[pid] = done
    all_workers = max(first_by_pid.values()) if len(first_by_pid) >= workers else None
    late = [r for r in records if r[0] > acked and r[2] == 200 and r[3] != version]
    prepared = answer.get("prepared") or {}
    # Two windows: before the pointer moves (the checks, the workers loading the staged
    # version), and the switch itself until every worker serves the new version; the
    # answer's switch_s (pointer write, MLflow alias, commit wait) places the pointer write.
    flip = acked - (prepared.get("switch_s") or 0.0)
    end = max(acked, all_workers or acked)
    before = [r for r in records if sent <= r[0] < flip]
    switching = [r for r in records if flip <= r[0] <= end]
    steady_p99 = float(np.percentile(steady, 99)) if steady else None
    slowest = max(((r[1] - r[0]) * 1000 for r in switching), default=None)
    slowest_before = max(((r[1] - r[0]) * 1000 for r in before), default=None)
    return {
        "version": version,
        "lease_ms": answer.get("lease_ms"),
        "prepare_s": prepared.get("prepare_s"),
        "prepare_timed_out": prepared.get("timed_out"),
        "switch_s": prepared.get("switch_s"),
        "acknowledged_s": round(acked - sent, 3),
        # From the acknowledgement until every worker had answered with it (0: before it).
        "all_workers_after_ack_s": None
        if all_workers is None
        else round(max(0.0, all_workers - acked), 3),
        "steady_p99_ms": None if steady_p99 is None else round(steady_p99, 2),
        "slowest_during_switch_ms": None if slowest is None else round(slowest, 2),
        "slowest_before_switch_ms": None if slowest_before is None else round(slowest_before, 2),
        "first_new_prediction_s": None if first_new is None else round(first_new - sent, 3),
        "all_workers_s": None if all_workers is None else round(all_workers - sent, 3),
        "workers_seen_new": len(first_by_pid),
        "requests": len(records),
        "errors": sum(1 for r in records if r[2] != 200),
        "old_version_after_ack": len(late),
        # The API serves its loaded version marked X-Model-Stale when the registry does not
        # answer its pointer read in time: these are the late answers it flagged itself.
        "old_version_after_ack_marked_stale": sum(1 for r in late if r[5]),
        "stale_responses": sum(1 for r in records if r[5]),
    }


def load_cost(ws: Workspace, version: int, rounds: int = 3) -> dict[str, Any]:
    """What one process pays to load a version, in this process: GridFS read (sha256-checked)
    and onnxruntime session build with the API's options (median of ``rounds``)."""
    from api.runtime import load_model

    meta = ws.store.get_model_version(ws.model_name, version)
    reads, sessions = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        data = ws.store.read_artifact(meta)
        reads.append(time.perf_counter() - started)
        started = time.perf_counter()
        load_model(
            meta.name,
            meta.version,
            meta.run_id,
            meta.classes,
            meta.input_schema,
            data,
            meta.sha256,
            onnx_io=meta.onnx_io,
        )
        sessions.append(time.perf_counter() - started)
    return {"read_artifact_s": summarize(reads), "build_session_s": summarize(sessions)}


def _switches(
    ws: Workspace,
    model: BenchModel,
    large_run: str,
    plan: dict[str, Any],
    workers: int,
    server_name: str,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int], dict[str, int]]:
    """Every round's cold switches on one API server (``SERVERS[server_name]`` settings)."""
    body = request_body(ws.settings)
    runs: dict[str, list[dict[str, Any]]] = {"large": [], "demo": []}
    sizes: dict[str, int] = {}
    versions: dict[str, int] = {}
    label, config = SERVERS[server_name]
    with serving(ws.api_server(workers, name=label, config=config), timeout_s=120) as server:
        for number in range(plan["rounds"]):
            for kind, run_id in (("large", large_run), ("demo", model.run_id)):
                fresh = ws.publish(run_id, new_version=True)
                sizes[kind] = fresh.onnx_bytes
                versions[kind] = fresh.version
                result = measure_switch(
                    server,
                    ws.admin_token,
                    ws.model_name,
                    fresh.version,
                    body,
                    plan["pollers"],
                    workers,
                )
                runs[kind].append(result)
                log.info(
                    "%s round %d %-5s v%-3d (%5.1f MB): prepared %ss, acknowledged %.3fs, "
                    "all workers %ss after it, slowest %s ms (steady p99 %s), errors %d",
                    label,
                    number + 1,
                    kind,
                    fresh.version,
                    fresh.onnx_bytes / 1e6,
                    result["prepare_s"],
                    result["acknowledged_s"],
                    result["all_workers_after_ack_s"],
                    result["slowest_during_switch_ms"],
                    result["steady_p99_ms"],
                    result["errors"],
                )
    return runs, sizes, versions


def _summary(results: list[dict[str, Any]], size: int) -> dict[str, Any]:
    visible = summarize([r["all_workers_s"] for r in results])
    after_ack = summarize([r["all_workers_after_ack_s"] for r in results])

    # The slowest request of each round, during the switch and before it, against that
    # round's steady p99 (the goal: under 2x during the switch).
    def ratios(slowest: str) -> list[float]:
        return [
            r[slowest] / r["steady_p99_ms"] for r in results if r[slowest] and r["steady_p99_ms"]
        ]

    slow_ratio = ratios("slowest_during_switch_ms")
    errors = sum(r["errors"] for r in results)
    old = sum(r["old_version_after_ack"] for r in results)
    return {
        "onnx_mb": round(size / 1e6, 4),
        "onnx_bytes": size,
        "lease_ms": results[0]["lease_ms"] if results else None,
        "prepare_s": summarize([r["prepare_s"] for r in results]),
        "prepare_timed_out": sum(1 for r in results if r["prepare_timed_out"]),
        "switch_s": summarize([r["switch_s"] for r in results]),
        "acknowledged_s": summarize([r["acknowledged_s"] for r in results]),
        "first_new_prediction_s": summarize([r["first_new_prediction_s"] for r in results]),
        "all_workers_s": visible,
        "all_workers_after_ack_s": after_ack,
        "steady_p99_ms": summarize([r["steady_p99_ms"] for r in results], 2),
        "slowest_during_switch_ms": summarize([r["slowest_during_switch_ms"] for r in results], 2),
        "slowest_over_steady_p99": summarize(slow_ratio, 2),
        "slowest_before_switch_ms": summarize([r["slowest_before_switch_ms"] for r in results], 2),
        "slowest_before_switch_over_steady_p99": summarize(ratios("slowest_before_switch_ms"), 2),
        "errors": errors,
        "old_version_after_ack": old,
        "old_version_after_ack_marked_stale": sum(
            r["old_version_after_ack_marked_stale"] for r in results
        ),
        "stale_responses": sum(r["stale_responses"] for r in results),
        "goal_visible_under_1s": None if visible["median"] is None else visible["median"] < 1.0,
        "goal_every_worker_within_0_2s_of_ack": None
        if after_ack["max"] is None
        else after_ack["max"] <= 0.2,
        "goal_no_request_over_2x_steady_p99": None if not slow_ratio else max(slow_ratio) <= 2.0,
        "goal_no_error_no_old_answer": errors == 0 and old == 0,
        "runs": results,
    }


def run(
    ws: Workspace,
    model: BenchModel,
    quick: bool = False,
    workers: int = 2,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish and activate cold versions of the demo and the large model, with the default
    settings, a lease of 0 and the mirror off; the result (``models``: the defaults)."""
    plan = dict(plan or (QUICK if quick else FULL))
    load_before = load_average()
    large_run = ws.large_model_run(plan["large_rows"], plan["large_trees"])
    by_server: dict[str, dict[str, Any]] = {}
    versions: dict[str, int] = {}
    for server_name in plan["servers"]:
        runs, sizes, versions = _switches(ws, model, large_run, plan, workers, server_name)
        by_server[server_name] = {
            kind: _summary(results, sizes[kind]) for kind, results in runs.items()
        }
    # Measured after the switches, with the API stopped, so it does not disturb them.
    costs = {kind: load_cost(ws, version) for kind, version in versions.items()}
    for kind, cost in costs.items():
        for models in by_server.values():
            models[kind]["load_cost_one_process"] = cost
    load_after = load_average()
    return {
        "benchmark": "activation",
        "plan": {
            **plan,
            "workers": workers,
            "poll_pause_s": POLL_PAUSE_S,
            "steady_window_s": STEADY_S,
            "servers": {k: config or "conf/default.yaml" for k, (_, config) in SERVERS.items()},
            "large_model": f"random forest, {plan['large_trees']} trees fitted on "
            f"{plan['large_rows']} resampled rows (run {large_run})",
            "demo_model": f"{model.family} (run {model.run_id})",
        },
        "model": model.__dict__,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "models": by_server["default"],
        **({"models_lease_zero": by_server["zero"]} if "zero" in by_server else {}),
        **({"models_no_mirror": by_server["no_mirror"]} if "no_mirror" in by_server else {}),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.activation``: train or reuse the model, measure, write activation.json."""
    return run_single_part("activation", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
