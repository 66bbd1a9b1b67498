"""The API's capture, GET /models/<name>/monitoring, its plots and the console page."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from api_fixtures import MODEL, make_app, record
from inference_records import captured_records

from api.capture import current as current_capture
from pipelines.candidate import split_dataset
from pipelines.data import FEATURES, load_dataset
from registry_bridge.monitoring import baselines, drift
from registry_bridge.monitoring import plots as drift_plots
from registry_bridge.monitoring.inference_log import INFERENCE_LOG


def with_capture(settings, percent: float):
    return replace(settings, capture=replace(settings.capture, sample_percent=percent))


def give_baseline(published, version: int) -> None:
    """Store the fixture split's baseline on ``version`` (fixtures publish without a run)."""
    settings = published.settings
    split = split_dataset(
        load_dataset(settings.data), settings.training.test_size, settings.training.seed
    )
    baseline = baselines.build_baseline(
        {f: split.x_train[f].to_numpy() for f in FEATURES}, list(split.y_test), "fixture"
    )
    found = published.store.get_model_version(MODEL, version)
    published.store.set_baseline(found, baseline)


@pytest.fixture
def capturing(published, mongo_client):
    """An app capturing every request, and its database."""
    app = make_app(with_capture(published.settings, 100), mongo_client)
    return app, published.store.db


def test_predict_and_invocations_are_captured_with_their_request_id(capturing, published):
    """Check a sampled request's records land in inference_log with the answered label,
    the version, the request id the response carries, and the endpoint."""
    app, db = capturing
    client = app.test_client()
    rows = [record(r) for r in published.inputs[:3]]
    answer = client.post("/predict", json={"records": rows}, headers={"X-Request-Id": "abc-1"})
    assert answer.status_code == 200 and answer.headers["X-Request-Id"] == "abc-1"
    other = client.post("/invocations", json={"dataframe_records": rows[:1]})
    assert other.status_code == 200 and len(other.headers["X-Request-Id"]) == 32
    with app.app_context():
        assert current_capture().flush()
    captured = captured_records(db, MODEL)
    docs = sorted((r for r in captured if r["request_id"] == "abc-1"), key=lambda r: r["row"])
    assert [d["label"] for d in docs] == [p["label"] for p in answer.json["predictions"]]
    assert {d["version"] for d in docs} == {answer.json["model"]["version"]}
    assert docs[0]["features"] == pytest.approx(rows[0])
    assert docs[0]["source"] == "predict"
    assert [r["row"] for r in captured if r["source"] == "invocations"] == [0]
    assert db[INFERENCE_LOG].find_one({"request_ids": "abc-1"}) is not None


def test_batch_rows_are_captured(capturing, published):
    """Check /batch-predict rows are captured with source batch, skipped rows with the
    bad cell missing."""
    app, db = capturing
    lines = [",".join(FEATURES)] + [",".join(map(str, r)) for r in published.inputs[:4]]
    lines.append(lines[1].replace(lines[1].split(",")[0], "n/a", 1))
    body = "\n".join(lines) + "\n"
    answer = app.test_client().post(
        "/batch-predict?on_error=skip", data=body, content_type="text/csv"
    )
    assert answer.status_code == 200
    with app.app_context():
        assert current_capture().flush()
    captured = captured_records(db, MODEL)
    docs = sorted((r for r in captured if r["source"] == "batch"), key=lambda r: r["row"])
    assert len(docs) == 5 and docs[4]["label"] is None
    assert docs[4]["features"]["pelvic_incidence"] is None
    assert docs[0]["features"]["pelvic_tilt"] == pytest.approx(float(published.inputs[0][1]))


def test_capture_off_writes_nothing(published, mongo_client):
    """Check sample_percent 0 keeps nothing, and still names the request in the answer."""
    app = make_app(with_capture(published.settings, 0), mongo_client)
    answer = app.test_client().post("/predict", json=record(published.inputs[0]))
    assert answer.status_code == 200
    assert answer.json["request_id"] == answer.headers["X-Request-Id"]
    assert published.store.db[INFERENCE_LOG].count_documents({}) == 0


