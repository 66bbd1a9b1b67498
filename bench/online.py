"""Online benchmark: ``/predict`` under gunicorn vs ``mlflow models serve`` vs a constant endpoint.

``python -m bench.online [--quick] [--workers N] [--out DIR]``

All four servers run at once with the same worker count and get the same single-record
body (MLflow's ``{"dataframe_records": [...]}``, which ``/predict`` accepts too) from
``wrk`` at each concurrency, alternating server by server within each round so slow
drifts of the machine hit all of them alike: the API with its default pointer lease,
the API with a lease of 0 (a pointer read per request: what the lease buys), MLflow,
and the constant Flask + gunicorn endpoint (the ceiling). Reported per server and
concurrency: the median over rounds of requests/s and of the p50/p95/p99 latencies,
errors (non-2xx, socket errors, timeouts), the spread of the rounds and, for the API,
registry pointer reads per request (from ``/metrics``); ratios from the same rounds.
"""

from __future__ import annotations

import http.client
import json
import logging
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from api.launcher import Server, start_all
from bench.common import (
    RssSampler,
    load_average,
    meets,
    ratio,
    require_wrk,
    summarize,
    tree_cpu_s,
    tree_rss_mb,
)
from bench.workspace import BenchModel, Workspace, run_single_part

log = logging.getLogger("bench")

FULL = {"concurrencies": (1, 8, 32), "rounds": 3, "duration_s": 5}
QUICK = {"concurrencies": (8,), "rounds": 3, "duration_s": 1}
WRK_TIMEOUT_S = 10
# Each server's scoring path and readiness path.
PATHS = {
    "api": ("/predict", "/ready"),
    "api-lease0": ("/predict", "/ready"),
    "mlflow": ("/invocations", "/ping"),
    "constant": ("/predict", "/health"),
}

_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = %(body)s

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "connect_errors": %%d, "read_errors": %%d, ' ..
    '"write_errors": %%d, "status_errors": %%d, "timeouts": %%d, "p50_us": %%d, "p95_us": %%d, ' ..
    '"p99_us": %%d, "mean_us": %%.1f, "max_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean,
    latency.max))
end
"""


def request_body(settings: Any) -> bytes:
    """One real record of the data set in MLflow's ``dataframe_records`` shape."""
    from conf.contract import FEATURES
    from pipelines.data import load_dataset

    row = load_dataset(settings.data).features.iloc[0]
    return json.dumps({"dataframe_records": [{f: float(row[f]) for f in FEATURES}]}).encode()


def write_lua(body: bytes, path: Path) -> Path:
    """The wrk script POSTing ``body`` and printing a JSON summary line."""
    path.write_text(_LUA % {"body": json.dumps(body.decode())}, encoding="utf-8")
    return path


def wrk_post(ws: Workspace, lua_name: str) -> tuple[bytes, Path]:
    """Check wrk is there; the request body and the wrk script (in the workspace) POSTing it."""
    require_wrk()
    body = request_body(ws.settings)
    return body, write_lua(body, ws.dir / lua_name)


