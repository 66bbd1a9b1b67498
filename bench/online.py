"""Online benchmark: this API against its peers, one record per request, servers alternated.

``python -m bench.online [--quick] [--workers N] [--out DIR] [--baseline-api REV] [--mlserver]``

Every server runs at once with the same worker count, and ``wrk`` drives one target
(a server and a path) at a time, target after target within each round, so slow drifts
of the machine hit all of them alike. The targets:

- ``api``: ``python -m api`` (started by ``api.launcher``, so whichever server it runs),
  ``POST /predict`` with MLflow's ``{"dataframe_records": [...]}`` body;
- ``api-oip``: the same server, ``POST /v2/models/<name>/infer`` with the same record as
  an Open Inference Protocol body (one FP64 tensor ``[1]`` per feature, as MLServer's
  pandas codec sends a data frame);
- ``api-named``: the same server, ``POST /models/<name>/predict`` (the path of the
  two-model round, asked alone: what the path costs apart from a second name);
- ``api-lease0``: the API with ``api.pointer_lease_ms: 0`` (a pointer read per request;
  full runs only, as ``api-lease50``);
- ``api-lease50``: the API with ``api.pointer_lease_ms: 50``, the default before
  2026-12-07 (the lease's length measured, not assumed);
- ``api-baseline``: today's API, ``python -m api`` from a ``git worktree`` of
  ``--baseline-api`` (default ``bed3445``, main before issue 23), ``/predict``;
- ``mlflow``: ``mlflow models serve`` of the same run's sklearn model, ``/invocations``;
- ``mlserver-invocations`` and ``mlserver-v2``: MLServer with its MLflow runtime on the
  same MLflow model, ``/invocations`` and ``/v2/models/<name>/infer`` (the OIP body),
  from a virtual environment of its own (``bench.peers``; full runs only unless
  ``--mlserver``);
- ``constant-gthread`` and ``constant-granian``: a constant Flask endpoint
  (``constant_app.py``) under stock gunicorn ``gthread`` and under granian's WSGI
  interface, 2 workers x 8 threads each;
- ``constant-rsgi``: the same answer with no Flask under granian's RSGI, the body read
  under a deadline and its JSON parsed (``constant_rsgi.py``): the floor of the server the
  API runs on, which the API's figures (its p99 above all) are read against;
- the two-model round (at 8 clients): the ``api`` server driven on
  ``/models/<name>/predict`` and ``/models/<name>-b/predict`` at once (two wrk
  processes of 4 clients each; ``<name>-b`` is the same run published under a second
  name), each name's req/s against the one-model ``/predict`` figure.

Reported per target and concurrency: the median over rounds of requests/s and of the
p50/p95/p99 latencies, errors (non-2xx, socket errors, timeouts), the spread of the
rounds, server CPU per request and, for the APIs, registry pointer reads per request
(from ``/metrics``); ratios of medians from the same rounds. A peer that could not be
installed or started is listed under ``not_measured`` with the reason, never a figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.launcher import Server
from bench.common import (
    RssSampler,
    load_average,
    meets,
    ratio,
    require_wrk,
    summarize,
    tree_cpu_s,
    tree_rss_mb,
    wrk_summary,
)
from bench.peers import (
    BASELINE_REV,
    MLSERVER_VERSION,
    Unavailable,
    baseline_checkout,
    mlserver_venv,
    mlserver_versions,
)
from bench.workspace import BenchModel, Workspace, run_single_part

log = logging.getLogger("bench")

FULL: dict[str, Any] = {
    "concurrencies": (1, 8, 32),
    "rounds": 3,
    "duration_s": 5,
    "baseline_rev": BASELINE_REV,
    "mlserver": True,
    "lease0": True,
    "lease50": True,
    "warmup": True,
}
QUICK: dict[str, Any] = {
    "concurrencies": (8,),
    "rounds": 3,
    "duration_s": 1,
    "baseline_rev": BASELINE_REV,
    "mlserver": False,
    # One API server fewer each to start in the suite's quick run (no test reads them).
    "lease0": False,
    "lease50": False,
    # No wrk second of warm-up per target (11 of them, ~12 s of the quick run's online
    # part on the loaded 2-core machine): the quick run checks the harness, not figures,
    # and the benchmark body's first POST to each target has started its server's paths.
    "warmup": False,
}
TWO_MODEL_CLIENTS = 8
WRK_TIMEOUT_S = 10
START_TIMEOUT_S = 180
# Each server's readiness path ({name}: the registry's model name).
READY = {
    "api": "/ready",
    "api-lease0": "/ready",
    "api-lease50": "/ready",
    "api-baseline": "/ready",
    "mlflow": "/ping",
    "mlserver": "/v2/models/{name}/ready",
    "constant-gthread": "/health",
    "constant-granian": "/health",
    "constant-rsgi": "/health",
}
# Servers the run goes on without (reported as not measured, with the reason).
OPTIONAL = {"api-baseline", "api-lease50", "mlserver", "constant-granian", "constant-rsgi"}
# Targets whose failure to answer the benchmark body stops the run (any other target is
# reported as not measured, with the answer: e.g. an API without one of the paths).
REQUIRED = {"api", "api-lease0", "mlflow", "constant-gthread"}
OIP = "oip"  # the body kind of the OIP targets
NATIVE = "native"


@dataclass(frozen=True)
class Target:
    """What one wrk run measures: a server, a path, a body."""

    name: str
    server: str
    path: str
    body: str = NATIVE  # NATIVE or OIP
    model: str | None = None  # the two-model round: which name this target asks


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


def request_record(settings: Any) -> dict[str, float]:
    """One real record of the data set, features in the contract's order."""
    from conf.contract import FEATURES
    from pipelines.data import load_dataset

    row = load_dataset(settings.data).features.iloc[0]
    return {f: float(row[f]) for f in FEATURES}


