"""Shadow traffic (issue "Safe promotion", point 3): a version scores a copy of the answered
requests off the request path; `bridge compare` reports agreement, the disagreement
matrix, latencies, drift and, with the labels of POST /feedback, both versions' accuracy.

Against the embedded server, through the real store and the API in process, with the two
published versions of api_fixtures (v1 logistic regression, active; v2 kNN).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from api_fixtures import FAMILIES, MODEL, make_app, record, with_api
from servers import wait_until

from registry_bridge.errors import RegistryError
from registry_bridge.monitoring import shadow_log
from registry_bridge.monitoring.shadow_log import compare_report
from registry_bridge.scoring import decide

ADMIN = "shadow-admin-token-1234"


def labels_of(published, version: int, rows: np.ndarray) -> list[str]:
    """What ``version`` answers for ``rows``, straight from its ONNX graph."""
    from registry_bridge.scoring import model_from_version

    found = published.store.get_model_version(MODEL, version)
    model = model_from_version(found, published.store.read_artifact(found))
    return [str(x) for x in decide(model, model.predict(rows.astype(np.float32))).labels]


def shadowed_app(published, mongo_client, **shadow):
    settings = with_api(published.settings, admin_token=ADMIN, pointer_lease_ms=0)
    settings = replace(
        settings,
        capture=replace(settings.capture, sample_percent=100.0),
        shadow=replace(settings.shadow, **shadow),
    )
    return make_app(settings, mongo_client)


def test_start_stop_and_refusals(published):
    """Check the shadow is held by the pointer and logged, 100 % is allowed, deleting its
    version is refused, and it can run beside a canary."""
    store = published.store
    v1, v2 = (published.versions[f] for f in FAMILIES)
    with pytest.raises(RegistryError, match="percent must be above 0 and at most 100"):
        store.start_shadow(MODEL, v2, 0)
    with pytest.raises(RegistryError, match="is the active version already"):
        store.start_shadow(MODEL, v1, 50)
    state = store.start_shadow(MODEL, v2, 100, by="tests", reason="compare kNN")
    assert state.shadow["version"] == v2 and state.shadow["percent"] == 100.0
    with pytest.raises(RegistryError, match="scores the shadow traffic"):
        store.delete_model_version(MODEL, v2, by="tests")
    store.start_canary(MODEL, v2, 10)
    both = store.get_active_version(MODEL)
    assert both.canary["version"] == v2 and both.shadow["version"] == v2
    store.end_shadow(MODEL, by="tests")
    assert store.get_active_version(MODEL).shadow is None
    assert [e.action for e in store.list_activation_log(MODEL)][-3:] == [
        "shadow-start",
        "canary-start",
        "shadow-stop",
    ]
    with pytest.raises(RegistryError, match="no shadow of"):
        store.end_shadow(MODEL)


def test_the_comparison_counts_agreement_matrix_and_live_accuracy(published, mongo_client):
    """Check, with every request shadowed: each answer is still the active version's; the
    comparison's agreement and matrix are those of the two graphs on the same rows; the
    latencies are reported; labels sent to POST /feedback give both versions' accuracy."""
    v1, v2 = (published.versions[f] for f in FAMILIES)
    published.store.start_shadow(MODEL, v2, 100)
    app = shadowed_app(published, mongo_client)
    client = app.test_client()
    rows = published.inputs[:40]
    ids = []
    for row in rows:
        answer = client.post("/predict", json={"records": [record(row)]})
        assert answer.status_code == 200 and answer.get_json()["model"]["version"] == v1
        ids.append(answer.headers["X-Request-Id"])
    db = published.store.db
    wait_until(
        lambda: sum(d["count"] for d in db[shadow_log.COLLECTION].find({"name": MODEL})) == 40,
        10,
        "the shadow did not score the 40 copies",
    )
    active, shadow = labels_of(published, v1, rows), labels_of(published, v2, rows)
    report = compare_report(published.store, published.settings, MODEL, "1h")
    assert report["compared"] == 40 and report["running"]["version"] == v2
    (pair,) = report["pairs"]
    assert (pair["active_version"], pair["shadow_version"]) == (v1, v2)
    pairs = list(zip(active, shadow, strict=True))
    assert pair["agreement"] == pytest.approx(np.mean([a == s for a, s in pairs]))
    classes = pair["matrix"]["classes"]
    for i, a in enumerate(classes):
        for j, s in enumerate(classes):
            expected = pairs.count((a, s))
            assert pair["matrix"]["counts"][i][j] == expected
    assert pair["latency"]["active"]["p99_ms"] > 0 and pair["latency"]["shadow"]["p50_ms"] > 0
    assert pair["live_accuracy"] == {"labelled": 0, "active": None, "shadow": None}
    # The clinic's diagnoses arrive: every patient "Normal".
    wait_until(
        lambda: db["inference_log"].count_documents({"name": MODEL}) > 0, 10, "nothing captured"
    )
    labels = {"labels": [{"request_id": rid, "label": "Normal"} for rid in ids]}
    sent = client.post("/feedback", json=labels, headers={"Authorization": f"Bearer {ADMIN}"})
    assert sent.status_code == 200, sent.get_json()
    report = compare_report(published.store, published.settings, MODEL, "1h")
    accuracy = report["pairs"][0]["live_accuracy"]
    assert accuracy["labelled"] == 40
    assert accuracy["active"] == pytest.approx(active.count("Normal") / 40)
    assert accuracy["shadow"] == pytest.approx(shadow.count("Normal") / 40)