def test_monitoring_reports_drift_of_the_active_version(capturing, published):
    """Check GET /models/<name>/monitoring gives per-feature KS, PSI, shares and sizes,
    flags a shifted feature, and serves its plot."""
    app, db = capturing
    give_baseline(published, 1)
    client = app.test_client()
    inputs = np.repeat(published.inputs, 2, axis=0)
    inputs[:, 5] += 60
    assert client.post("/predict", json={"records": [record(r) for r in inputs]}).status_code == 200
    with app.app_context():
        assert current_capture().flush()
    body = client.get(f"/models/{MODEL}/monitoring?since=1h").json
    assert body["version"] == 1 and body["sample_size"] == len(inputs)
    assert body["status"] == "drift" and "degree_spondylolisthesis" in body["drifted_features"]
    feature = {f["name"]: f for f in body["features"]}["degree_spondylolisthesis"]
    assert {"ks", "psi", "missing_share", "out_of_range_share", "sample_size"} <= set(feature)
    assert body["captured_total"] == len(inputs) and body["capture"]["sample_percent"] == 100
    png = client.get(f"/models/{MODEL}/monitoring/plots/pelvic_tilt.png")
    assert png.status_code == 200 and png.data.startswith(b"\x89PNG")


def test_monitoring_errors_name_what_is_wrong(client, published):
    """Check unknown model, version without baseline, bad window and unknown feature."""
    assert client.get("/models/nope/monitoring").status_code == 404
    no_baseline = client.get(f"/models/{MODEL}/monitoring?version=2").json
    assert no_baseline["status"] == "no_baseline" and "--baseline" in no_baseline["message"]
    for since in ("soon", "800000d", "9" * 400 + "h", "٣h"):
        bad = client.get(f"/models/{MODEL}/monitoring", query_string={"since": since})
        assert bad.status_code == 400 and bad.json["error"]["details"][0]["field"] == "since"
        plot = client.get(
            f"/models/{MODEL}/monitoring/plots/{FEATURES[0]}.png", query_string={"since": since}
        )
        assert plot.status_code == 400, since
    give_baseline(published, 1)
    assert client.get(f"/models/{MODEL}/monitoring/plots/age.png").status_code == 404


def test_console_shows_versions_history_and_drift(client, published):
    """Check GET / renders every version, the active one, the history and the drift
    section, with a same-origin policy and its script served without inline code."""
    give_baseline(published, 1)
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "Active version: <strong>v1</strong>" in html
    assert 'data-action="activate" data-version="2"' in html
    assert "fixture" in html  # the activation reason
    assert 'id="drift-status"' in html and "insufficient data" in html
    assert "<script>" not in html and "onclick" not in html
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    script = client.get("/console/console.js")
    assert script.status_code == 200 and "Authorization" in script.get_data(as_text=True)
    assert client.get("/console/secrets.txt").status_code == 404


def test_plots_are_computed_once_until_new_records_arrive(capturing, published, monkeypatch):
    """Check that repeated plot and report requests reuse one computation, and that a new
    captured record makes the next one fresh (issue 21 item 8: 16 clients fetching plots
    took the CPU from /predict)."""

    app, db = capturing
    give_baseline(published, 1)
    client = app.test_client()
    assert client.post("/predict", json=record(published.inputs[0])).status_code == 200
    with app.app_context():
        assert current_capture().flush()
    calls = {"plot": 0, "report": 0}
    real_plot, real_report = drift_plots.feature_plot, drift.drift_report

    def counted(kind, real):
        def call(*args, **kwargs):
            calls[kind] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(drift_plots, "feature_plot", counted("plot", real_plot))
    monkeypatch.setattr(drift, "drift_report", counted("report", real_report))
    for _ in range(5):
        png = client.get(f"/models/{MODEL}/monitoring/plots/pelvic_tilt.png?since=1h")
        assert png.status_code == 200 and png.data.startswith(b"\x89PNG")
        assert client.get(f"/models/{MODEL}/monitoring?since=1h").json["sample_size"] == 1
    assert calls == {"plot": 1, "report": 1}
    assert client.post("/predict", json=record(published.inputs[1])).status_code == 200
    with app.app_context():
        assert current_capture().flush()
    assert client.get(f"/models/{MODEL}/monitoring?since=1h").json["sample_size"] == 2
    assert (
        client.get(f"/models/{MODEL}/monitoring/plots/pelvic_tilt.png?since=1h").status_code == 200
    )
    assert calls == {"plot": 2, "report": 2}