def request_body(settings: Any) -> bytes:
    """One real record of the data set in MLflow's ``dataframe_records`` shape."""
    return json.dumps({"dataframe_records": [request_record(settings)]}).encode()


def oip_body(record: dict[str, float]) -> bytes:
    """The same record as an OIP infer request: one FP64 tensor ``[1]`` per feature."""
    inputs = [
        {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
        for name, value in record.items()
    ]
    return json.dumps({"inputs": inputs}).encode()


def write_lua(body: bytes, path: Path) -> Path:
    """The wrk script POSTing ``body`` and printing a JSON summary line."""
    path.write_text(_LUA % {"body": json.dumps(body.decode())}, encoding="utf-8")
    return path


def wrk_post(ws: Workspace, lua_name: str) -> tuple[bytes, Path]:
    """Check wrk is there; the request body and the wrk script (in the workspace) POSTing it."""
    require_wrk()
    body = request_body(ws.settings)
    return body, write_lua(body, ws.dir / lua_name)


def run_wrk(
    url: str, script: Path, connections: int, duration_s: float, threads: int | None = None
) -> dict[str, Any]:
    """One wrk run; requests/s, latency percentiles (ms) and error counts.

    Raises:
        RuntimeError: wrk failed or printed no summary.
    """
    command = [
        "wrk",
        f"-t{threads or min(connections, 2)}",
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


def run_wrk_together(
    runs: list[tuple[str, Path]], connections: int, duration_s: float
) -> list[dict[str, Any]]:
    """Several wrk runs at once (one thread and ``connections`` clients each), in order."""
    results: list[dict[str, Any] | BaseException] = [RuntimeError("not run")] * len(runs)

    def one(index: int, url: str, script: Path) -> None:
        try:
            results[index] = run_wrk(url, script, connections, duration_s, threads=1)
        except BaseException as exc:  # re-raised below, in the caller's thread
            results[index] = exc

    threads = [
        threading.Thread(target=one, args=(i, url, script), daemon=True)
        for i, (url, script) in enumerate(runs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def _post(url: str, body: bytes) -> tuple[int, bytes, str]:
    """Status, body and ``Server`` header of one POST (which HTTP server answered: the
    API's launcher picks its own)."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read(), answer.headers.get("Server", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Server", "")


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
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("api_registry_reads_total "):
            return float(line.split()[1])
    return None


# --- the servers ---------------------------------------------------------------------


def make_servers(
    ws: Workspace, model: BenchModel, workers: int, plan: dict[str, Any]
) -> tuple[dict[str, Server], dict[str, str], dict[str, Any]]:
    """The servers of the plan (not started), the reasons of peers left out, and facts
    about the peers (the baseline's commit, MLServer's versions)."""
    servers: dict[str, Server] = {}
    missing: dict[str, str] = {}
    facts: dict[str, Any] = {}
    if plan.get("mlserver"):
        try:
            bin_dir = mlserver_venv()
            facts["mlserver_versions"] = mlserver_versions(bin_dir)
            servers["mlserver"] = ws.mlserver_server(model, workers, bin_dir)
        except Unavailable as exc:
            missing["mlserver"] = str(exc)
        except Exception as exc:  # downloading the model for it: report, go on without it
            missing["mlserver"] = f"MLServer could not be set up: {exc}"
    else:
        missing["mlserver"] = "left out of this run (--quick, or --no-mlserver)"
    servers["mlflow"] = ws.mlflow_server(model, workers)
    servers["api"] = ws.api_server(workers)
    if plan.get("lease0"):
        servers["api-lease0"] = ws.api_server(
            workers, name="api-lease0", config={"api": {"pointer_lease_ms": 0}}
        )
    else:
        missing["api-lease0"] = "left out of this run (--quick)"
    if plan.get("lease50"):
        servers["api-lease50"] = ws.api_server(
            workers, name="api-lease50", config={"api": {"pointer_lease_ms": 50}}
        )
    else:
        missing["api-lease50"] = "left out of this run (--quick)"
    rev = plan.get("baseline_rev")
    if rev:
        try:
            checkout, commit = baseline_checkout(rev)
            facts["baseline"] = {"rev": rev, "commit": commit, "checkout": str(checkout)}
            servers["api-baseline"] = ws.api_server(workers, name="api-baseline", cwd=checkout)
        except Unavailable as exc:
            missing["api-baseline"] = str(exc)
    else:
        missing["api-baseline"] = "left out of this run (--baseline-api none)"
    servers["constant-gthread"] = ws.constant_server(workers, "gthread")
    has_granian = Path(sys.executable).with_name("granian").exists()
    for kind in ("granian", "rsgi"):
        if has_granian:
            servers[f"constant-{kind}"] = ws.constant_server(workers, kind)
        else:
            missing[f"constant-{kind}"] = "granian is not installed in this environment"
    return servers, missing, facts


def start_servers(
    servers: dict[str, Server], missing: dict[str, str], model_name: str
) -> dict[str, Server]:
    """Start every server at once (MLflow and MLServer take longest), wait for each; a
    required one that fails stops them all (raises), an optional one is left out."""
    for server in servers.values():
        server.start()
    started = dict(servers)
    try:
        for name, server in servers.items():
            try:
                server.wait_ready(READY[name].format(name=model_name), timeout_s=START_TIMEOUT_S)
            except RuntimeError as exc:
                if name not in OPTIONAL:
                    raise
                server.stop()
                missing[name] = f"did not start: {_start_failure(exc)}"
                log.warning("%s left out: %s", name, missing[name])
                del started[name]
                continue
            log.info("%s ready after %.1fs on port %d", name, server.ready_s, server.port)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return started


def _start_failure(exc: RuntimeError) -> str:
    """The launcher's message, first line, and the last error line of the server's log."""
    lines = str(exc).splitlines()
    errors = [ln.strip() for ln in lines[1:] if "Error" in ln or "Exception" in ln]
    return lines[0].rstrip(":") + (f"; last error: {errors[-1][:200]}" if errors else "")


def plan_targets(servers: dict[str, Server], model_name: str, second: str) -> list[Target]:
    """The measured targets, in the order of a round (two-model ones last)."""
    oip = f"/v2/models/{model_name}/infer"
    wanted = [
        Target("api", "api", "/predict"),
        Target("api-oip", "api", oip, OIP),
        Target("api-named", "api", f"/models/{model_name}/predict"),
        Target("api-lease0", "api-lease0", "/predict"),
        Target("api-lease50", "api-lease50", "/predict"),
        Target("api-baseline", "api-baseline", "/predict"),
        Target("mlflow", "mlflow", "/invocations"),
        Target("mlserver-invocations", "mlserver", "/invocations"),
        Target("mlserver-v2", "mlserver", oip, OIP),
        Target("constant-gthread", "constant-gthread", "/predict"),
        Target("constant-granian", "constant-granian", "/predict"),
        Target("constant-rsgi", "constant-rsgi", "/predict"),
        Target("two-model-a", "api", f"/models/{model_name}/predict", model=model_name),
        Target("two-model-b", "api", f"/models/{second}/predict", model=second),
    ]
    return [t for t in wanted if t.server in servers]


def run(
    ws: Workspace,
    model: BenchModel,
    quick: bool = False,
    workers: int = 2,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure every target; the result document (see the module docstring)."""
    require_wrk()
    plan = {**(QUICK if quick else FULL), **(plan or {})}
    record = request_record(ws.settings)
    bodies = {NATIVE: json.dumps({"dataframe_records": [record]}).encode(), OIP: oip_body(record)}
    scripts = {kind: write_lua(body, ws.dir / f"post-{kind}.lua") for kind, body in bodies.items()}
    second = ws.second_name(model)
    load_before = load_average()
    servers, missing, facts = make_servers(ws, model, workers, plan)
    started = time.perf_counter()
    servers = start_servers(servers, missing, ws.model_name)
    targets = plan_targets(servers, ws.model_name, second)
    try:
        samples: dict[str, dict[str, Any]] = {}
        for target in list(targets):
            server = servers[target.server]
            url = server.base_url + target.path
            status, answer, server_header = _post(url, bodies[target.body])
            if status != 200:
                problem = f"{target.name} answered {status} to the benchmark body: {answer[:200]!r}"
                if target.name in REQUIRED:
                    raise RuntimeError(problem)
                missing[target.name] = problem
                targets.remove(target)
                continue
            samples[target.name] = {
                "url": url,
                "server": target.server,
                "ready_s": server.ready_s,
                # The whole (one-record) answer, bounded: the report quotes it as JSON.
                "answer": answer.decode()[:4000],
                "server_header": server_header,
                "rss_idle_mb": tree_rss_mb(server.pid),
            }
            if plan.get("warmup"):
                run_wrk(url, scripts[target.body], max(plan["concurrencies"]), 1)  # not recorded
            if target.model is None:
                samples[target.name]["sequential_latency"] = sequential_latency_ms(
                    server.port, target.path, bodies[target.body]
                )
        pair = [t for t in targets if t.model is not None]
        if len(pair) == 1:  # the round needs both names
            missing[pair[0].name] = "the other name of the two-model round did not answer"
            targets.remove(pair[0])
        facts["api_http_server"] = samples["api"]["server_header"] or "no Server header"
        rounds = measure(servers, targets, scripts, plan)
        memory = rounds.pop("__memory__")
    finally:
        for server in servers.values():
            server.stop()
    log.info("online: %d targets measured in %.0fs", len(targets), time.perf_counter() - started)
    return _document(
        plan,
        workers,
        model,
        samples,
        rounds,
        memory,
        (load_before, load_average()),
        bodies,
        {
            "missing": missing,
            "facts": facts,
            "first_name": ws.model_name,
            "second_name": second,
        },
    )


def measure(
    servers: dict[str, Server],
    targets: list[Target],
    scripts: dict[str, Path],
    plan: dict[str, Any],
) -> dict[str, Any]:
    """The rounds: per concurrency, per round, every target in turn (the two-model pair at
    once, at ``TWO_MODEL_CLIENTS`` only); the runs by target and concurrency, and the
    servers' memory under ``__memory__``."""
    single = [t for t in targets if t.model is None]
    pair = [t for t in targets if t.model is not None]
    rounds: dict[str, Any] = {t.name: {} for t in targets}
    samplers = {n: RssSampler(s.pid, interval_s=0.2) for n, s in servers.items()}
    for sampler in samplers.values():
        sampler.__enter__()
    try:
        for connections in plan["concurrencies"]:
            units = [[t] for t in single]
            if len(pair) == 2 and connections == TWO_MODEL_CLIENTS:
                units.append(pair)
            for number in range(plan["rounds"]):
                for unit in units:
                    server = servers[unit[0].server]
                    is_api = unit[0].server.startswith("api")
                    reads = registry_reads(server.port) if is_api else None
                    cpu = tree_cpu_s(server.pid)
                    if len(unit) == 1:
                        url = server.base_url + unit[0].path
                        results = [
                            run_wrk(url, scripts[unit[0].body], connections, plan["duration_s"])
                        ]
                    else:
                        results = run_wrk_together(
                            [(server.base_url + t.path, scripts[t.body]) for t in unit],
                            connections // len(unit),
                            plan["duration_s"],
                        )
                    requests = max(1, sum(r["requests"] for r in results))
                    # What a request costs the server's processes (not wrk, not the
                    # registry's database): where a throughput gap comes from.
                    cpu_ms = round((tree_cpu_s(server.pid) - cpu) * 1000 / requests, 4)
                    after = registry_reads(server.port) if reads is not None else None
                    for target, result in zip(unit, results, strict=True):
                        result["cpu_ms_per_request"] = cpu_ms
                        result["clients"] = connections // len(unit)
                        if reads is not None and after is not None:
                            result["registry_reads_per_request"] = round(
                                (after - reads) / requests, 4
                            )
                        rounds[target.name].setdefault(connections, []).append(result)
                        log.info(
                            "c=%-3d round %d %-20s %8.1f req/s  p99 %7.2f ms  errors %d",
                            connections,
                            number + 1,
                            target.name,
                            result["rps"],
                            result["p99_ms"],
                            result["errors"],
                        )
    finally:
        for sampler in samplers.values():
            sampler.__exit__(None)
    rounds["__memory__"] = {n: s.result() for n, s in samplers.items()}
    return rounds


def _median(results: dict[str, Any], name: str, key: str, field: str = "rps") -> float | None:
    """A target's median of ``field`` at concurrency ``key`` (None when not measured)."""
    row = results.get(name, {}).get("by_concurrency", {}).get(key)
    return None if row is None else row[field]["median"]


def _comparison(results: dict[str, Any], key: str) -> dict[str, Any]:
    """The ratios of one concurrency, all of medians from the same rounds."""
    rps = {name: _median(results, name, key) for name in results}
    p99 = {name: _median(results, name, key, "p99_ms") for name in results}
    p50 = {name: _median(results, name, key, "p50_ms") for name in results}
    api = rps.get("api")
    comparison: dict[str, Any] = {
        "api_p99_ms": p99.get("api"),
        "constant_rsgi_p99_ms": p99.get("constant-rsgi"),
        "rps_ratio_vs_mlflow": ratio(api, rps.get("mlflow")),
        "p99_mlflow_over_api": ratio(p99.get("mlflow"), p99.get("api")),
        "p50_mlflow_over_api": ratio(p50.get("mlflow"), p50.get("api")),
        "rps_lease_over_lease0": ratio(api, rps.get("api-lease0")),
        "rps_lease_over_lease50": ratio(api, rps.get("api-lease50")),
        "p99_lease50_over_lease": ratio(p99.get("api-lease50"), p99.get("api")),
        "predict_over_baseline": ratio(api, rps.get("api-baseline")),
        "predict_over_constant_gthread": ratio(api, rps.get("constant-gthread")),
        "predict_over_constant_granian": ratio(api, rps.get("constant-granian")),
        "predict_over_constant_rsgi": ratio(api, rps.get("constant-rsgi")),
        "predict_over_mlserver_v2": ratio(api, rps.get("mlserver-v2")),
        "predict_over_mlserver_invocations": ratio(api, rps.get("mlserver-invocations")),
        "oip_over_mlserver_v2": ratio(rps.get("api-oip"), rps.get("mlserver-v2")),
        "oip_over_predict": ratio(rps.get("api-oip"), api),
        "named_over_predict": ratio(rps.get("api-named"), api),
        "baseline_over_constant_gthread": ratio(
            rps.get("api-baseline"), rps.get("constant-gthread")
        ),
        "goal_rps_3x": meets(ratio(api, rps.get("mlflow")), 3.0),
        "goal_p99_third": meets(ratio(p99.get("mlflow"), p99.get("api")), 3.0),
    }
    if key == str(TWO_MODEL_CLIENTS):
        # Issue 23's goals, at 8 clients.
        api_p99 = p99.get("api")
        floor_p99 = p99.get("constant-rsgi")
        comparison.update(
            goal_2_5x_baseline=meets(comparison["predict_over_baseline"], 2.5),
            goal_1_6x_constant_gthread=meets(comparison["predict_over_constant_gthread"], 1.6),
            goal_p99_3ms=None if api_p99 is None else api_p99 <= 3.0,
            # Whether the server's floor itself (no Flask, no model) is within 3 ms here.
            floor_p99_within_3ms=None if floor_p99 is None else floor_p99 <= 3.0,
            goal_20x_mlserver_v2=meets(comparison["predict_over_mlserver_v2"], 20.0),
            goal_60x_mlflow=meets(comparison["rps_ratio_vs_mlflow"], 60.0),
            goal_oip_0_8_of_predict=meets(comparison["oip_over_predict"], 0.8),
        )
    return comparison


def _two_model(
    results: dict[str, Any], names: dict[str, str | None], key: str
) -> dict[str, Any] | None:
    """Each name's req/s in the two-model round against the one-model ``/predict``."""
    one = _median(results, "api", key)
    named = _median(results, "api-named", key)
    per_name: dict[str, dict[str, Any]] = {}
    rates: list[float] = []
    for target in ("two-model-a", "two-model-b"):
        rps = _median(results, target, key)
        if rps is None:
            return None
        rates.append(rps)
        share = ratio(rps, one)
        per_name[target] = {
            "name": names[target],
            "rps": rps,
            "p99_ms": _median(results, target, key, "p99_ms"),
            "share_of_one_model": share,
            "share_of_named_path_alone": ratio(rps, named),
            "goal_0_45_of_one_model": meets(share, 0.45),
        }
    total = ratio(sum(rates), one)
    return {
        "clients": int(key),
        "clients_per_name": int(key) // 2,
        "one_model_rps": one,
        "named_path_alone_rps": named,
        "per_name": per_name,
        "total_over_one_model": total,
        "goal_total_0_9_of_one_model": meets(total, 0.9),
    }


DESCRIPTIONS = {
    "api": "python -m api (Server: {http}), /predict, default pointer lease",
    "api-oip": "the same server, OIP POST /v2/models/<name>/infer, the same record",
    "api-named": "the same server, POST /models/<name>/predict (the two-model round's path)",
    "api-lease0": "the same API with api.pointer_lease_ms 0 (a pointer read per request)",
    "api-lease50": "the same API with api.pointer_lease_ms 50 (the default before 2026-12-07)",
    "api-baseline": "today's API: python -m api from a git worktree at {rev} (/predict)",
    "mlflow": "mlflow models serve --env-manager local (uvicorn, FastAPI, pyfunc sklearn)",
    "mlserver-invocations": f"MLServer {MLSERVER_VERSION}, MLflow runtime, /invocations",
    "mlserver-v2": f"MLServer {MLSERVER_VERSION}, MLflow runtime, /v2/models/<name>/infer",
    "constant-gthread": "bench.constant_app under stock gunicorn -k gthread, 8 threads/worker",
    "constant-granian": "bench.constant_app under granian --interface wsgi, 8 blocking threads",
    "constant-rsgi": "bench.constant_rsgi under granian --interface rsgi: body read under a "
    "10 s deadline, JSON parsed, the same constant (no Flask): the API server's floor",
    "two-model-a": "the api server, /models/<name>/predict, half the clients, at once with -b",
    "two-model-b": "the api server, /models/<name>-b/predict (the same run, a second name)",
}


def _document(
    plan: dict[str, Any],
    workers: int,
    model: BenchModel,
    samples: dict[str, Any],
    rounds: dict[str, dict[int, list[dict[str, Any]]]],
    memory: dict[str, dict[str, float]],
    loads: tuple[list[float], list[float]],
    bodies: dict[str, bytes],
    context: dict[str, Any],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, by_c in rounds.items():
        results[name] = {
            "server": samples[name],
            "memory": memory[samples[name]["server"]],
            "by_concurrency": {},
        }
        for connections, runs in by_c.items():
            row = {
                "clients": runs[0]["clients"],
                **wrk_summary(runs, (50, 95, 99)),
                "cpu_ms_per_request": summarize([r["cpu_ms_per_request"] for r in runs], 4),
            }
            if all("registry_reads_per_request" in r for r in runs):
                row["registry_reads_per_request"] = summarize(
                    [r["registry_reads_per_request"] for r in runs], 4
                )
            results[name]["by_concurrency"][str(connections)] = row
    comparison = {str(c): _comparison(results, str(c)) for c in plan["concurrencies"]}
    names = {"two-model-a": context["first_name"], "two-model-b": context["second_name"]}
    two_model = _two_model(results, names, str(TWO_MODEL_CLIENTS))
    facts = context["facts"]
    descriptions = {
        name: text.format(
            http=facts.get("api_http_server", "?"),
            rev=facts.get("baseline", {}).get("commit", "?")[:12],
        )
        for name, text in DESCRIPTIONS.items()
    }
    return {
        "benchmark": "online",
        "plan": {
            **plan,
            "workers": workers,
            "load_generator": "wrk (closed loop, keep-alive)",
            "order": "per concurrency, per round: "
            + " -> ".join(n for n in rounds if not n.startswith("two-model"))
            + " -> two-model-a + two-model-b at once",
            "body": bodies[NATIVE].decode(),
            "oip_body": bodies[OIP].decode(),
            "model_names": [context["first_name"], context["second_name"]],
        },
        "model": model.__dict__,
        "load_average_before": loads[0],
        "load_average_after": loads[1],
        "servers": {name: descriptions[name] for name in results},
        "peers": facts,
        "not_measured": context["missing"],
        "results": results,
        "comparison": comparison,
        "two_model": two_model,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The online part's own options (``python -m bench`` and ``python -m bench.online``)."""
    parser.add_argument(
        "--baseline-api",
        default=BASELINE_REV,
        metavar="REV",
        help=f"online: also measure python -m api from a git worktree at REV (default "
        f"{BASELINE_REV}, main before issue 23); 'none' leaves it out",
    )
    parser.add_argument(
        "--mlserver",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="online: measure MLServer (default: in full runs, not with --quick; its "
        "environment is installed with pip on first use, a few minutes)",
    )


def plan_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The online plan the options ask for."""
    plan = dict(QUICK if args.quick else FULL)
    rev = getattr(args, "baseline_api", BASELINE_REV)
    plan["baseline_rev"] = None if rev in (None, "", "none") else rev
    if getattr(args, "mlserver", None) is not None:
        plan["mlserver"] = args.mlserver
    return plan


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.online``: train or reuse the model, measure, write online.json."""
    return run_single_part("online", run, argv, add_arguments, plan_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
