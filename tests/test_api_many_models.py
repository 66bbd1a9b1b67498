"""Check that one API serves every registered name, pinned versions, and each name's switch.

Names: the fixture's 3-class ``vertebral-column`` (v1 logistic regression active, v2
kNN), a second 3-class name (``many_models.OTHER``) and a 2-class one with a threshold
(``many_models.BINARY``), all in the test's own database.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from api_fixtures import FAMILIES, MODEL, make_app, record, with_api
from many_models import BINARY, OTHER, POSITIVE, THRESHOLD, publish_binary, publish_other
from test_fleet import bridge_fleet

from api import registry
from api.fleet import Heartbeat
from conf.contract import FEATURES
from registry_bridge import fleet


@pytest.fixture
def names(published):
    """The three names published; v1 of vertebral-column active."""
    other = publish_other(published)
    binary = publish_binary(published.store, published.settings)
    return other, binary


@pytest.fixture
def many(names, published, mongo_client):
    return make_app(published.settings, mongo_client).test_client()


def _predict(client, path, rows):
    return client.post(path, json={"records": [record(r) for r in rows]})


def test_each_name_is_served_by_its_own_active_version(many, names, published):
    """Check that /models/<name>/predict answers with that name's active version, and that
    /predict still answers with MODEL_NAME's."""
    other, binary = names
    rows = published.inputs[:5]
    for name, version in ((MODEL, published.versions[FAMILIES[0]]), (OTHER, other)):
        answer = _predict(many, f"/models/{name}/predict", rows)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["model"]["name"] == name
        assert answer.get_json()["model"]["version"] == version
        assert answer.headers["X-Model-Name"] == name
        assert answer.headers["X-Model-Version"] == str(version)
    default = _predict(many, "/predict", rows).get_json()
    named = _predict(many, f"/models/{MODEL}/predict", rows).get_json()
    assert {**default, "request_id": ""} == {**named, "request_id": ""}  # ids differ
    # Different models: the kNN of OTHER does not agree with v1 everywhere on the test rows.
    labels = {
        name: [
            p["label"]
            for p in _predict(many, f"/models/{name}/predict", published.inputs).get_json()[
                "predictions"
            ]
        ]
        for name in (MODEL, OTHER)
    }
    assert labels[MODEL] != labels[OTHER]


def test_the_binary_name_answers_by_its_threshold(many, names):
    """Check that the 2-class name labels by its threshold and reports P(positive)."""
    _, binary = names
    answer = _predict(many, f"/models/{BINARY}/predict", binary.inputs)
    assert answer.status_code == 200, answer.get_json()
    column = binary.classes.index(POSITIVE)
    for prediction, expected in zip(
        answer.get_json()["predictions"], binary.probabilities, strict=True
    ):
        p_positive = prediction["probabilities"][POSITIVE]
        assert prediction["probability"] == pytest.approx(p_positive)
        assert p_positive == pytest.approx(expected[column], abs=1e-5)
        assert (prediction["label"] == POSITIVE) == (p_positive >= THRESHOLD)


def test_a_name_not_served_is_a_404_naming_it(many, published, mongo_client, names):
    """Check that an unknown name, and a registered name left out of api.models, are 404s
    naming the name; /predict keeps serving MODEL_NAME meanwhile."""
    answer = _predict(many, "/models/no-such-model/predict", published.inputs[:1])
    assert answer.status_code == 404
    assert "'no-such-model' is not served" in answer.get_json()["error"]["message"]

    only = with_api(published.settings, models=(MODEL,))
    client = make_app(only, mongo_client).test_client()
    answer = _predict(client, f"/models/{OTHER}/predict", published.inputs[:1])
    assert answer.status_code == 404, answer.get_json()
    assert (
        f"{OTHER!r} is not served by this API (served: {MODEL})"
        in (answer.get_json()["error"]["message"])
    )
    assert _predict(client, f"/models/{MODEL}/predict", published.inputs[:1]).status_code == 200
    assert _predict(client, "/predict", published.inputs[:1]).status_code == 200


