"""Text the ``bridge`` command prints: tables of versions, runs and the activation log."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from registry_bridge.entities import (
    ActivationEvent,
    ActiveState,
    CandidateRun,
    ModelVersion,
    ReferenceSet,
    json_safe,
)

MISSING = "-"


def printable(text: str) -> str:
    """``text`` with every non-printable character (line breaks, ESC, bidi controls such as
    U+202E) shown as its Python escape: a stored value cannot forge rows or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, a dashed rule under the headers; cells
    are escaped by :func:`printable` (values written before a rule existed are printed too)."""
    cells = [[MISSING if value is None else printable(str(value)) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def when(value: datetime | str | None) -> str:
    """A date as ``YYYY-MM-DD HH:MM:SS`` UTC (text passes through)."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return MISSING if value is None else str(value)


def number(value: float | None, digits: int = 4) -> str:
    """A metric rounded for a table, ``-`` when absent."""
    return MISSING if value is None else f"{value:.{digits}f}"


def versions_table(versions: Sequence[ModelVersion], active: dict[str, ActiveState]) -> str:
    """``bridge list``: one row per version, ``*`` marking the active one."""

    def is_active(v: ModelVersion) -> bool:
        return v.name in active and active[v.name].active_version == v.version

    rows = [
        (
            "*" if is_active(v) else "",
            v.name,
            v.version,
            v.model_family,
            number(v.metrics.get("test_f1_macro")),
            when(v.created_at),
            v.created_by,
            v.run_id,
        )
        for v in versions
    ]
    return table(
        ["active", "name", "version", "family", "test_f1_macro", "created (UTC)", "by", "run id"],
        rows,
    )


def version_details(version: ModelVersion, active: ActiveState | None) -> str:
    """``bridge show``: every field, one per line; mappings one entry per indented line."""
    fields = version.to_dict()
    data = {
        "name": fields.pop("name"),
        "version": fields.pop("version"),
        "active": bool(active and active.active_version == version.version),
        **fields,
    }
    if version.status != "deleted":
        data.pop("deleted_at"), data.pop("deleted_by")
    if version.threshold is None:  # only binary versions decide by a threshold
        for key in ("threshold", "threshold_rule", "positive_class"):
            data.pop(key)
    width = max(len(key) for key in data)
    lines = []
    for key, value in data.items():
        if key == "input_schema":
            lines.append(key)
            lines += [
                f"  {c['name']:<26} {c.get('dtype')}  min {c.get('min')}  max {c.get('max')}"
                for c in value
            ]
        elif isinstance(value, dict) and key != "input_example" and value:
            inner = max(len(k) for k in value)
            lines.append(key)
            lines += [f"  {k.ljust(inner)}  {v}" for k, v in sorted(value.items())]
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"{key.ljust(width)}  {text}")
    return "\n".join(lines)


def runs_table(runs: Sequence[CandidateRun], objective: str) -> str:
    """``bridge runs``: candidates best first with their metrics and published versions."""
    rows = [
        (
            i,
            r.run_id,
            r.model_family,
            r.variant or MISSING,
            ",".join(r.classes) or MISSING,
            number(r.metrics.get(objective)),
            number(r.metrics.get("test_f1_macro")),
            number(r.metrics.get("test_accuracy")),
            when(r.start_time),
            ",".join(f"v{v}" for v in r.published_versions) or "no",
        )
        for i, r in enumerate(runs, start=1)
    ]
    return table(
        [
            "rank",
            "run id",
            "family",
            "variant",
            "classes",
            objective,
            "test_f1_macro",
            "test_accuracy",
            "started (UTC)",
            "published",
        ],
        rows,
    )


def history_table(events: Sequence[ActivationEvent]) -> str:
    """``bridge history``: the activation log, oldest first, then each gated activation's rules."""
    rows = [
        (
            when(e.at),
            e.action,
            _v(e.from_version),
            _v(e.to_version),
            e.by,
            e.reason,
            gate_word(e.gate),
        )
        for e in events
    ]
    text = table(["at (UTC)", "action", "from", "to", "by", "reason", "gate"], rows)
    gated = [e for e in events if e.gate]
    if gated:
        text += "\n\npromotion gate (candidate vs the version it replaced, on the reference set):"
        for event in gated:
            text += f"\n{when(event.at)} {_v(event.to_version)}:"
            text += "".join(f"\n  {line}" for line in gate_lines(event.gate or {}))
    return text


