"""Monitoring and the console: ``GET /models/<name>/monitoring``, its plots, and ``GET /``.

The console is one server-rendered page (api/templates/console.html) with its script and
style served from here too, so it needs no build step, no external asset and no inline
code (a ``script-src 'self'`` policy allows it).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from api import registry
from api.report_cache import EXTENSION as REPORTS
from registry_bridge import render
from registry_bridge.entities import ModelVersion
from registry_bridge.errors import RegistryError
from registry_bridge.monitoring import drift, inference_log, quality, shadow_log
from registry_bridge.monitoring import plots as drift_plots

bp = Blueprint("monitoring", __name__)

TEMPLATES = Path(__file__).with_name("templates")
_ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
# Same-origin only; images may be the plots or a blob (the batch result link is one).
CONSOLE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def _cached(found: ModelVersion, what: str, since: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` for one version, thing and window, reused while no record came since
    (api.report_cache: one computation at a time per worker)."""
    store = registry().store
    newest = inference_log.newest_capture(store.db, found.name, found.version)
    key = (found.name, found.version, what, drift.parse_since(since), newest)
    return current_app.extensions[REPORTS].get(key, compute)


def _drift_report(name: str, version: int | str | None, since: str) -> dict[str, Any]:
    """``drift.drift_report`` of the resolved version (a baseline stored later counts)."""
    store = registry().store
    found = store.resolve_model_version(name, version, fallback="newest")

    def compute() -> dict[str, Any]:
        report = drift.drift_report(store, registry().settings, name, found.version, since)
        if report["status"] == "no_baseline":  # cheap, and `bridge verify --baseline` ends it
            raise _NotKept(report)
        return report

    try:
        return dict(_cached(found, "report", since, compute))  # callers add to it
    except _NotKept as kept:
        return kept.report


class _NotKept(Exception):
    """A report answered once, not kept: it changes as soon as a baseline is stored."""

    def __init__(self, report: dict[str, Any]):
        self.report = report


def _since() -> str:
    """``?since=``, checked before any work (400 naming it)."""
    since = request.args.get("since", drift.DEFAULT_SINCE)
    drift.parse_since(since)
    return since


def _quality(report: dict[str, Any], since: str, asked: str | None) -> dict[str, Any]:
    """The live quality part of the report (``quality``, ``quality_drop``…), over the window
    ending now (not cached: labels come without new captures, and it reads few documents)."""
    until = datetime.now(UTC)
    return quality.quality_section(
        registry().store,
        registry().settings.monitor,
        report["name"],
        until - drift.parse_since(since),
        until,
        report["version"] if asked is not None else None,
        report["version"],
    )


@bp.get("/models/<name>/monitoring")
def monitoring(name: str) -> Response:
    """Drift of one version (``?version=``, default the active one) over ``?since=`` (24h),
    and the live quality (labels sent as feedback) of every version labelled in it."""
    store = registry().store
    since = _since()
    report = _drift_report(name, request.args.get("version"), since)
    report.update(_quality(report, since, request.args.get("version")))
    report["captured_total"] = inference_log.count_captured(store.db, name, report["version"])
    report["capture"] = {
        "sample_percent": registry().settings.capture.sample_percent,
        "retention_days": registry().settings.capture.retention_days,
    }
    return jsonify(report)


@bp.get("/models/<name>/monitoring/plots/<feature>.png")
def monitoring_plot(name: str, feature: str) -> Response:
    """The baseline-against-live histogram of one feature, as a PNG."""
    since = _since()
    version = registry().store.resolve_model_version(
        name, request.args.get("version"), fallback="newest"
    )
    png = _cached(
        version,
        f"plot:{feature}",
        since,
        lambda: drift_plots.feature_plot(registry().store, name, version.version, feature, since),
    )
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/")
def console() -> Response:
    """The console: versions, activations, capture and drift, and forms to predict."""
    name = request.args.get("name") or registry().settings.api.model_name
    page = render_template("console.html", **_console_data(name))
    response = Response(page, mimetype="text/html")
    response.headers.setdefault("Content-Security-Policy", CONSOLE_POLICY)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/console/<asset>")
def console_asset(asset: str) -> Response:
    """The console's script and style (same origin, so no inline code is needed)."""
    if asset not in _ASSETS:
        raise RegistryError("NOT_FOUND", f"no console asset {asset!r}")
    body = (TEMPLATES / asset).read_text(encoding="utf-8")
    return Response(body, mimetype=_ASSETS[asset])


def _console_data(name: str) -> dict[str, Any]:
    """What the console shows; a part the registry cannot give is shown as unavailable."""
    store = registry().store
    settings = registry().settings
    served = registry().models.names()
    data: dict[str, Any] = {
        "name": name,
        # The selector: every served name, and the one asked for even if it is not served.
        "names": served if name in served else sorted([*served, name]),
        "versions": [],
        "active": None,
        "history": [],
        "gate_lines": render.gate_lines,  # each rule of a gated activation, with both values
        "report": None,
        "error": None,
        "capture": settings.capture,
        "captured_total": None,
        "now": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "features": [],
        "quality": None,
        "shadow": None,  # bridge compare's report (registry_bridge/monitoring/shadow_log.py)
        "canary": None,
    }
    try:
        versions = store.search_model_versions(name)
        state = store.get_active_version(name)
        data["active"] = state.active_version if state else None
        data["versions"] = [
            {
                "version": v.version,
                "family": v.model_family,
                "f1": v.metrics.get("test_f1_macro"),
                "accuracy": v.metrics.get("test_accuracy"),
                "created_at": v.created_at.strftime("%Y-%m-%d %H:%M") if v.created_at else "",
                "run_id": v.run_id or "",
                "active": state is not None and v.version == state.active_version,
            }
            for v in reversed(versions)
        ]
        data["history"] = list(reversed(store.list_activation_log(name)))[:20]
        if versions:
            shown = next((v for v in versions if v.version == data["active"]), versions[-1])
            data["features"] = shown.input_schema
            data["captured_total"] = inference_log.count_captured(store.db, name)
            data["report"] = _drift_report(name, shown.version, drift.DEFAULT_SINCE)
            data["quality"] = _quality(data["report"], drift.DEFAULT_SINCE, None)
            data["shadow"] = shadow_log.compare_report(store, settings, name, drift.DEFAULT_SINCE)
            data["canary"] = state.canary if state else None
    except RegistryError as exc:
        data["error"] = exc.message
    return data
