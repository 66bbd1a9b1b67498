"""Tests of /health, /ready, /metrics, /openapi.json and the JSON error handling."""

from __future__ import annotations

import json
import logging

from api_fixtures import FAMILIES, record

from registry_bridge.errors import STATUS_BY_CODE


def test_health_and_ready(client, published):
    """Check liveness and that readiness names the loaded version."""
    assert client.get("/health").json["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json["model"]["version"] == published.versions[FAMILIES[0]]


def test_metrics_count_requests_and_predictions(client, published):
    """Check that /metrics counts requests per endpoint/status and predictions per version."""

    def sample(text: str, prefix: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    version = published.versions[FAMILIES[0]]
    pred_key = f'api_predictions_total{{model="vertebral-column",version="{version}"}}'
    req_key = 'api_requests_total{endpoint="/predict",method="POST",status="200"}'
    bad_key = 'api_requests_total{endpoint="/predict",method="POST",status="400"}'
    before = client.get("/metrics").get_data(as_text=True)
    client.post("/predict", json={"records": [record(r) for r in published.inputs[:3]]})
    client.post("/predict", json={"records": []})
    after = client.get("/metrics")
    assert after.mimetype == "text/plain"
    text = after.get_data(as_text=True)
    assert sample(text, pred_key) - sample(before, pred_key) == 3
    assert sample(text, req_key) - sample(before, req_key) == 1
    assert sample(text, bad_key) - sample(before, bad_key) == 1
    assert "api_request_duration_seconds_bucket" in text


def test_openapi_describes_every_route_and_error_code(app, client):
    """Check that every registered route is in the spec and the error codes are listed."""
    spec = client.get("/openapi.json").json
    documented = set(spec["paths"])
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path in documented, path
    codes = spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert set(codes["enum"]) == set(STATUS_BY_CODE)
    assert {"400", "413", "415", "503"} <= set(spec["paths"]["/predict"]["post"]["responses"])


def test_http_errors_are_json(client, published):
    """Check that unknown paths and wrong methods get JSON errors, not HTML."""
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "NOT_FOUND"
    wrong = client.get("/predict")
    assert wrong.status_code == 405
    assert wrong.json["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "POST" in wrong.json["error"]["message"]


def test_one_structured_log_line_per_request(client, published, caplog):
    """Check that each request logs one JSON line with status, timing and version."""
    with caplog.at_level(logging.INFO, logger="api.access"):
        client.post("/predict", json=record(published.inputs[0]))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "api.access"]
    assert len(lines) == 1
    assert lines[0]["path"] == "/predict" and lines[0]["status"] == 200
    assert lines[0]["model_version"] == published.versions[FAMILIES[0]]
    assert lines[0]["ms"] > 0


def test_a_method_the_client_invents_is_one_metric_series(client, published, caplog):
    """Check that invented methods are counted as "other" (a label per value would grow the
    metrics without bound) while the access line keeps what was sent."""

    def others() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        assert not any(m in text for m in ("BREW", "WHEN", "XYZZY"))
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("api_requests_total{") and 'method="other"' in line
        )

    before = others()
    with caplog.at_level(logging.INFO, logger="api.access"):
        for method in ("BREW", "WHEN", "XYZZY"):
            assert client.open("/predict", method=method).status_code == 405
    assert others() == before + 3
    access = [r for r in caplog.records if r.name == "api.access"]
    logged = [json.loads(r.getMessage())["method"] for r in access]
    assert logged == ["BREW", "WHEN", "XYZZY"]
