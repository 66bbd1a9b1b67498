"""Tests of model management: listing, one version, artifact download, activate, rollback, auth."""

from __future__ import annotations

import hashlib
import time

import pytest
from api_fixtures import FAMILIES, MODEL, make_app, record, with_api

V1, V2 = FAMILIES


def test_list_marks_the_active_version(client, published):
    """Check that GET /models lists every version with metadata and one active flag."""
    body = client.get("/models").json
    assert body["count"] == 2
    by_version = {m["version"]: m for m in body["models"]}
    assert by_version[published.versions[V1]]["active"] is True
    assert by_version[published.versions[V2]]["active"] is False
    assert by_version[published.versions[V2]]["model_family"] == "knn"
    assert {"sha256", "input_schema", "classes", "metrics", "created_at"} <= set(
        by_version[published.versions[V1]]
    )
    assert client.get("/models?name=other").json == {"models": [], "count": 0}


def test_show_one_version_and_unknown_ones(client, published):
    """Check GET of a version, 404 naming an unknown one, 400 for a non-number."""
    v2 = published.versions[V2]
    body = client.get(f"/models/{MODEL}/versions/{v2}").json
    assert body["version"] == v2 and body["active"] is False
    missing = client.get(f"/models/{MODEL}/versions/99")
    assert missing.status_code == 404
    assert "version=99" in missing.json["error"]["message"]
    assert client.get(f"/models/{MODEL}/versions/latest").status_code == 400


def test_artifact_download_has_checksum(client, published):
    """Check that the artifact is the published bytes with their sha256 in a header."""
    v2 = published.versions[V2]
    response = client.get(f"/models/{MODEL}/versions/{v2}/artifact")
    assert response.status_code == 200
    assert response.data == published.candidates[V2].artifact
    assert response.headers["X-Checksum-Sha256"] == hashlib.sha256(response.data).hexdigest()
    assert f"{MODEL}-v{v2}.onnx" in response.headers["Content-Disposition"]


def test_activate_switches_predictions_then_rollback(client, published):
    """Check that predictions follow activate and rollback, and the answer names both versions."""
    v1, v2 = published.versions[V1], published.versions[V2]
    row = {"records": [record(r) for r in published.inputs]}
    before = client.post("/predict", json=row).json
    answer = client.post(
        "/models/activate", json={"name": MODEL, "version": v2, "reason": "try knn"}
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["active_version"] == v2 and answer.json["previous_version"] == v1
    after = client.post("/predict", json=row).json
    assert after["model"]["version"] == v2
    assert [p["probabilities"] for p in after["predictions"]] != [
        p["probabilities"] for p in before["predictions"]
    ]
    back = client.post("/models/rollback", json={"name": MODEL})
    assert back.status_code == 200 and back.json["active_version"] == v1
    again = client.post("/predict", json=row).json
    assert again.pop("request_id") != before.pop("request_id")  # each answer names its own
    assert again == before
    events = client.get(f"/models/{MODEL}/history").json["events"]
    assert [(e["action"], e["to_version"]) for e in events][-2:] == [
        ("activate", v2),
        ("rollback", v1),
    ]
    assert events[-2]["reason"] == "try knn"


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"version": 1}, 400, "'name'"),
        ({"name": MODEL}, 400, "'version'"),
        ({"name": MODEL, "version": "two"}, 400, "'version'"),
        ({"name": MODEL, "version": True}, 400, "'version'"),
        ({"name": MODEL, "version": 42}, 404, "version=42"),
        ({"name": "nope", "version": 1}, 404, "nope"),
    ],
)
def test_activate_refuses_bad_requests(client, published, body, status, fragment):
    """Check that activation errors name the field or the version at fault."""
    response = client.post("/models/activate", json=body)
    assert response.status_code == status
    assert fragment in response.json["error"]["message"]


def test_rollback_without_previous_is_409(client, published):
    """Check that a rollback with nothing to return to is a conflict."""
    published.store.state.delete_many({})
    response = client.post("/models/rollback", json={"name": MODEL})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "CONFLICT"


