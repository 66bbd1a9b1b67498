"""The markdown table of a benchmark run (``bench/results/README-table.md``) from its JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.common import meets

SERVER_LABELS = {
    "api": "this API (`/predict`)",
    "api-oip": "this API, OIP `/v2/models/<name>/infer`",
    "api-named": "this API, `/models/<name>/predict`",
    "api-lease0": "this API, pointer lease 0",
    "api-lease50": "this API, pointer lease 50 ms (the default before 2026-12-07)",
    "api-baseline": "today's API (`python -m api` at {rev}), `/predict`",
    "mlflow": "`mlflow models serve`",
    "mlserver-invocations": "MLServer {mlserver} (MLflow runtime), `/invocations`",
    "mlserver-v2": "MLServer {mlserver} (MLflow runtime), `/v2/models/<name>/infer`",
    "constant-gthread": "constant Flask endpoint, stock gunicorn gthread",
    "constant-granian": "constant Flask endpoint, granian `--interface wsgi`",
    "constant-rsgi": "constant answer, no Flask, granian `--interface rsgi` (the floor)",
    "two-model-a": "two models at once: `/models/<name>/predict`",
    "two-model-b": "two models at once: `/models/<name>-b/predict`",
}
# The servers whose absence takes targets with it (``not_measured`` is keyed by either).
SERVER_TARGETS = {"mlserver": ("mlserver-invocations", "mlserver-v2")}


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, int) and abs(value) >= 1000:
        return f"{value:,}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{_num(ratio, 2)}×"


def _size(mb: float) -> str:
    return f"{mb:.1f} MB" if mb >= 1 else f"{mb * 1000:.0f} kB"


def _spread(stat: Mapping[str, Any]) -> str:
    spread = stat.get("spread")
    return "–" if spread is None else f"±{spread * 50:.0f} %"


def _mark(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "–"}[met]


def machine_lines(machine: Mapping[str, Any]) -> list[str]:
    """One paragraph on the machine and library versions."""
    libs = machine.get("libraries", {})
    shown = ", ".join(f"{k} {v}" for k, v in libs.items())
    return [
        f"Measured {machine.get('date_utc')} on {machine.get('cores')} cores "
        f"({machine.get('cpu')}, {machine.get('memory_gb')} GB), {machine.get('os')}, "
        f"Python {machine.get('python')}; {shown}; {machine.get('wrk') or 'wrk ?'}."
    ]


def _labels(doc: Mapping[str, Any]) -> dict[str, str]:
    """Each target's label, with the baseline's revision and MLServer's version filled in."""
    peers = doc.get("peers", {})
    rev = peers.get("baseline", {}).get("rev") or doc["plan"].get("baseline_rev") or "?"
    mlserver = peers.get("mlserver_versions", {}).get("mlserver", "1.7.1")
    return {
        name: label.format(rev=f"`{rev}`", mlserver=mlserver)
        for name, label in SERVER_LABELS.items()
    }


def not_measured(doc: Mapping[str, Any]) -> dict[str, str]:
    """The targets of this run that have no figure, each with the reason."""
    missing: dict[str, str] = {}
    for name, reason in doc.get("not_measured", {}).items():
        for target in SERVER_TARGETS.get(name, (name,)):
            if target not in doc["results"]:
                missing[target] = reason
    return missing