def test_a_full_queue_drops_copies_never_requests(published, mongo_client):
    """Check that with room for 3 queued records, a burst of requests is answered in full
    while copies beyond the room are dropped and counted."""
    published.store.start_shadow(MODEL, published.versions[FAMILIES[1]], 100)
    app = shadowed_app(published, mongo_client, queue_records=3)
    client = app.test_client()
    batch = {"records": [record(row) for row in published.inputs[:2]]}  # 2 records each
    answers = [client.post("/predict", json=batch) for _ in range(30)]
    assert all(a.status_code == 200 for a in answers)
    from api import registry

    with app.app_context():
        queue = registry().models.find(MODEL).shadow_queue()
    assert queue.dropped > 0
    wait_until(lambda: not queue.queued, 10, "the shadow queue did not drain")
    scored = sum(
        d["count"] for d in published.store.db[shadow_log.COLLECTION].find({"name": MODEL})
    )
    assert scored == 2 * (30 - queue.dropped)


def test_the_cli_starts_stops_and_compares(published, bridge):
    """Check `bridge shadow` and `bridge compare` (nothing compared yet)."""
    v2 = str(published.versions[FAMILIES[1]])
    assert "no shadow traffic" in bridge("shadow", MODEL).output
    alone = bridge("shadow", MODEL, v2)
    assert alone.exit_code == 2 and "both VERSION and --percent" in alone.output
    started = bridge("shadow", v2, "--percent", "100")
    assert started.exit_code == 0, started.output
    assert f"v{v2} scores a copy of 100% of the requests answered by v1" in started.output
    compared = bridge("compare", MODEL, "--since", "1h")
    assert compared.exit_code == 0 and "0 record(s) compared" in compared.output
    assert f"shadow v{v2} at 100% now" in compared.output
    as_json = bridge("compare", MODEL, "--json")
    assert '"compared": 0' in as_json.output and '"agreement": null' in as_json.output
    stopped = bridge("shadow", MODEL, "--off")
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    assert "shadow-stop" in bridge("history", MODEL).output


def test_the_console_shows_the_shadow_comparison_and_the_canary(published, mongo_client):
    """Check the console's "Canary and shadow" section: the canary's share, and the shadow's
    agreement and matrix once copies were scored."""
    v2 = published.versions[FAMILIES[1]]
    published.store.start_shadow(MODEL, v2, 100)
    published.store.start_canary(MODEL, v2, 5)
    app = shadowed_app(published, mongo_client)
    client = app.test_client()
    for row in published.inputs[:5]:
        assert client.post("/predict", json={"records": [record(row)]}).status_code == 200
    db = published.store.db
    wait_until(lambda: db[shadow_log.COLLECTION].count_documents({}) > 0, 10, "no shadow batch")
    page = client.get(f"/?name={MODEL}").get_data(as_text=True)
    assert f"Canary: v{v2} answers 5 % of requests" in page
    assert f"Shadow v{v2} against v1" in page and "agreement" in page