def run_wrk(url: str, script: Path, connections: int, duration_s: float) -> dict[str, Any]:
    """One wrk run; requests/s, latency percentiles (ms) and error counts.

    Raises:
        RuntimeError: wrk failed or printed no summary.
    """
    command = [
        "wrk",
        f"-t{min(connections, 2)}",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed on {url} ({done.returncode}): {done.stderr.strip()[:300]}")
    raw = json.loads(line[len("WRK_JSON ") :])
    seconds = raw["duration_us"] / 1e6
    errors = {
        k: raw[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    }
    return {
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "requests": raw["requests"],
        "errors": sum(errors.values()),
        "error_kinds": errors,
        **{f"p{p}_ms": round(raw[f"p{p}_us"] / 1000, 2) for p in (50, 95, 99)},
        "mean_ms": round(raw["mean_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
    }


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, answer.read()


def sequential_latency_ms(
    port: int, path: str, body: bytes, requests: int = 30
) -> dict[str, float]:
    """Median latency of one client's requests, on one kept-alive connection vs a new one each.

    Context for the one-client row: a server can stall kept-alive connections (wrk keeps
    them alive, as most clients do) while answering fresh ones quickly.
    """
    medians = {}
    for mode in ("keep_alive", "new_connection"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        times = []
        for _ in range(requests):
            if mode == "new_connection":
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            started = time.perf_counter()
            connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json"}
            )
            connection.getresponse().read()
            times.append((time.perf_counter() - started) * 1000)
            if mode == "new_connection":
                connection.close()
        connection.close()
        medians[f"{mode}_ms"] = round(statistics.median(times[3:]), 2)
    return medians


def registry_reads(port: int) -> float | None:
    """``api_registry_reads_total`` of every worker of the API on ``port`` (None if absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith("api_registry_reads_total "):
            return float(line.split()[1])
    return None


def start_servers(ws: Workspace, model: BenchModel, workers: int) -> dict[str, Server]:
    """Start the servers at once (MLflow takes longest) and wait until each is ready."""
    servers = {
        "mlflow": ws.mlflow_server(model, workers),
        "api": ws.api_server(workers),
        "api-lease0": ws.api_server(
            workers, name="api-lease0", config={"api": {"pointer_lease_ms": 0}}
        ),
        "constant": ws.constant_server(workers),
    }
    start_all(servers, {name: PATHS[name][1] for name in servers}, timeout_s=180)
    return servers


def run(
    ws: Workspace,
    model: BenchModel,
    quick: bool = False,
    workers: int = 2,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure the four servers; the result document (see the module docstring)."""
    body, script = wrk_post(ws, "post.lua")
    plan = dict(plan or (QUICK if quick else FULL))
    load_before = load_average()
    servers = start_servers(ws, model, workers)
    try:
        samples: dict[str, dict[str, Any]] = {}
        for name, server in servers.items():
            url = server.base_url + PATHS[name][0]
            status, answer = _post(url, body)
            if status != 200:
                raise RuntimeError(
                    f"{name} answered {status} to the benchmark body: {answer[:200]!r}"
                )
            samples[name] = {
                "url": url,
                "ready_s": server.ready_s,
                "answer": answer.decode()[:300],
                "rss_idle_mb": tree_rss_mb(server.pid),
            }
            run_wrk(url, script, max(plan["concurrencies"]), 1)  # warm-up, not recorded
            samples[name]["sequential_latency"] = sequential_latency_ms(
                server.port, PATHS[name][0], body
            )
        rounds: dict[str, dict[int, list[dict[str, Any]]]] = {n: {} for n in servers}
        samplers = {n: RssSampler(s.pid, interval_s=0.2) for n, s in servers.items()}
        for sampler in samplers.values():
            sampler.__enter__()
        try:
            for connections in plan["concurrencies"]:
                for number in range(plan["rounds"]):
                    for name, server in servers.items():
                        reads = registry_reads(server.port) if name.startswith("api") else None
                        cpu = tree_cpu_s(server.pid)
                        result = run_wrk(
                            samples[name]["url"], script, connections, plan["duration_s"]
                        )
                        # What a request costs the server's processes (not wrk, not the
                        # registry's database): where a throughput gap comes from.
                        result["cpu_ms_per_request"] = round(
                            (tree_cpu_s(server.pid) - cpu) * 1000 / max(1, result["requests"]), 4
                        )
                        if reads is not None:
                            after = registry_reads(server.port) or reads
                            result["registry_reads_per_request"] = round(
                                (after - reads) / max(1, result["requests"]), 4
                            )
                        rounds[name].setdefault(connections, []).append(result)
                        log.info(
                            "c=%-3d round %d %-8s %8.1f req/s  p99 %7.2f ms  errors %d",
                            connections,
                            number + 1,
                            name,
                            result["rps"],
                            result["p99_ms"],
                            result["errors"],
                        )
        finally:
            for sampler in samplers.values():
                sampler.__exit__(None)
    finally:
        for server in servers.values():
            server.stop()
    load_after = load_average()
    return _document(plan, workers, model, samples, rounds, samplers, load_before, load_after, body)


def _document(
    plan: dict[str, Any],
    workers: int,
    model: BenchModel,
    samples: dict[str, Any],
    rounds: dict[str, dict[int, list[dict[str, Any]]]],
    samplers: dict[str, RssSampler],
    load_before: list[float],
    load_after: list[float],
    body: bytes,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, by_c in rounds.items():
        results[name] = {
            "server": samples[name],
            "memory": samplers[name].result(),
            "by_concurrency": {},
        }
        for connections, runs in by_c.items():
            results[name]["by_concurrency"][str(connections)] = {
                "rps": summarize([r["rps"] for r in runs], 1),
                **{f"p{p}_ms": summarize([r[f"p{p}_ms"] for r in runs], 2) for p in (50, 95, 99)},
                "errors": sum(r["errors"] for r in runs),
                "requests": sum(r["requests"] for r in runs),
                "cpu_ms_per_request": summarize([r["cpu_ms_per_request"] for r in runs], 4),
                "runs": runs,
            }
            if "registry_reads_per_request" in runs[0]:
                results[name]["by_concurrency"][str(connections)]["registry_reads_per_request"] = (
                    summarize([r["registry_reads_per_request"] for r in runs], 4)
                )
    comparison = {}
    for connections in plan["concurrencies"]:
        key = str(connections)
        ours = results["api"]["by_concurrency"][key]
        theirs = results["mlflow"]["by_concurrency"][key]
        ceiling = results["constant"]["by_concurrency"][key]
        unleased = results["api-lease0"]["by_concurrency"][key]
        share = ratio(ours["rps"]["median"], ceiling["rps"]["median"])
        comparison[key] = {
            # Ratios of medians from the same rounds (servers alternated): comparable even
            # when the machine's load moves the absolute figures.
            "rps_share_of_constant_lease0": ratio(
                unleased["rps"]["median"], ceiling["rps"]["median"]
            ),
            "rps_lease_over_lease0": ratio(ours["rps"]["median"], unleased["rps"]["median"]),
            "api_p99_ms": ours["p99_ms"]["median"],
            "goal_80pct_of_constant": meets(share, 0.8),
            "goal_p99_10ms": None
            if ours["p99_ms"]["median"] is None
            else ours["p99_ms"]["median"] <= 10.0,
            "rps_ratio_vs_mlflow": ratio(ours["rps"]["median"], theirs["rps"]["median"]),
            "p99_mlflow_over_api": ratio(theirs["p99_ms"]["median"], ours["p99_ms"]["median"]),
            "p50_mlflow_over_api": ratio(theirs["p50_ms"]["median"], ours["p50_ms"]["median"]),
            "rps_share_of_constant": share,
            "goal_rps_3x": meets(ratio(ours["rps"]["median"], theirs["rps"]["median"]), 3.0),
            "goal_p99_third": meets(
                ratio(theirs["p99_ms"]["median"], ours["p99_ms"]["median"]), 3.0
            ),
        }
    return {
        "benchmark": "online",
        "plan": {
            **plan,
            "workers": workers,
            "load_generator": "wrk (closed loop, keep-alive)",
            "order": "per concurrency, per round: " + " -> ".join(rounds),
            "body": body.decode(),
        },
        "model": model.__dict__,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "servers": {
            "api": "python -m api (gunicorn, the API's buffering gthread worker, onnxruntime), "
            "default pointer lease",
            "api-lease0": "the same with api.pointer_lease_ms 0 (a pointer read per request)",
            "mlflow": "mlflow models serve --env-manager local (uvicorn, FastAPI, pyfunc sklearn)",
            "constant": "bench.constant_app under gunicorn, the API's worker class and threads",
        },
        "results": results,
        "comparison": comparison,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.online``: train or reuse the model, measure, write online.json."""
    return run_single_part("online", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