def online_lines(doc: Mapping[str, Any]) -> list[str]:
    """The online tables: one row per concurrency and target, the ratios, the two-model round."""
    plan = doc["plan"]
    labels = _labels(doc)
    lines = [
        f"### Online: one record per request ({plan['workers']} workers each, wrk, "
        f"median of {plan['rounds']} rounds of {plan['duration_s']} s, servers alternated)",
        "",
        "| clients | server | req/s | p50 ms | p95 ms | p99 ms | errors | req/s spread "
        "| pointer reads / request |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = [n for n in SERVER_LABELS if n in doc["results"]]
    for connections in [str(c) for c in plan["concurrencies"]]:
        for name in names:
            row = doc["results"][name]["by_concurrency"].get(connections)
            if row is None:
                continue
            reads = row.get("registry_reads_per_request")
            clients = row.get("clients", int(connections))
            label = labels[name]
            if clients != int(connections):
                label += f" ({clients} of the {connections} clients)"
            lines.append(
                f"| {connections} | {label} | {_num(row['rps']['median'])} "
                f"| {_num(row['p50_ms']['median'], 2)} | {_num(row['p95_ms']['median'], 2)} "
                f"| {_num(row['p99_ms']['median'], 2)} | {row['errors']} "
                f"| {_spread(row['rps'])} | {_num(reads['median'], 3) if reads else '–'} |"
            )
    for name, reason in not_measured(doc).items():
        lines.append(f"| – | {labels.get(name, name)} | not measured: {reason} | | | | | | |")
    servers = doc.get("servers", {})
    if servers.get("api"):
        lines += ["", f"This API: {servers['api']}."]
    memory = {
        name: doc["results"][name].get("memory")
        for name in ("api", "api-baseline", "mlflow", "mlserver-v2", "constant-gthread")
        if name in doc["results"]
    }
    if memory and all(memory.values()):
        lines += [
            "",
            "Server memory during the load, all its processes: "
            + "; ".join(
                f"{labels[n]} {m['peak_pss_total_mb']:.0f} MB PSS "
                f"({m['peak_rss_total_mb']:.0f} MB RSS)"
                for n, m in memory.items()
            )
            + ".",
        ]
    cpu = {
        name: doc["results"][name]["by_concurrency"].get("8", {}).get("cpu_ms_per_request")
        for name in names
        if not name.startswith("two-model")
    }
    if cpu and all(c and c.get("median") for c in cpu.values()):
        lines += [
            "",
            "Server CPU per request at 8 clients (all the server's processes, user + system, "
            "median ms): "
            + "; ".join(f"{labels[n]} {c['median']:.3f}" for n, c in cpu.items())
            + ".",
        ]
    sequential = {
        name: doc["results"][name]["server"].get("sequential_latency")
        for name in ("api", "api-baseline", "mlflow", "mlserver-v2", "constant-gthread")
        if name in doc["results"]
    }
    if sequential and all(sequential.values()):
        lines += [
            "",
            "One client, requests in sequence (median ms): "
            + "; ".join(
                f"{labels[n]} {v['keep_alive_ms']:.1f} on a kept-alive "
                f"connection, {v['new_connection_ms']:.1f} on a new connection each"
                for n, v in sequential.items()
            )
            + ".",
        ]
    lines += [
        "",
        "`/predict` against each peer, req/s over req/s (medians of the same rounds):",
        "",
        "| clients | vs today's API | vs constant, gunicorn gthread | vs constant, granian "
        "| vs the floor (RSGI) | vs MLServer `/v2` infer | vs `mlflow models serve` "
        "| OIP infer / `/predict` | `/models/<name>/predict` / `/predict` | lease / lease 0 "
        "| lease / lease 50 ms | p99 ms | the floor's p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for connections, c in doc["comparison"].items():
        lines.append(
            f"| {connections} | {_times(c.get('predict_over_baseline'))} "
            f"| {_times(c.get('predict_over_constant_gthread'))} "
            f"| {_times(c.get('predict_over_constant_granian'))} "
            f"| {_times(c.get('predict_over_constant_rsgi'))} "
            f"| {_times(c.get('predict_over_mlserver_v2'))} "
            f"| {_times(c.get('rps_ratio_vs_mlflow'))} "
            f"| {_num(c.get('oip_over_predict'), 2)} "
            f"| {_num(c.get('named_over_predict'), 2)} "
            f"| {_times(c.get('rps_lease_over_lease0'))} "
            f"| {_times(c.get('rps_lease_over_lease50'))} "
            f"| {_num(c.get('api_p99_ms'), 2)} "
            f"| {_num(c.get('constant_rsgi_p99_ms'), 2)} |"
        )
    lines += two_model_lines(doc)
    return lines


def two_model_lines(doc: Mapping[str, Any]) -> list[str]:
    """The two-model round: each name's share of the one-model ``/predict`` figure."""
    two = doc.get("two_model")
    if not two:
        return []
    lines = [
        "",
        f"Two models served and asked at once ({two['clients']} clients, "
        f"{two['clients_per_name']} on each name, one wrk process each, the same server "
        f"as `/predict`; the second name is the same run published again):",
        "",
        "| name | req/s | p99 ms | share of one-model `/predict` "
        "| share of `/models/<name>/predict` alone |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for entry in two["per_name"].values():
        lines.append(
            f"| `{entry['name']}` | {_num(entry['rps'])} | {_num(entry['p99_ms'], 2)} "
            f"| {_num(entry['share_of_one_model'], 2)} "
            f"| {_num(entry.get('share_of_named_path_alone'), 2)} |"
        )
    lines.append(
        f"| both | {_num(sum(e['rps'] for e in two['per_name'].values()))} | "
        f"| {_num(two['total_over_one_model'], 2)} | |"
    )
    return lines


def batch_lines(doc: Mapping[str, Any]) -> list[str]:
    """The batch table: one row per file size and way of scoring."""
    plan = doc["plan"]
    lines = [
        f"### Batch: CSV in, predictions out (median of {plan['rounds']} rounds)",
        "",
        "| rows | way | seconds | rows/s | peak RSS MB | seconds spread |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for rows, entry in doc["by_rows"].items():
        api, mlflow, inproc = entry["api"], entry["mlflow_predict"], entry["inprocess"]
        label = f"{int(rows):,}"
        lines.append(
            f"| {label} | this API (`/batch-predict`, upload + download) "
            f"| {_num(api['wall_s']['median'], 2)} | {_num(api['rows_per_s'])} "
            f"| {_num(api['peak_rss_process_mb']['max'])} (worker; whole server "
            f"PSS {_num(api['peak_pss_total_mb']['max'])}) "
            f"| {_spread(api['wall_s'])} |"
        )
        lines.append(
            f"| {label} | `mlflow models predict` | {_num(mlflow['wall_s']['median'], 2)} "
            f"| {_num(mlflow['rows_per_s'])} | {_num(mlflow['peak_rss_mb']['max'])} "
            f"| {_spread(mlflow['wall_s'])} |"
        )
        lines.append(
            f"| {label} | in-process limit (no HTTP) | {_num(inproc['score_s']['median'], 2)} "
            f"| {_num(inproc['rows_per_s'])} | {_num(inproc['peak_rss_mb']['max'])} "
            f"| {_spread(inproc['score_s'])} |"
        )
    lines += [
        "",
        "| rows | faster than MLflow | share of the in-process limit |",
        "| ---: | ---: | ---: |",
    ]
    for rows, entry in doc["by_rows"].items():
        comparison = entry["comparison"]
        lines.append(
            f"| {int(rows):,} | {_num(comparison['speedup_vs_mlflow'], 2)}× "
            f"| {_num(comparison['share_of_inprocess_limit'], 2)} |"
        )
    startup = doc.get("mlflow_predict_startup", {}).get("wall_s")
    if startup is not None:
        lines += [
            "",
            f"`mlflow models predict` on a 10-row file takes {startup:.1f} s "
            "(interpreter, imports, model load): its fixed cost.",
        ]
    return lines


def activation_lines(doc: Mapping[str, Any]) -> list[str]:
    """The activation table: one row per model and pointer lease."""
    plan = doc["plan"]
    lines = [
        f"### Activation: `POST /models/activate` to predictions by the new version "
        f"({plan['workers']} workers, {plan['pollers']} clients sending `/predict` every "
        f"{plan.get('poll_pause_s', 0) * 1000:.0f} ms, median of {plan['rounds']} cold switches)",
        "",
        "| model | lease ms | ONNX | prepare s | acknowledged s | all workers s after ack "
        "| slowest request / steady p99: switch | before it | errors "
        "| answers marked stale | old version after ack (of which marked stale) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    tables = [
        (doc[key], suffix)
        for key, suffix in (
            ("models", ""),
            ("models_lease_zero", ""),
            ("models_no_mirror", " (MLflow mirror off)"),
        )
        if key in doc
    ]
    for models, suffix in tables:
        for kind, entry in models.items():
            lines.append(
                f"| {kind}{suffix} | {entry.get('lease_ms', '–')} | {_size(entry['onnx_mb'])} "
                f"| {_num(entry.get('prepare_s', {}).get('median'), 3)} "
                f"| {_num(entry['acknowledged_s']['median'], 3)} "
                f"| {_num(entry.get('all_workers_after_ack_s', {}).get('median'), 3)} "
                f"| {_times(entry.get('slowest_over_steady_p99', {}).get('max'))} "
                f"| {_times(entry.get('slowest_before_switch_over_steady_p99', {}).get('max'))} "
                f"| {entry['errors']} "
                f"| {entry.get('stale_responses', '–')} "
                f"| {entry['old_version_after_ack']} "
                f"({entry.get('old_version_after_ack_marked_stale', '–')}) |"
            )
    lines += [
        "",
        "Prepare: the version staged until every worker loaded it in the background (part of "
        "the time to the acknowledgement). Slowest request: the worst ratio over the rounds, "
        "of requests sent during the switch (from the pointer write until every worker served "
        "the new version) and, apart, of those sent before it, while the version was checked "
        "and the workers prepared.",
        "",
        "What one process pays to load a version (no HTTP, idle API): "
        + "; ".join(
            f"{kind}: GridFS read + sha256 "
            f"{_num(entry['load_cost_one_process']['read_artifact_s']['median'], 3)} s, "
            f"onnxruntime session "
            f"{_num(entry['load_cost_one_process']['build_session_s']['median'], 3)} s"
            for kind, entry in doc["models"].items()
            if "load_cost_one_process" in entry
        )
        + ". Every worker pays it once, before the switch (the answering worker validates "
        "with the session it then serves).",
    ]
    return lines


SPARK_WAYS = {
    "score": "`registry_bridge.spark.score`",
    "spark_udf": "`mlflow.pyfunc.spark_udf` (sklearn model)",
    "spark_udf_gridfs": "`spark_udf` on `models:/<name>@production` (gridfs plugin)",
    "single": "single process, onnxruntime (the limit)",
}


def spark_lines(doc: Mapping[str, Any]) -> list[str]:
    """The Spark table: per model, size and way, seconds, rows/s and peak memory."""
    plan = doc["plan"]
    lines = [
        f"### Spark: Parquet in, Parquet out, `{plan['master']}` (median of the rounds run)",
        "",
        "| model | rows | way | seconds | rows/s | µs/row | peak RSS MB driver / worker "
        "| rounds | load (1 min) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for family, entry in doc["families"].items():
        for rows, by_way in entry["by_rows"].items():
            for way, label in SPARK_WAYS.items():
                measured = by_way.get(way)
                if not measured:
                    continue
                lines.append(
                    f"| {family} | {int(rows):,} | {label} "
                    f"| {_num(measured['job_s']['median'], 2)} | {_num(measured['rows_per_s'])} "
                    f"| {_num(measured['us_per_row'], 2)} "
                    f"| {_num(measured['driver_peak_rss_mb'])} / "
                    f"{_num(measured['worker_peak_rss_mb'])} "
                    f"| {len(measured['job_s']['rounds'])} "
                    f"| {', '.join(f'{x:.1f}' for x in measured['load_1m'])} |"
                )
    lines += [
        "",
        "| model | rows | `score` vs `spark_udf` | vs `spark_udf` (gridfs) | share of single |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for family, entry in doc["families"].items():
        for rows, by_way in entry["by_rows"].items():
            comparison = by_way["comparison"]
            lines.append(
                f"| {family} | {int(rows):,} | {_num(comparison['score_vs_spark_udf'], 2)}× "
                f"| {_num(comparison['score_vs_spark_udf_gridfs'], 2)}× "
                f"| {_num(comparison['share_of_single_process'], 2)} |"
            )
    if not plan.get("gridfs_plugin"):
        lines += ["", "The gridfs artifact plugin was not installed: its row was not measured."]
    return lines


def goal_lines(docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each goal of the issue with the measured value and whether it was met."""
    lines = ["### Goals", "", "| goal | measured | met |", "| --- | --- | --- |"]
    online = docs.get("online")
    if online:
        lines += online_goal_lines(online)
    batch = docs.get("batch")
    if batch:
        for rows, entry in batch["by_rows"].items():
            comparison = entry["comparison"]
            lines.append(
                f"| batch ≥ 3× faster than `mlflow models predict` ({int(rows):,} rows) "
                f"| {_num(comparison['speedup_vs_mlflow'], 2)}× "
                f"| {_mark(comparison['goal_3x_mlflow'])} |"
            )
            lines.append(
                f"| batch ≥ 70 % of the in-process limit ({int(rows):,} rows) "
                f"| {_num(comparison['share_of_inprocess_limit'], 2)} "
                f"| {_mark(comparison['goal_70pct_of_limit'])} |"
            )
        largest = max(batch["by_rows"], key=int)
        peak = batch["by_rows"][largest]["api"]["peak_rss_process_mb"]["max"]
        lines.append(
            f"| API peak memory < 300 MB ({int(largest):,} rows, RSS of the worker "
            "running the batch) "
            f"| {_num(peak)} MB | {_mark(batch['goal_api_peak_under_300mb'])} |"
        )
    promotion = docs.get("promotion")
    if promotion:
        lines += promotion_goal_lines(promotion)
    spark = docs.get("spark")
    if spark:
        for family, entry in spark["families"].items():
            largest = max(entry["by_rows"], key=int)
            comparison = entry["by_rows"][largest]["comparison"]
            lines.append(
                f"| Spark ≥ 70 % of the single-process limit ({family}, {int(largest):,} rows) "
                f"| {_num(comparison['share_of_single_process'], 2)} "
                f"| {_mark(comparison['goal_70pct_of_single'])} |"
            )
            goal = 3.0 if family == "random_forest" else 1.5
            measured = comparison["score_vs_spark_udf"]
            lines.append(
                f"| Spark ≥ {goal:g}× `spark_udf` ({family}, {int(largest):,} rows) "
                f"| {_num(measured, 2)}× | {_mark(meets(measured, goal))} |"
            )
    activation = docs.get("activation")
    if activation:
        for kind, entry in activation["models"].items():
            what = f"{kind}, {_size(entry['onnx_mb'])}"
            lines.append(
                f"| activation visible on every worker < 1 s ({what}) "
                f"| {_num(entry['all_workers_s']['median'], 3)} s "
                f"| {_mark(entry['goal_visible_under_1s'])} |"
            )
            if "goal_every_worker_within_0_2s_of_ack" in entry:
                after = entry["all_workers_after_ack_s"]["max"]
                slow = entry["slowest_over_steady_p99"]["max"]
                lines += [
                    f"| every worker serving it ≤ 0.2 s after the acknowledgement ({what}) "
                    f"| {_num(after, 3)} s (worst round) "
                    f"| {_mark(entry['goal_every_worker_within_0_2s_of_ack'])} |",
                    f"| no request during the switch slower than 2× the steady p99 ({what}) "
                    f"| {_num(slow, 2)}× (worst round) "
                    f"| {_mark(entry['goal_no_request_over_2x_steady_p99'])} |",
                    f"| 0 errors, 0 old-version answers after the acknowledgement ({what}) "
                    f"| {entry['errors']} errors, {entry['old_version_after_ack']} old "
                    f"| {_mark(entry['goal_no_error_no_old_answer'])} |",
                ]
        for kind, entry in activation.get("models_no_mirror", {}).items():
            if entry.get("slowest_over_steady_p99", {}).get("max") is not None:
                lines.append(
                    f"| the same, MLflow mirror off ({kind}, {_size(entry['onnx_mb'])}) "
                    f"| {_num(entry['slowest_over_steady_p99']['max'], 2)}× (worst round) "
                    f"| {_mark(entry['goal_no_request_over_2x_steady_p99'])} |"
                )
    capture = docs.get("capture")
    if capture:
        cost = capture["comparison"]["throughput_cost"]
        lines.append(
            f"| capture at 100 % costs ≤ 5 % of `/predict` throughput "
            f"({capture['plan']['connections']} clients) "
            f"| {'–' if cost is None else f'{100 * cost:.1f} %'} "
            f"| {_mark(capture['comparison']['goal_cost_at_most_5_percent'])} |"
        )
    return lines


def _goal(what: str, value: str | None, met: bool | None, reason: str | None = None) -> str:
    measured = value if value is not None else f"not measured ({reason or 'no figure'})"
    return f"| {what} | {measured} | {_mark(met)} |"


def online_goal_lines(doc: Mapping[str, Any]) -> list[str]:
    """Issue 23's online goals (at 8 clients) and the earlier ones against MLflow."""
    missing = not_measured(doc)
    lines = []
    c8 = doc["comparison"].get("8")
    if c8 is not None:
        rows = (
            (
                "`/predict` ≥ 2.5× today's API",
                "predict_over_baseline",
                "goal_2_5x_baseline",
                "api-baseline",
            ),
            (
                "`/predict` ≥ 1.6× the constant endpoint under stock gunicorn gthread",
                "predict_over_constant_gthread",
                "goal_1_6x_constant_gthread",
                "constant-gthread",
            ),
            (
                "`/predict` ≥ 20× MLServer's `/v2/.../infer`",
                "predict_over_mlserver_v2",
                "goal_20x_mlserver_v2",
                "mlserver-v2",
            ),
            (
                "`/predict` ≥ 60× `mlflow models serve`",
                "rps_ratio_vs_mlflow",
                "goal_60x_mlflow",
                "mlflow",
            ),
        )
        for what, key, goal, target in rows:
            value = c8.get(key)
            lines.append(
                _goal(
                    f"{what} (8 clients)",
                    None if value is None else f"{_num(value, 2)}×",
                    c8.get(goal),
                    missing.get(target),
                )
            )
        p99 = c8.get("api_p99_ms")
        floor = c8.get("constant_rsgi_p99_ms")
        lines.append(
            _goal(
                "`/predict` p99 ≤ 3 ms (8 clients)",
                None
                if p99 is None
                else f"{_num(p99, 2)} ms"
                + ("" if floor is None else f" (the floor, no Flask: {_num(floor, 2)} ms)"),
                c8.get("goal_p99_3ms"),
            )
        )
        oip = c8.get("oip_over_predict")
        lines.append(
            _goal(
                "OIP `infer` ≥ 0.8 of `/predict`, the same record (8 clients)",
                None if oip is None else _num(oip, 2),
                c8.get("goal_oip_0_8_of_predict"),
                missing.get("api-oip"),
            )
        )
    two = doc.get("two_model")
    if two:
        for entry in two["per_name"].values():
            lines.append(
                _goal(
                    f"two models at 50/50: `{entry['name']}` ≥ 0.45 of one-model "
                    f"({two['clients']} clients)",
                    _num(entry["share_of_one_model"], 2),
                    entry["goal_0_45_of_one_model"],
                )
            )
    for connections, comparison in doc["comparison"].items():
        clients = f"{connections} client{'s' if connections != '1' else ''}"
        lines.append(
            f"| throughput ≥ 3× MLflow ({clients}) "
            f"| {_num(comparison['rps_ratio_vs_mlflow'], 2)}× "
            f"| {_mark(comparison['goal_rps_3x'])} |"
        )
        lines.append(
            f"| p99 ≤ ⅓ of MLflow's ({clients}) "
            f"| MLflow's p99 is {_num(comparison['p99_mlflow_over_api'], 2)}× ours "
            f"| {_mark(comparison['goal_p99_third'])} |"
        )
    return lines


def load_lines(docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The machine's load average around each part (other work on the machine shows here)."""
    parts = [
        f"{name} {doc['load_average_before'][0]:.2f} → {doc['load_average_after'][0]:.2f}"
        for name, doc in docs.items()
    ]
    return ["1-minute load average before → after: " + "; ".join(parts) + "."]


def capture_lines(doc: Mapping[str, Any]) -> list[str]:
    """The capture table of ``bench/results/README-table.md``."""
    plan = doc["plan"]
    rows = [
        f"### Capture: `/predict` at {plan['connections']} clients, capture 0 % against "
        f"100 % ({plan['workers']} workers each, median of {plan['rounds']} rounds of "
        f"{plan['duration_s']} s, servers alternated)",
        "",
        "| capture | req/s | p50 ms | p99 ms | errors |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (("capture_0", "0 %"), ("capture_100", "100 %")):
        r = doc["results"][name]
        rows.append(
            f"| {label} | {r['rps']['median']} | {r['p50_ms']['median']} | "
            f"{r['p99_ms']['median']} | {r['errors']} |"
        )
    comparison = doc["comparison"]
    captured = doc["captured_during_rounds"]
    cost = comparison["throughput_cost"]
    verdict = {True: "met", False: "not met", None: "–"}[comparison["goal_cost_at_most_5_percent"]]
    rows += [
        "",
        f"Throughput cost of capture at 100 %: "
        f"{'–' if cost is None else f'{100 * cost:.1f} %'} (goal ≤ 5 %: "
        f"{verdict}); "
        f"{captured['written']:.0f} records written, {captured['dropped']:.0f} dropped, "
        f"{captured['failed']:.0f} failed during the rounds. Load average before "
        f"{doc['load_average_before'][0]:.2f}, after {doc['load_average_after'][0]:.2f}.",
    ]
    return rows


def promotion_lines(doc: Mapping[str, Any]) -> list[str]:
    """The safe-promotion table: the gate's time, shadow traffic's cost, the canary's share."""
    plan, gate, shadow, canary = doc["plan"], doc["gate"], doc["shadow"], doc["canary"]
    rows = [
        f"### Safe promotion: gate, shadow at 100 %, canary at {plan['canary_percent']:g} % "
        f"({plan['workers']} workers; shadow: `/predict` at {plan['connections']} clients, "
        f"median of {plan['rounds']} rounds of {plan['duration_s']} s, off and on alternated)",
        "",
        "| shadow | req/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("off", "on"):
        r = shadow["results"][mode]
        rows.append(
            f"| {mode} | {r['rps']['median']} | {r['p50_ms']['median']} | "
            f"{r['p99_ms']['median']} | {r['errors']} |"
        )
    cost = shadow["throughput_cost"]
    cold = gate["cold_process"]
    rows += [
        "",
        f"Shadow at 100 %: throughput cost {'–' if cost is None else f'{100 * cost:.1f} %'}, "
        f"p50 {shadow['p50_delta_ms']:+.2f} ms; {shadow['records_scored_by_the_shadow']:.0f} "
        f"records scored by the shadow ({shadow['share_of_on_requests_scored']} of the "
        'requests of the "on" rounds). '
        f"Gate on {gate['reference_rows']} reference rows: {gate['warm_s']['median']} s "
        f"(max {gate['warm_s']['max']} s) in a running process, {cold['gate_s']} s in a fresh "
        f"`bridge activate` (whole command {cold['command_wall_s']} s). "
        f"Canary: {canary['answered_by_canary']} of {canary['requests']:,} keyed requests "
        f"answered by it ({canary['share_percent']} %), {canary['failed']} failed.",
    ]
    return rows


def promotion_goal_lines(doc: Mapping[str, Any]) -> list[str]:
    """The safe-promotion goals with their measured values."""
    gate, shadow, canary = doc["gate"], doc["shadow"], doc["canary"]
    worst = max(gate["warm_s"]["max"] or 0, gate["cold_process"]["gate_s"] or 0)
    cost = shadow["throughput_cost"]
    return [
        f"| promotion gate ≤ 1 s ({gate['reference_rows']} rows, worst of warm and cold) "
        f"| {_num(worst, 3)} s | {_mark(gate['goal_at_most_1_s'])} |",
        f"| shadow at 100 % costs ≤ 10 % of `/predict` throughput "
        f"| {'–' if cost is None else f'{100 * cost:.1f} %'} "
        f"| {_mark(shadow['goal_cost_at_most_10_percent'])} |",
        f"| canary share within ±2 points ({canary['requests']:,} requests at "
        f"{doc['plan']['canary_percent']:g} %) | {canary['share_percent']} % "
        f"| {_mark(canary['goal_within_2_points'])} |",
    ]


def render(docs: Mapping[str, Mapping[str, Any]], command: str) -> str:
    """The whole markdown section for ``docs`` (keys online, batch, activation; any subset)."""
    first = next(iter(docs.values()))
    lines = ["<!-- generated by `python -m bench`; do not edit by hand -->", ""]
    lines += machine_lines(first["machine"])
    lines += [
        "",
        f"Command: `{command}`. Model: {first['model']['family']} candidate run, "
        "the same MLflow run for every server. Spread is ±half the range of the rounds "
        "relative to their median.",
        "",
    ]
    lines += load_lines(docs) + [""]
    for name, render_part in (
        ("online", online_lines),
        ("batch", batch_lines),
        ("activation", activation_lines),
        ("capture", capture_lines),
        ("promotion", promotion_lines),
        ("spark", spark_lines),
    ):
        if name in docs:
            lines += render_part(docs[name]) + [""]
    lines += goal_lines(docs)
    return "\n".join(lines) + "\n"