def test_a_pinned_version_is_served_whether_active_or_not(many, published):
    """Check that /models/<name>/versions/<v>/predict answers with v (model.version and
    X-Model-Version), as /predict does once v is active."""
    v1, v2 = published.versions[FAMILIES[0]], published.versions[FAMILIES[1]]
    rows = published.inputs
    pinned = _predict(many, f"/models/{MODEL}/versions/{v2}/predict", rows)
    assert pinned.status_code == 200, pinned.get_json()
    assert pinned.get_json()["model"]["version"] == v2
    assert pinned.headers["X-Model-Version"] == str(v2)
    assert _predict(many, "/predict", rows).get_json()["model"]["version"] == v1  # unchanged
    published.store.set_active_version(MODEL, v2, by="tests")
    active = _predict(many, "/predict", rows).get_json()
    assert active["predictions"] == pinned.get_json()["predictions"]
    old = _predict(many, f"/models/{MODEL}/versions/{v1}/predict", rows).get_json()
    assert old["model"]["version"] == v1 and old["predictions"] != active["predictions"]


def test_a_missing_or_deleted_version_is_a_404(many, published):
    """Check that a version never published, and one deleted after it was served pinned,
    are 404s naming the version; a version that is no number is a 400 naming it."""
    v2 = published.versions[FAMILIES[1]]
    answer = _predict(many, f"/models/{MODEL}/versions/99/predict", published.inputs[:1])
    assert answer.status_code == 404
    assert "version=99 not found" in answer.get_json()["error"]["message"]
    path = f"/models/{MODEL}/versions/{v2}/predict"
    assert _predict(many, path, published.inputs[:1]).status_code == 200  # loaded now
    published.store.delete_model_version(MODEL, v2, by="tests")
    answer = _predict(many, path, published.inputs[:1])
    assert answer.status_code == 404, answer.get_json()
    assert "was deleted" in answer.get_json()["error"]["message"]
    answer = _predict(many, f"/models/{MODEL}/versions/two/predict", published.inputs[:1])
    assert answer.status_code == 400 and "two" in answer.get_json()["error"]["message"]


def test_each_name_switches_at_the_next_request_after_its_acknowledgement(many, names, published):
    """Check that activating another version of one name is served by the very next
    request of that name, and leaves the other names as they were."""
    other, _ = names
    rows = published.inputs[:3]
    assert _predict(many, f"/models/{OTHER}/predict", rows).get_json()["model"]["version"] == 1
    candidate = published.candidates[FAMILIES[0]]
    from dataclasses import replace

    second = published.store.publish_model_version(
        replace(candidate.draft, name=OTHER), candidate.artifact
    ).version.version
    published.store.set_active_version(OTHER, second, by="tests")  # acknowledged after the lease
    answer = _predict(many, f"/models/{OTHER}/predict", rows)
    assert answer.get_json()["model"]["version"] == second
    assert (
        _predict(many, f"/models/{MODEL}/predict", rows).get_json()["model"]["version"]
        == (published.versions[FAMILIES[0]])
    )


def test_batch_predict_per_name(many, names, published):
    """Check that /models/<name>/batch-predict scores with that name's active version."""
    other, _ = names
    header = ",".join(FEATURES)
    lines = [",".join(str(float(v)) for v in row) for row in published.inputs[:4]]
    body = "\n".join([header, *lines]) + "\n"
    answer = many.post(
        f"/models/{OTHER}/batch-predict?format=json", data=body, content_type="text/csv"
    )
    assert answer.status_code == 200, answer.get_json()
    assert answer.headers["X-Model-Name"] == OTHER
    csv_answer = many.post(
        f"/models/{OTHER}/batch-predict",
        data={"file": (io.BytesIO(body.encode()), "in.csv")},
        content_type="multipart/form-data",
    )
    assert csv_answer.status_code == 200
    rows = list(csv.DictReader(io.StringIO(csv_answer.get_data(as_text=True))))
    assert len(rows) == 4 and {row["model_version"] for row in rows} == {str(other)}
    missing = many.post("/models/nope/batch-predict", data=body, content_type="text/csv")
    assert missing.status_code == 404


