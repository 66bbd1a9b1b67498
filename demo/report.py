"""The demo's evidence report: one self-contained HTML page, read without running anything."""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from conf.contract import FEATURES, cv_mean_key, cv_std_key
from pipelines.metrics import METRICS

if TYPE_CHECKING:
    from demo.run import DemoRun

SECTIONS = (
    ("data", "Data set"),
    ("study", "Optuna study"),
    ("lab", "The lab's model against ours"),
    ("plots", "Training plots"),
    ("versions", "Registered versions"),
    ("history", "Activation history"),
    ("gate", "Promotion gate"),
    ("shadow", "Shadow comparison"),
    ("feedback", "Feedback and live quality"),
    ("canary", "Canaries"),
    ("webhooks", "Webhook events"),
    ("requests", "API requests"),
    ("batch", "Batch prediction"),
    ("monitoring", "Monitoring"),
    ("cli", "bridge CLI"),
    ("timings", "Step timings"),
)

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} pre{background:#f6f8fa;padding:.7em;overflow-x:auto;font-size:.85em}
figure{display:inline-block;margin:.5em;width:48%;vertical-align:top}
figure img{width:100%;border:1px solid #ddd} figcaption{font-size:.85em;color:#555}
nav a{margin-right:1em} .ok{color:#1a7f37} .muted{color:#666}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def csv_head(path: Path | None, rows: int = 6) -> str:
    if path is None or not path.is_file():
        return "<p class='muted'>not produced</p>"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        body = [row for _, row in zip(range(rows), reader, strict=False)]
    return f"<p class='muted'>{_e(path)}</p>" + table(header, body)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def data_section(run: DemoRun) -> str:
    assert run.study is not None  # the report is written after a complete run
    dataset = run.study.dataset
    counts = dataset.labels.value_counts()
    stats = dataset.features.describe().T
    return (
        f"<p>{len(dataset.labels)} patients, {len(FEATURES)} biomechanical features, "
        f"variant {dataset.variant}. Source <code>{_e(dataset.source)}</code>, "
        f"fingerprint <code>{_e(dataset.fingerprint[:16])}…</code></p>"
        + table(["class", "patients"], counts.items())
        + table(
            ["feature", "min", "mean", "max"],
            [
                (name, f"{row['min']:.2f}", f"{row['mean']:.2f}", f"{row['max']:.2f}")
                for name, row in stats.iterrows()
            ],
        )
    )


def study_section(run: DemoRun) -> str:
    study = run.study
    assert study is not None  # the report is written after a complete run
    objective = study.objective
    rows = [
        (
            rank,
            c.family,
            c.trial.number,
            _fmt(c.trial.cv_metrics[cv_mean_key(objective)]),
            _fmt(c.trial.cv_metrics[cv_std_key(objective)]),
            _fmt(c.evaluation.metrics[f"test_{objective}"]),
            c.run_id,
        )
        for rank, c in enumerate(study.candidates, start=1)
    ]
    winner = study.winner
    metrics = [(name, _fmt(winner.evaluation.metrics[f"test_{name}"])) for name in METRICS]
    return (
        f"<p>{len(study.trials)} trials, objective cross-validated {_e(objective)}; "
        f"parent run <code>{_e(study.parent_run_id)}</code>.</p>"
        "<h3>Best trial per model family</h3>"
        + table(
            ["rank", "family", "trial", "CV mean", "CV std", f"test {objective}", "MLflow run"],
            rows,
        )
        + f"<h3>Winner: {_e(winner.family)} — test metrics</h3>"
        + table(["metric", "value"], metrics)
        + f"<details><summary>Full training output</summary><pre>{_e(run.study_report)}</pre>"
        "</details>"
    )


def plots_section(run: DemoRun) -> str:
    directory = Path(run.settings.training.reports_dir)
    figures = []
    for path in sorted(directory.glob("*.png")):
        data = base64.b64encode(path.read_bytes()).decode()
        title = path.stem.replace("_", " ").capitalize()
        figures.append(
            f"<figure><img alt='{_e(title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(title)}</figcaption></figure>"
        )
    return "".join(figures) or "<p class='muted'>no plots found</p>"


def versions_section(run: DemoRun) -> str:
    rows = []
    for v in run.versions:
        metrics = v.get("metrics", {})
        rows.append(
            (
                v["version"],
                "yes" if v.get("active") else "",
                v.get("model_family"),
                _fmt(metrics.get("test_f1_macro", "")),
                v.get("created_at"),
                v.get("created_by"),
                v.get("run_id"),
                str(v.get("sha256", ""))[:16] + "…",
                v.get("size_bytes"),
            )
        )
    details = "".join(
        f"<details><summary>Version {v['version']}: every field</summary>"
        f"<pre>{_e(json.dumps(v, indent=2, default=str))}</pre></details>"
        for v in run.versions
    )
    model_page = f"http://127.0.0.1:5000/#/models/{quote(run.settings.api.model_name, safe='')}"
    mlflow = (
        "<p>MLflow's Model Registry mirrors these versions; its alias moved with each "
        f"activation: {'; '.join(_e(line) for line in run.aliases) or 'not mirrored'}. "
        f"Model page: <a href='{_e(model_page)}'>{_e(model_page)}</a> "
        "(start the UI with <code>make mlflow-ui</code>).</p>"
    )
    return mlflow + (
        table(
            [
                "version",
                "active",
                "family",
                "test macro F1",
                "created",
                "by",
                "MLflow run",
                "sha256",
                "bytes",
            ],
            rows,
        )
        + details
    )


def history_section(run: DemoRun) -> str:
    return table(
        ["at", "action", "from", "to", "by", "reason"],
        [
            (
                e.get("at"),
                e.get("action"),
                e.get("from_version"),
                e.get("to_version"),
                e.get("by"),
                e.get("reason"),
            )
            for e in run.history
        ],
    )


def _history_entries(run: DemoRun, action: str) -> list[dict[str, Any]]:
    return [e for e in run.history if e.get("action") == action]


def gate_section(run: DemoRun) -> str:
    """The gate's refusal (or none), and each gated activation's report from the history."""
    refusal = (
        f"<p>The gate refused the runner-up:</p><pre>{_e(chr(10).join(run.gate_refusal))}</pre>"
        if run.gate_refusal
        else "<p class='muted'>The gate did not refuse the runner-up in this run.</p>"
    )
    rows = []
    for entry in run.history:
        gate = (entry.get("details") or {}).get("gate") or entry.get("gate")
        if not isinstance(gate, dict):
            continue
        for rule in gate.get("rules") or []:
            shown = ("metric", "candidate", "active", "passed", "failures", "skipped")
            bounds = {k: v for k, v in rule.items() if k not in shown}
            rows.append(
                (
                    entry.get("at"),
                    entry.get("action"),
                    f"v{entry.get('from_version')} → v{entry.get('to_version')}",
                    rule.get("metric"),
                    _fmt(rule.get("candidate")),
                    _fmt(rule.get("active")),
                    ", ".join(f"{k} {v}" for k, v in bounds.items()),
                    "passed" if rule.get("passed") else "FAILED",
                    "FORCED" if gate.get("forced") else ("passed" if gate.get("passed") else ""),
                    entry.get("reason"),
                )
            )
    header = ["at", "action", "versions", "metric", "candidate", "active", "bounds", "rule"]
    return refusal + (table([*header, "gate", "reason"], rows) if rows else "")


def shadow_section(run: DemoRun) -> str:
    """Agreement, the disagreement matrix, latencies and live accuracy per shadow pair."""
    report = run.shadow
    if not report or not report.get("pairs"):
        return "<p class='muted'>not produced</p>"
    parts = [
        f"<p><code>bridge shadow</code> at 100 %: the held-out patients were answered by the "
        f"active version while the shadow scored a copy after each answer; "
        f"<code>bridge compare</code> over the last {_e(report.get('window'))}.</p>"
    ]
    for pair in report["pairs"]:
        matrix = pair["matrix"]
        latency = pair.get("latency") or {}
        live = pair.get("live_accuracy") or {}
        parts.append(
            f"<h3>v{_e(pair['shadow_version'])} (shadow) vs v{_e(pair['active_version'])} "
            f"(active): {_e(pair['compared'])} records, agreement "
            f"{100 * (pair['agreement'] or 0):.1f} %</h3>"
            + table(
                ["active \\ shadow", *matrix["classes"]],
                [
                    (f"v{pair['active_version']}: {c}", *row)
                    for c, row in zip(matrix["classes"], matrix["counts"], strict=True)
                ],
            )
            + table(
                ["", "p50 ms", "p99 ms", "live accuracy"],
                [
                    (
                        f"active v{pair['active_version']} (request)",
                        _fmt(latency.get("active", {}).get("p50_ms")),
                        _fmt(latency.get("active", {}).get("p99_ms")),
                        _fmt(live.get("active")),
                    ),
                    (
                        f"shadow v{pair['shadow_version']} (per record)",
                        _fmt(latency.get("shadow", {}).get("p50_ms")),
                        _fmt(latency.get("shadow", {}).get("p99_ms")),
                        _fmt(live.get("shadow")),
                    ),
                ],
            )
            + f"<p class='muted'>{_e(live.get('labelled', 0))} of the compared records "
            "labelled through POST /feedback.</p>"
        )
    return "".join(parts)


def feedback_section(run: DemoRun) -> str:
    """Live quality per version from bridge monitor, beside the test metrics at publish."""
    if not run.quality:
        return "<p class='muted'>not produced</p>"
    parts = [
        "<p>The held-out patients' true diagnoses were sent to <code>POST /feedback</code> "
        "with the request id of their answer; <code>bridge monitor --json</code> joined them "
        "to the captured requests.</p>"
    ]
    for q in run.quality:
        test = q.get("test_metrics") or {}
        delta = q.get("test_metrics_delta") or {}
        confusion = q.get("confusion") or {}
        parts.append(
            f"<h3>v{_e(q['version'])}: {_e(q.get('labelled'))} labelled of "
            f"{_e(q.get('captured'))} captured — {_e(q.get('status'))}</h3>"
            + table(
                ["metric", "live", "test at publish", "change"],
                [
                    (m, _fmt(q.get(m)), _fmt(test.get(m)), _fmt(delta.get(m)))
                    for m in ("accuracy", "f1_macro", "sensitivity", "specificity")
                    if q.get(m) is not None
                ],
            )
        )
        if confusion.get("matrix"):
            parts.append(
                table(
                    ["label \\ decision", *confusion["labels"]],
                    [
                        (label, *row)
                        for label, row in zip(confusion["labels"], confusion["matrix"], strict=True)
                    ],
                )
            )
    return "".join(parts)


def canary_section(run: DemoRun) -> str:
    """The guardrail's abort with both versions' figures, then the promoted canary."""
    abort = run.canary_abort
    if not abort:
        return "<p class='muted'>not produced</p>"
    details = abort.get("details") or {}
    rows = [
        (
            side,
            (details.get(side) or {}).get("version"),
            (details.get(side) or {}).get("requests"),
            (details.get(side) or {}).get("errors"),
            _fmt((details.get(side) or {}).get("p99_ms")),
        )
        for side in ("canary", "active")
    ]
    promote = run.canary_promote or {}
    return (
        "<p>A deliberately broken candidate (the runner-up's ONNX graph, failing on "
        "degree_spondylolisthesis above 1000; <code>demo/broken_model.py</code>) answered "
        "50 % of requests as a canary. Records with degree_spondylolisthesis 2000 sent with "
        "<code>X-Request-Key</code>s routed to it failed with 5xx, and the guardrail ended it:</p>"
        f"<pre>{_e(abort.get('action'))} at {_e(abort.get('at'))} by {_e(abort.get('by'))}\n"
        f"{_e(abort.get('reason'))}</pre>"
        + table(["side", "version", "requests in window", "failed", "p99 ms"], rows)
        + "<p>Then the runner-up as a healthy 20 % canary, promoted: "
        f"<code>{_e(promote.get('action'))}</code> v{_e(promote.get('from_version'))} → "
        f"v{_e(promote.get('to_version'))} ({_e(promote.get('reason'))}); a rollback brought "
        "the best version back for the next steps.</p>"
    )


def webhooks_section(run: DemoRun) -> str:
    """Each POST the demo's receiver got, with whether its signature verified."""
    if not run.webhook_events:
        return "<p class='muted'>not produced</p>"
    return (
        "<p>A receiver on 127.0.0.1 (the code of docs/webhooks.md) was registered with "
        "<code>bridge webhooks add … --secret-env DEMO_WEBHOOK_SECRET</code> before the "
        "promotion steps; the API's workers sent it every change, signed.</p>"
        + table(
            ["event", "action", "from", "to", "actor", "reason", "time", "signature verified"],
            [
                (
                    e.get("event"),
                    (e.get("details") or {}).get("action", ""),
                    e.get("from_version"),
                    e.get("to_version"),
                    e.get("actor"),
                    e.get("reason") or "",
                    e.get("time"),
                    "yes" if e.get("verified") else "NO",
                )
                for e in run.webhook_events
            ],
        )
    )


def requests_section(run: DemoRun) -> str:
    parts = []
    for exchange in run.exchanges:
        body = exchange.body
        try:
            body = json.dumps(json.loads(body), indent=2)
        except ValueError:
            pass
        if len(body) > 4000:
            body = body[:4000] + "\n…"
        parts.append(
            f"<h3>{_e(exchange.title)}</h3><pre>{_e(exchange.curl)}</pre>"
            f"<p>HTTP {exchange.status}</p><pre>{_e(body)}</pre>"
        )
    return "".join(parts)


def monitoring_section(run: DemoRun) -> str:
    """The drift table after the shifted batch, the class mix and one plot per feature."""
    report = run.monitoring
    if not report:
        return "<p class='muted'>not produced</p>"
    rows = [
        (
            f["name"],
            f["sample_size"],
            f"{f['ks']:.3f}",
            f"{f['psi']:.3f}",
            f"{100 * f['missing_share']:.1f} %",
            f"{100 * f['out_of_range_share']:.1f} %",
            f"{f['baseline_mean']:.2f}",
            f"{f['live_mean']:.2f}",
            "DRIFT" if f["drift"] else "ok",
        )
        for f in report["features"]
    ]
    mix = report["class_mix"]
    thresholds = report["thresholds"]
    figures = "".join(
        f"<figure><img alt='{_e(path.stem)}' src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode()}'>"
        f"<figcaption>{_e(path.stem)}</figcaption></figure>"
        for path in run.monitoring_plots
    )
    return (
        f"<p>Every request was captured (<code>CAPTURE_SAMPLE_PERCENT=100</code>). After the "
        f"normal traffic, a batch with one feature shifted was sent; <code>bridge monitor</code> "
        f"compared the last {_e(report['window'])} of {_e(report['name'])} "
        f"v{_e(report['version'])} ({report['sample_size']} records) with its training "
        f"baseline: <strong>{_e(report['status'])}</strong>, drifting: "
        f"{_e(', '.join(report['drifted_features']) or 'none')} (exit code 3). A feature "
        f"drifts at KS &ge; {thresholds['ks']:g} or PSI &ge; {thresholds['psi']:g}.</p>"
        + table(
            [
                "feature",
                "n",
                "KS",
                "PSI",
                "missing",
                "out of range",
                "baseline mean",
                "live mean",
                "drift",
            ],
            rows,
        )
        + table(
            ["predicted class", "baseline share", "live share"],
            [
                (c, f"{100 * mix['baseline'][c]:.0f} %", f"{100 * mix['live'][c]:.0f} %")
                for c in mix["baseline"]
            ],
        )
        + figures
        + f"<p class='muted'>The console showed this at {_e(run.console_url or '')} while the "
        "demo's API ran; <code>make serve</code> serves it at http://127.0.0.1:8000/.</p>"
    )


def lab_section(run: DemoRun) -> str:
    """2C: the course lab's model (preset aws-lab) and the study's winner, same test rows."""
    from demo.lab import comparison_figures, comparison_rows  # matplotlib: 2C only

    rows = len(run.lab.split.x_test)
    figures = "".join(
        f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
        for caption, data in comparison_figures(run)
    )
    return (
        f"<p>Both models are scored on the same {rows} test rows: the lab notebook's "
        "80/10/10 stratified split with seed 42 of the 2-class file (Abnormal = positive). "
        "The lab's model is SageMaker's XGBoost set-up (<code>binary:logistic</code>, 42 "
        "rounds, no tuning; <code>python -m pipelines.train --preset aws-lab</code>, MLflow "
        f"run <code>{_e(run.lab.run_id)}</code>); ours is the study's winner. Each model's "
        "threshold was chosen on its cross-validation folds "
        f"(<code>training.threshold_rule</code>).</p>"
        + table(["metric (test rows)", "the lab's model", "ours"], comparison_rows(run))
        + figures
    )


def write_report(run: DemoRun, directory: Path, total_seconds: float) -> Path:
    """Write ``index.html`` into ``directory`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    bodies = {
        "data": data_section(run),
        "study": study_section(run),
        "plots": plots_section(run),
        "versions": versions_section(run),
        "history": history_section(run),
        "gate": gate_section(run),
        "shadow": shadow_section(run),
        "feedback": feedback_section(run),
        "canary": canary_section(run),
        "webhooks": webhooks_section(run),
        "requests": requests_section(run),
        "batch": "<h3>Input: new patients (held-out split, no labels)</h3>"
        + csv_head(run.batch_input)
        + "<h3>Output: predicciones.csv</h3>"
        + csv_head(run.batch_output),
        "monitoring": monitoring_section(run),
        "cli": "".join(f"<pre>$ {_e(c)}\n{_e(o)}</pre>" for c, o in run.cli_outputs),
        "timings": table(
            ["step", "seconds"],
            [(t, f"{s:.1f}") for t, s in run.timings] + [("total", f"{total_seconds:.1f}")],
        ),
    }
    if run.lab is not None:
        bodies["lab"] = lab_section(run)
    shown = [(key, title) for key, title in SECTIONS if key in bodies]
    nav = "".join(f"<a href='#{key}'>{_e(title)}</a>" for key, title in shown)
    sections = "".join(
        f"<section id='{key}'><h2>{_e(title)}</h2>{bodies[key]}</section>" for key, title in shown
    )
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Vertebral-column registry — demo report</title><style>{STYLE}</style>"
        f"</head><body><h1>Vertebral-column model registry — demo report</h1>"
        f"<p class='muted'>Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} in "
        f"{total_seconds:.0f}s. <span class='ok'>Every step passed.</span></p>"
        f"<nav>{nav}</nav>{sections}</body></html>"
    )
    path = directory / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
