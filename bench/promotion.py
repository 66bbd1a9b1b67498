"""Safe promotion benchmark: the gate's time, shadow traffic's cost, the canary's share.

``python -m bench.promotion [--quick] [--workers N] [--out DIR]``

On the workspace's model (v1, active) and a second version of the same run (v2: the
same graph, so both score alike and only the mechanism is measured):

- **gate**: activations of v2 and v1 in turn with a passing rule on the reference set
  (the whole data set, 310 rows), the gate's own ``seconds`` from the audit entry;
  and one ``bridge activate`` in a fresh process, where the gate's first use of its
  modules is paid too (scikit-learn's import was most of it until issue 24; the metrics
  are numpy only since). Goal: at most 1 s.
- **shadow**: wrk at 8 clients on ``/predict``, rounds alternating shadow off and
  shadow at 100 % (``bridge shadow``), waiting after each "on" round until the workers'
  shadow queues are empty (``api_shadow_scored_total`` stops moving) so the next "off"
  round does not pay for them. Goals: throughput cost at most 10 %, and the p50 of the
  answers unchanged (the shadow scores after the answer).
- **canary**: 10,000 requests with distinct ``X-Request-Key`` through the API at 10 %;
  the share answered by the canary (``X-Model-Version``). Goal: within 2 points.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from typing import Any

import numpy as np
import requests

from bench.common import load_average, ratio, summarize, wait_until_still, wrk_summary
from bench.online import run_wrk, wrk_post
from bench.workspace import BenchModel, Workspace, run_single_part

log = logging.getLogger("bench")

FULL = {
    "connections": 8,
    "rounds": 5,
    "duration_s": 5,
    "gate_rounds": 10,
    "canary_requests": 10_000,
    "warmup": True,
}
# One shadow round in quick mode: a second one checked nothing new and cost ~3-4 s (a wrk
# second off and on, the drain's 1 s of stillness) on the loaded 2-core machine.
# No warm-up either (a wrk second).
QUICK = {
    "connections": 8,
    "rounds": 1,
    "duration_s": 1,
    "gate_rounds": 2,
    "canary_requests": 500,
    "warmup": False,
}
GOAL_GATE_S = 1.0
GOAL_SHADOW_COST = 0.10
GOAL_CANARY_POINTS = 2.0
CANARY_PERCENT = 10.0
_SCORED = re.compile(r"^api_shadow_scored_total\{[^}]*\}\s+([0-9.e+]+)$", re.M)


def run(
    ws: Workspace,
    model: BenchModel,
    quick: bool = False,
    workers: int = 2,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure the three mechanisms; the result document (see the module docstring)."""
    plan = dict(plan or (QUICK if quick else FULL))
    second = ws.publish(model.run_id, new_version=True)
    load_before = load_average()
    gate = _gate(ws, model, second, plan["gate_rounds"])
    ws.store.set_active_version(ws.model_name, model.version, by="bench", reason="bench: back")
    server = ws.api_server(workers, name="promotion")
    try:
        server.start()
        server.wait_ready("/ready", timeout_s=180)
        shadow = _shadow(ws, server.base_url, second, plan)
        canary = _canary(ws, server.base_url, second, plan["canary_requests"])
    finally:
        server.stop()
    return {
        "benchmark": "promotion",
        "plan": {**plan, "workers": workers, "canary_percent": CANARY_PERCENT},
        "model": model.__dict__,
        "second_version": second.version,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "gate": gate,
        "shadow": shadow,
        "canary": canary,
    }


def _gate(ws: Workspace, model: BenchModel, second: BenchModel, rounds: int) -> dict[str, Any]:
    from conf.settings import GateRule, PromotionSettings
    from pipelines.data import load_dataset
    from registry_bridge.reference import ReferenceRows
    from registry_bridge.store import ModelStore

    dataset = load_dataset(ws.settings.data)
    rows = ReferenceRows(dataset.features.to_numpy(dtype=np.float64), list(dataset.labels))
    ws.store.set_reference_set(ws.model_name, rows, source="bench: the whole data set")
    rules = (GateRule("f1_macro", threshold=0.0), GateRule("accuracy", threshold=0.0))
    settings = replace(ws.settings, promotion=PromotionSettings(rules=rules))
    store = ModelStore(ws.store.db, settings)
    seconds = []
    for number in range(rounds):
        target = second.version if number % 2 == 0 else model.version
        state = store.set_active_version(ws.model_name, target, by="bench", reason="bench: gate")
        seconds.append((state.gate or {})["seconds"])
    active = ws.store.get_active_version(ws.model_name)
    other = model.version if active.active_version == second.version else second.version
    cold = _cold_activation(ws, other)
    warm = summarize(seconds, 3)
    return {
        "reference_rows": len(rows.labels),
        "rules": [r.metric for r in rules],
        "warm_s": warm,
        "cold_process": cold,
        "goal_at_most_1_s": warm["median"] is not None
        and max(warm["max"], cold.get("gate_s") or 0) <= GOAL_GATE_S,
    }