def gate_word(gate: dict[str, Any] | None) -> str:
    """One word for the history table: passed, FORCED, or — (not gated)."""
    if not gate:
        return MISSING
    return "passed" if gate.get("passed") else ("FORCED" if gate.get("forced") else "refused")


def gate_lines(gate: dict[str, Any]) -> list[str]:
    """Each rule of a gate report with both values (``bridge activate`` and ``history``)."""
    if gate.get("problem"):
        return [f"not decided: {gate['problem']}"]
    reference = gate.get("reference") or {}
    lines = [
        f"reference set r{reference.get('version')} ({reference.get('rows')} rows), "
        f"{gate.get('seconds', 0):.2f} s"
    ]
    for rule in gate.get("rules", []):
        bounds = ", ".join(
            f"{key} {rule[key]:g}"
            for key in ("threshold", "min_absolute_change", "min_relative_change")
            if key in rule
        )
        if rule.get("skipped"):
            lines.append(f"{rule['metric']}: skipped ({rule['skipped']})")
            continue
        verdict = "passed" if rule.get("passed") else "FAILED"
        lines.append(
            f"{rule['metric']}: v{gate.get('candidate_version')} {rule['candidate']:.4f}, "
            f"v{gate.get('active_version')} {_value(rule.get('active'))} ({bounds}): {verdict}"
        )
    return lines


