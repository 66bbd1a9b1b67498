"""Activation benchmark: from ``POST /models/activate`` to predictions by the new version.

``python -m bench.activation [--quick] [--workers N] [--out DIR]``

The API runs with N workers while a few client threads keep sending ``/predict`` (each
on a new connection so the kernel spreads them over the workers, pausing 10 ms between
requests: steady traffic, not saturation). Every round publishes
a fresh version (never loaded by any worker, so each switch is cold) of the demo model
and of a ~30 MB random forest, then activates it and records, from the moment the
activation request is sent: when it was acknowledged, the first prediction answered by
the new version, and when every worker had answered with it. A response with the old
version to a request sent after the acknowledgement would break the API's promise; those
are counted, as are errors.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Any

from bench.common import Server, load_average, summarize
from bench.online import request_body
from bench.workspace import BenchModel, Workspace, run_single_part

log = logging.getLogger("bench")

# ~30 MB of ONNX (measured: 5.3 MB per 10 trees on 40k rows); quick mode keeps it small.
FULL = {"rounds": 3, "large_rows": 40_000, "large_trees": 58, "pollers": 4}
QUICK = {"rounds": 2, "large_rows": 4_000, "large_trees": 3, "pollers": 4}
SWITCH_TIMEOUT_S = 30.0
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
        time.sleep(0.3)  # traffic is flowing before the switch
        sent = time.perf_counter()
        _activate(server, token, name, version)
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
    records = [r for r in poller.snapshot() if r[1] >= sent]
    first_new: float | None = None
    first_by_pid: dict[int, float] = {}
    for _, done, status, v, pid, _ in sorted(records, key=lambda r: r[1]):
        if status == 200 and v == version:
            first_new = done if first_new is None else first_new
            if pid is not None and pid not in first_by_pid:
                first_by_pid[pid] = done
    all_workers = max(first_by_pid.values()) if len(first_by_pid) >= workers else None
    late = [r for r in records if r[0] > acked and r[2] == 200 and r[3] != version]
    return {
        "version": version,
        "acknowledged_s": round(acked - sent, 3),
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


def run(
    ws: Workspace,
    model: BenchModel,
    quick: bool = False,
    workers: int = 2,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish and activate cold versions of the demo and the large model; the result document."""
    plan = dict(plan or (QUICK if quick else FULL))
    load_before = load_average()
    large_run = ws.large_model_run(plan["large_rows"], plan["large_trees"])
    body = request_body(ws.settings)
    runs: dict[str, list[dict[str, Any]]] = {"large": [], "demo": []}
    sizes: dict[str, int] = {}
    versions: dict[str, int] = {}
    server = ws.api_server(workers, name="api-activation").start()
    try:
        server.wait_ready("/ready", timeout_s=120)
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
                    "round %d %-5s v%-3d (%5.1f MB): acknowledged %.3fs, first %s, "
                    "all workers %s, errors %d",
                    number + 1,
                    kind,
                    fresh.version,
                    fresh.onnx_bytes / 1e6,
                    result["acknowledged_s"],
                    result["first_new_prediction_s"],
                    result["all_workers_s"],
                    result["errors"],
                )
    finally:
        server.stop()
    # Measured after the switches, with the API stopped, so it does not disturb them.
    costs = {kind: load_cost(ws, version) for kind, version in versions.items()}
    load_after = load_average()
    models = {}
    for kind, results in runs.items():
        visible = summarize([r["all_workers_s"] for r in results])
        models[kind] = {
            "onnx_mb": round(sizes[kind] / 1e6, 4),
            "onnx_bytes": sizes[kind],
            "load_cost_one_process": costs[kind],
            "acknowledged_s": summarize([r["acknowledged_s"] for r in results]),
            "first_new_prediction_s": summarize([r["first_new_prediction_s"] for r in results]),
            "all_workers_s": visible,
            "errors": sum(r["errors"] for r in results),
            "old_version_after_ack": sum(r["old_version_after_ack"] for r in results),
            "old_version_after_ack_marked_stale": sum(
                r["old_version_after_ack_marked_stale"] for r in results
            ),
            "stale_responses": sum(r["stale_responses"] for r in results),
            "goal_visible_under_1s": None if visible["median"] is None else visible["median"] < 1.0,
            "runs": results,
        }
    return {
        "benchmark": "activation",
        "plan": {
            **plan,
            "workers": workers,
            "poll_pause_s": POLL_PAUSE_S,
            "large_model": f"random forest, {plan['large_trees']} trees fitted on "
            f"{plan['large_rows']} resampled rows (run {large_run})",
            "demo_model": f"{model.family} (run {model.run_id})",
        },
        "model": model.__dict__,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "models": models,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.activation``: train or reuse the model, measure, write activation.json."""
    return run_single_part("activation", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