def _cold_activation(ws: Workspace, target: int) -> dict[str, Any]:
    """``bridge activate`` in a fresh process with a rule: the gate's seconds as its audit
    entry records them (first use of its modules included), and the command's wall time."""
    config = ws.dir / "gate.yaml"
    config.write_text("promotion:\n  rules:\n    accuracy: {threshold: 0.0}\n", encoding="utf-8")
    env = {
        **os.environ,
        "VERTEBRAL_CONFIG": str(config),
        "MONGODB_URI": ws.settings.registry.mongodb_uri or "",
        "REGISTRY_DB": ws.settings.registry.database,
        "MLFLOW_TRACKING_URI": ws.settings.mlflow.tracking_uri,
        "MODEL_NAME": ws.model_name,
    }
    bridge = str(os.path.join(os.path.dirname(sys.executable), "bridge"))
    started = time.perf_counter()
    done = subprocess.run(
        [bridge, "activate", ws.model_name, str(target), "--reason", "bench: cold gate"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    wall = time.perf_counter() - started
    entry = ws.store.list_activation_log(ws.model_name)[-1]
    return {
        "exit_code": done.returncode,
        "command_wall_s": round(wall, 2),
        "gate_s": (entry.gate or {}).get("seconds"),
    }


def _scored(base_url: str) -> float:
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as answer:
        return sum(float(v) for v in _SCORED.findall(answer.read().decode()))


def _drained(base_url: str) -> float:
    """Wait until the shadow's scored counter stops moving for 1 s; the seconds waited."""
    started = time.monotonic()
    wait_until_still(lambda: _scored(base_url), 1.0, 0.25)
    return round(time.monotonic() - started, 1)


def _shadow(ws: Workspace, base: str, second: BenchModel, plan: dict[str, Any]) -> dict[str, Any]:
    _, script = wrk_post(ws, "post-promotion.lua")
    if plan.get("warmup"):
        run_wrk(base + "/predict", script, plan["connections"], 1)  # not recorded
    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    before = _scored(base)
    for number in range(plan["rounds"]):
        for mode in ("off", "on"):
            if mode == "on":
                ws.store.start_shadow(ws.model_name, second.version, 100, by="bench")
            result = run_wrk(base + "/predict", script, plan["connections"], plan["duration_s"])
            if mode == "on":
                ws.store.end_shadow(ws.model_name, by="bench")
                result["drain_s"] = _drained(base)
            rounds[mode].append(result)
            log.info(
                "shadow round %d %-3s %8.1f req/s  p50 %6.2f ms  p99 %7.2f ms  errors %d",
                number + 1,
                mode,
                result["rps"],
                result["p50_ms"],
                result["p99_ms"],
                result["errors"],
            )
    scored = _scored(base) - before
    results = {mode: wrk_summary(runs) for mode, runs in rounds.items()}
    kept = ratio(results["on"]["rps"]["median"], results["off"]["rps"]["median"], 3)
    cost = None if kept is None else round(1 - kept, 3)
    on_requests = results["on"]["requests"]
    return {
        "results": results,
        "records_scored_by_the_shadow": scored,
        "share_of_on_requests_scored": round(scored / on_requests, 3) if on_requests else None,
        "throughput_cost": cost,
        "p50_delta_ms": round(
            results["on"]["p50_ms"]["median"] - results["off"]["p50_ms"]["median"], 2
        ),
        "goal_cost_at_most_10_percent": None if cost is None else cost <= GOAL_SHADOW_COST,
    }


def _canary(ws: Workspace, base: str, second: BenchModel, count: int) -> dict[str, Any]:
    ws.store.start_canary(ws.model_name, second.version, CANARY_PERCENT, by="bench")
    body = {"records": [[60.0, 15.0, 50.0, 45.0, 120.0, 10.0]]}
    by_canary = 0
    failed = 0
    with requests.Session() as session:
        for number in range(count):
            answer = session.post(
                base + "/predict",
                json=body,
                headers={"X-Request-Key": f"bench-{number}"},
                timeout=10,
            )
            if answer.status_code != 200:
                failed += 1
            elif answer.headers.get("X-Model-Version") == str(second.version):
                by_canary += 1
    ws.store.end_canary(ws.model_name, by="bench")
    share = 100 * by_canary / count
    return {
        "requests": count,
        "failed": failed,
        "answered_by_canary": by_canary,
        "share_percent": round(share, 2),
        "goal_within_2_points": abs(share - CANARY_PERCENT) <= GOAL_CANARY_POINTS,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.promotion``: train or reuse the model, measure, write promotion.json."""
    return run_single_part("promotion", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