def _value(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def reference_table(sets: Sequence[ReferenceSet]) -> str:
    """``bridge reference show``: the name's reference sets, the newest (used) last."""
    rows = [
        (
            f"r{r.version}" + (" (used)" if r is sets[-1] else ""),
            r.rows,
            ", ".join(f"{c} {n}" for c, n in r.class_counts.items()),
            r.source,
            when(r.created_at),
            r.created_by,
            r.sha256[:12],
        )
        for r in sets
    ]
    return table(["set", "rows", "classes", "source", "created (UTC)", "by", "sha256"], rows)


def _v(version: int | None) -> str:
    return MISSING if version is None else f"v{version}"


def as_json(value: Any) -> str:
    """Indented JSON of entities (``to_dict``) or plain values."""

    def plain(item: Any) -> Any:
        return item.to_dict() if hasattr(item, "to_dict") else json_safe(item)

    payload = [plain(v) for v in value] if isinstance(value, (list, tuple)) else plain(value)
    return json.dumps(payload, indent=2, sort_keys=True)


def fleet_table(workers: Sequence[dict[str, Any]]) -> str:
    """``bridge fleet``: one row per worker heartbeat."""
    rows = [
        (
            w.get("model"),
            w.get("host"),
            w.get("pid"),
            w.get("port"),
            w.get("serving_version"),
            ",".join(str(v) for v in w.get("loaded_versions") or []) or MISSING,
            w.get("requests"),
            w.get("stale_answers"),
            f"{w['age_s']}s ago" if w.get("age_s") is not None else MISSING,
            "gone" if w.get("gone") else "live",
            "yes" if w.get("converged") else "no",
            canary_cell(w.get("canary")),
        )
        for w in workers
    ]
    headers = ("model", "host", "pid", "port", "serving", "loaded", "requests", "stale")
    return table((*headers, "last seen", "state", "converged", "canary"), rows)


def canary_cell(canary: dict[str, Any] | None) -> str:
    """What a worker routes to a canary: ``v3 10% (41 answers, 0 failed)``."""
    if not canary:
        return MISSING
    figures = canary.get("canary") or {}
    return (
        f"v{canary['version']} {canary['percent']:g}% "
        f"({figures.get('requests', 0)} answers, {figures.get('errors', 0)} failed)"
    )


def drift_table(report: dict[str, Any]) -> str:
    """``bridge monitor``: the verdict, then one row per feature and the class mix."""
    verdict = report["status"].replace("_", " ")
    lines = [
        f"{report['name']} v{report['version']}, last {report['window']}: {verdict} "
        f"({report['sample_size']} captured record(s))"
    ]
    if report.get("message"):
        lines.append(report["message"])
    if report.get("drifted_features"):
        lines.append(f"drifting: {', '.join(report['drifted_features'])}")
    if not report.get("features"):
        return "\n".join(lines)
    thresholds = report["thresholds"]
    rows = [
        (
            f["name"],
            f["sample_size"],
            number(f["ks"], 3),
            number(f["psi"], 3),
            f"{100 * f['missing_share']:.1f}%",
            f"{100 * f['out_of_range_share']:.1f}%",
            number(f["baseline_mean"], 2),
            number(f["live_mean"], 2),
            ("DRIFT" if f["drift"] else "ok") if f["judged"] else "too few",
        )
        for f in report["features"]
    ]
    headers = ["feature", "n", "KS", "PSI", "missing", "out of range", "base mean", "live mean"]
    lines.append(table([*headers, "drift"], rows))
    mix = report["class_mix"]
    shares = "; ".join(
        f"{c} {100 * mix['baseline'][c]:.0f}% -> {100 * mix['live'][c]:.0f}%"
        for c in mix["baseline"]
    )
    lines.append(f"predicted classes (baseline -> live): {shares}; PSI {number(mix['psi'], 3)}")
    lines.append(
        f"thresholds: KS >= {thresholds['ks']:g} or PSI >= {thresholds['psi']:g}, "
        f"judged from {thresholds['min_samples']} records"
    )
    return "\n".join(lines)


def prepared_line(prepared: dict[str, Any]) -> str:
    """How the live API workers were prepared before the switch (``ActiveState.prepared``)."""
    loaded = f"{prepared['loaded']} of {prepared['live_workers']} live API workers"
    version = f"v{prepared['staged_version']}"
    if not prepared["timed_out"]:
        return f"prepared in {prepared['prepare_s']:.2f} s: {loaded} had loaded {version}"
    late = ", ".join(prepared["not_loaded"])
    return (
        f"preparation timed out after {prepared['prepare_s']:.2f} s: {loaded} had loaded "
        f"{version}; {late} load it on their first request"
    )


def compare_table(report: dict[str, Any]) -> str:
    """``bridge compare``: per shadow version, agreement, matrix, latencies, drift, accuracy."""
    running = report.get("running")
    lines = [
        f"{report['name']}, last {report['window']}: {report['compared']} record(s) compared"
        + (f"; shadow v{running['version']} at {running['percent']:g}% now" if running else "")
    ]
    for pair in report["pairs"]:
        active, shadow = pair["active_version"], pair["shadow_version"]
        agreement = pair["agreement"]
        lines.append(
            f"\nv{shadow} (shadow) vs v{active} (active): {pair['compared']} records, "
            f"agreement {MISSING if agreement is None else f'{agreement:.1%}'}"
        )
        classes = pair["matrix"]["classes"]
        rows = [
            (f"v{active}: {c}", *counts)
            for c, counts in zip(classes, pair["matrix"]["counts"], strict=True)
        ]
        lines.append(table(["active \\ shadow", *classes], rows))
        latency = pair["latency"]
        lines.append(
            f"latency: active request p50 {_ms(latency['active']['p50_ms'])}, "
            f"p99 {_ms(latency['active']['p99_ms'])}; shadow scoring per record p50 "
            f"{_ms(latency['shadow']['p50_ms'])}, p99 {_ms(latency['shadow']['p99_ms'])}"
        )
        accuracy = pair["live_accuracy"]
        if accuracy["labelled"]:
            lines.append(
                f"live accuracy on {accuracy['labelled']} labelled record(s): "
                f"v{active} {accuracy['active']:.1%}, v{shadow} {accuracy['shadow']:.1%}"
            )
        else:
            lines.append("live accuracy: no labelled record yet (POST /feedback)")
        drift = pair.get("drift")
        if drift is None:
            lines.append(f"drift: v{shadow} has no baseline")
        else:
            flagged = ", ".join(drift["drifted_features"]) or "none"
            lines.append(f"drift of the shadowed records: {drift['status']} (drifting: {flagged})")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f} ms"