def test_sessions_stay_within_max_loaded_versions(names, published, mongo_client):
    """Check that a worker keeps at most api.max_loaded_versions sessions over all names,
    dropping the least recently used, and still answers every name."""
    settings = with_api(published.settings, max_loaded_versions=2)
    app = make_app(settings, mongo_client)
    client = app.test_client()
    rows = published.inputs[:1]
    v2 = published.versions[FAMILIES[1]]
    for path in (
        f"/models/{MODEL}/predict",
        f"/models/{OTHER}/predict",
        f"/models/{BINARY}/predict",
        f"/models/{MODEL}/versions/{v2}/predict",
        f"/models/{OTHER}/predict",
    ):
        assert _predict(client, path, rows).status_code == 200, path
    cache = registry_of(app).models.cache
    loaded = {(n, v) for n in (MODEL, OTHER, BINARY) for v in cache.versions(n)}
    assert loaded == {(MODEL, v2), (OTHER, 1)}


def test_models_console_fleet_and_metrics_show_every_name(many, names, published):
    """Check that /models, the console's selector, the heartbeat documents and the
    metrics name every served name."""
    listed = {v["name"] for v in many.get("/models").get_json()["models"]}
    assert listed == {MODEL, OTHER, BINARY}
    page = many.get(f"/?name={OTHER}").get_data(as_text=True)
    for name in (MODEL, OTHER, BINARY):
        assert f'<option value="{name}"' in page
    assert f'<option value="{OTHER}" selected>' in page
    assert f'data-model="{OTHER}"' in page

    for name in (MODEL, OTHER, BINARY):
        assert _predict(many, f"/models/{name}/predict", published.inputs[:1]).status_code == 200
    metrics = many.get("/metrics").get_data(as_text=True)
    for name in (MODEL, OTHER, BINARY):
        assert f'api_predictions_total{{model="{name}"' in metrics

    handle = registry_of(many.application)
    Heartbeat(handle.store, handle.models, port=8123).beat()
    reported = {w["model"]: w for w in fleet.list_workers(published.store.db)}
    assert set(reported) == {MODEL, OTHER, BINARY}
    assert reported[BINARY]["serving_version"] == 1
    assert json.loads(many.get(f"/fleet?name={OTHER}").get_data())["converged"] is True
    listed = bridge_fleet(published.settings, "--json")
    assert listed.exit_code == 0, listed.output
    assert {w["model"] for w in json.loads(listed.output)} == {MODEL, OTHER, BINARY}
    table = bridge_fleet(published.settings)
    assert all(name in table.output for name in (MODEL, OTHER, BINARY))


def test_a_worker_reports_every_served_name_before_any_request(names, published, mongo_client):
    """Check that the heartbeat reports names no request asked for yet (api.models unset:
    every registered name)."""
    app = make_app(published.settings, mongo_client)
    handle = registry_of(app)
    Heartbeat(handle.store, handle.models, port=None).beat()
    reported = {w["model"] for w in fleet.list_workers(published.store.db)}
    assert reported == {MODEL, OTHER, BINARY}


def registry_of(app):
    with app.app_context():
        return registry()


def test_a_pinned_version_is_verified_when_it_loads(many, published):
    """Check that a pinned version whose bytes do not match its sha256 is refused (409
    naming the checksum), not served."""
    v2 = published.versions[FAMILIES[1]]
    published.store.versions.update_one(
        {"name": MODEL, "version": v2}, {"$set": {"sha256": "0" * 64}}
    )
    answer = _predict(many, f"/models/{MODEL}/versions/{v2}/predict", published.inputs[:1])
    assert answer.status_code == 409, answer.get_json()
    assert "checksum" in answer.get_json()["error"]["message"]