def test_admin_token_401_403_200(published, mongo_client):
    """Check that with API_ADMIN_TOKEN set, admin calls need the exact bearer token."""
    app = make_app(with_api(published.settings, admin_token="s3cret"), mongo_client)
    http = app.test_client()
    body = {"name": MODEL, "version": published.versions[V2]}
    missing = http.post("/models/activate", json=body)
    assert missing.status_code == 401 and missing.json["error"]["code"] == "UNAUTHORIZED"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = http.post(
        "/models/rollback", json={"name": MODEL}, headers={"Authorization": "Bearer guess"}
    )
    assert wrong.status_code == 403 and wrong.json["error"]["code"] == "FORBIDDEN"
    assert (
        http.post(
            "/models/activate", json=body, headers={"Authorization": "Basic s3cret"}
        ).status_code
        == 401
    )
    ok = http.post("/models/activate", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    # Reading stays open: only changing what is served needs the token.
    assert http.get("/models").status_code == 200


def test_admin_endpoints_want_json(client, published):
    """Check 415 for a form body on activate."""
    response = client.post("/models/activate", data={"name": MODEL, "version": 2})
    assert response.status_code == 415


def test_artifact_with_a_wrong_checksum_is_409(client, published):
    """Check that bytes not matching the recorded sha256 are refused, not sent."""
    v2 = published.versions[V2]
    published.store.versions.update_one(
        {"name": MODEL, "version": v2}, {"$set": {"sha256": "0" * 64}}
    )
    response = client.get(f"/models/{MODEL}/versions/{v2}/artifact")
    assert response.status_code == 409
    assert "checksum mismatch" in response.json["error"]["message"]
    refused = client.post("/models/activate", json={"name": MODEL, "version": v2})
    assert refused.status_code == 409
    assert (
        client.post("/predict", json=record(published.inputs[0])).json["model"]["version"]
        == published.versions[V1]
    )


def test_unloadable_active_version_keeps_the_loaded_one_serving(client, published, mongo_client):
    """Check that a broken active version (bad checksum) never fails a request that has a model."""
    v1, v2 = published.versions[V1], published.versions[V2]
    body = record(published.inputs[0])
    assert client.post("/predict", json=body).json["model"]["version"] == v1
    published.store.versions.update_one(
        {"name": MODEL, "version": v2}, {"$set": {"sha256": "0" * 64}}
    )
    published.store.state.update_one({"_id": MODEL}, {"$set": {"active_version": v2}})
    # A raw write gets no commit wait: wait out the lease as an activation does.
    time.sleep(published.store.pointer_lease_ms / 1000)
    for _ in range(3):
        served = client.post("/predict", json=body)
        assert served.status_code == 200 and served.json["model"]["version"] == v1
        assert served.headers["X-Model-Stale"] == "true"
    fresh = make_app(published.settings, mongo_client).test_client().post("/predict", json=body)
    assert fresh.status_code == 503
    assert fresh.json["error"]["code"] == "NO_ACTIVE_MODEL"
    assert f"v{v2} cannot be served" in fresh.json["error"]["message"]
    assert client.get("/ready").json["error"]["code"] == "NO_ACTIVE_MODEL"


@pytest.mark.parametrize("name", ["a\nb-v1.onnx", 'q"uote\r-v1.onnx', "модель-v1.onnx"])
def test_artifact_file_name_is_a_valid_header_whatever_the_model_name(name):
    """Check that a model name with a line break, quote or non-Latin letters gives a
    Content-Disposition werkzeug accepts (no 500), carrying the exact name encoded."""
    from urllib.parse import unquote

    from werkzeug.datastructures import Headers

    from api.models import attachment

    value = attachment(name)
    Headers().set("Content-Disposition", value)  # raises on a line break
    assert value.isascii() and "\n" not in value and "\r" not in value
    assert unquote(value.split("filename*=UTF-8''")[1]) == name
