"""``POST /feedback`` and live quality through the API: tokens, bodies, the whole loop."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from api_fixtures import MODEL, make_app, record, with_api
from feedback_samples import NAME, capture, publish

from conf.settings import SettingsError, load_settings
from registry_bridge.monitoring.feedback import FEEDBACK
from registry_bridge.store import ModelStore

ADMIN = "admin-token-0123456789"
FEEDBACK_TOKEN = "feedback-token-0123456789"


@pytest.fixture
def labelled_app(settings, registry_db, mongo_client):
    """An app with both tokens over a version of NAME with two captured requests."""
    store = ModelStore(registry_db, settings.registry)
    publish(store)
    capture(registry_db, NAME, 1, [("r-1", ["Hernia"]), ("r-2", ["Normal"])])
    app = make_app(
        with_api(settings, admin_token=ADMIN, feedback_token=FEEDBACK_TOKEN), mongo_client
    )
    return app, registry_db


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_feedback_needs_the_admin_or_the_feedback_token(labelled_app):
    """Check no token is 401, a wrong one 403, and either configured token is accepted."""
    app, db = labelled_app
    client = app.test_client()
    body = {"labels": [{"request_id": "r-1", "label": "Hernia"}]}
    missing = client.post("/feedback", json=body)
    assert missing.status_code == 401 and "WWW-Authenticate" in missing.headers
    assert missing.json["error"]["code"] == "UNAUTHORIZED"
    wrong = client.post("/feedback", json=body, headers=bearer("not-the-token-at-all"))
    assert wrong.status_code == 403 and wrong.json["error"]["code"] == "FORBIDDEN"
    assert db[FEEDBACK].count_documents({}) == 0
    by_feedback = client.post("/feedback", json=body, headers=bearer(FEEDBACK_TOKEN))
    assert by_feedback.status_code == 200, by_feedback.json
    assert by_feedback.json["stored"] == 1
    again = {"labels": [{"request_id": "r-2", "label": "Normal"}]}
    by_admin = client.post("/feedback", json=again, headers=bearer(ADMIN))
    assert by_admin.status_code == 200 and by_admin.json["versions"] == [
        {"name": NAME, "version": 1, "labels": 1}
    ]
    # The feedback token is not an admin token.
    activate = client.post(
        "/models/activate", json={"name": NAME, "version": 1}, headers=bearer(FEEDBACK_TOKEN)
    )
    assert activate.status_code == 403


def test_a_bad_row_refuses_the_whole_call_with_400(labelled_app):
    """Check a call with one bad row stores nothing and names the row, its id and why."""
    app, db = labelled_app
    answer = app.test_client().post(
        "/feedback",
        data="request_id,label\nr-1,Hernia\nr-2,Nope\n",
        content_type="text/csv",
        headers=bearer(FEEDBACK_TOKEN),
    )
    assert answer.status_code == 400
    [detail] = answer.json["error"]["details"]
    assert detail["row"] == 2 and detail["request_id"] == "r-2" and detail["field"] == "label"
    assert "nothing was stored" in answer.json["error"]["message"]
    assert db[FEEDBACK].count_documents({}) == 0


def test_csv_upload_unknown_skip_and_media_types(labelled_app):
    """Check a multipart CSV upload, ?unknown=skip, ?name= and the refused media type."""
    app, db = labelled_app
    client = app.test_client()
    upload = client.post(
        f"/feedback?name={NAME}&unknown=skip",
        data={"file": (io.BytesIO(b"request_id,label\nr-1,Normal\nlost,Normal\n"), "y.csv")},
        content_type="multipart/form-data",
        headers=bearer(ADMIN),
    )
    assert upload.status_code == 200, upload.json
    assert upload.json["stored"] == 1 and upload.json["skipped"][0]["request_id"] == "lost"
    plain = client.post("/feedback", data="x", content_type="text/plain", headers=bearer(ADMIN))
    assert plain.status_code == 415
    bad = client.post("/feedback?unknown=maybe", json={"labels": []}, headers=bearer(ADMIN))
    assert bad.status_code == 400 and bad.json["error"]["details"][0]["field"] == "unknown"
    empty = client.post("/feedback", json={"labels": []}, headers=bearer(ADMIN))
    assert empty.status_code == 400
    assert "/feedback" in client.get("/openapi.json").json["paths"]


def test_a_short_feedback_token_is_refused_at_settings_load():
    """Check api.feedback_token needs at least 16 characters (named in the error)."""
    with pytest.raises(SettingsError, match="API_FEEDBACK_TOKEN: expected at least 16"):
        load_settings(env={"API_FEEDBACK_TOKEN": "too-short"})
    assert load_settings(env={"API_FEEDBACK_TOKEN": FEEDBACK_TOKEN}).api.feedback_token


def test_the_answer_id_is_labelled_and_monitoring_shows_quality(published, mongo_client):
    """Check the whole loop: /predict names its request_id, that id is labelled through
    /feedback, and GET /models/<name>/monitoring and the console show its quality."""
    settings = replace(
        published.settings, capture=replace(published.settings.capture, sample_percent=100)
    )
    app = make_app(settings, mongo_client)
    client = app.test_client()
    answer = client.post("/predict", json=record(published.inputs[0]))
    assert answer.status_code == 200
    request_id = answer.json["request_id"]
    assert request_id == answer.headers["X-Request-Id"]
    assert app.extensions["capture"].flush()
    decided = answer.json["predictions"][0]["label"]
    stored = client.post(
        "/feedback", json={"labels": [{"request_id": request_id, "label": decided}]}
    )
    assert stored.status_code == 200, stored.json
    report = client.get(f"/models/{MODEL}/monitoring").json
    [entry] = report["quality"]
    assert entry["labelled"] == 1 and entry["accuracy"] == 1.0 and entry["coverage"] == 1.0
    assert report["quality_drop"] is False
    page = client.get("/").get_data(as_text=True)
    assert 'id="quality-table"' in page and "1 / 1" in page
