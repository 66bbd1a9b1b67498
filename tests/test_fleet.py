"""Workers report themselves: heartbeats in serving_workers, GET /fleet and `bridge fleet`."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import requests
from api_fixtures import FAMILIES, MODEL, record, with_api
from click.testing import CliRunner
from servers import ApiServer

from api import registry
from api.fleet import Heartbeat
from registry_bridge import fleet
from registry_bridge.cli import main
from registry_bridge.entities import utcnow
from registry_bridge.store import ModelStore

V1, V2 = FAMILIES
CONTRACT = {"host", "pid", "model", "loaded_versions", "serving_version", "last_seen"}


def bridge_fleet(settings, *args: str):
    env = {
        "MONGODB_URI": settings.registry.mongodb_uri,
        "REGISTRY_DB": settings.registry.database,
        "MODEL_NAME": MODEL,
    }
    return CliRunner().invoke(main, ["fleet", *args], env=env)


def test_a_heartbeat_reports_what_the_worker_serves(app, client, published):
    """Check that a worker's heartbeat shows in GET /fleet and `bridge fleet --json` with
    the version it serves, its loaded versions and its request count, converged."""
    v1 = published.versions[V1]
    assert client.post("/predict", json=record(published.inputs[0])).status_code == 200
    handle = registry_of(app)
    Heartbeat(handle.store, handle.models, port=8123).beat()

    view = client.get("/fleet").json
    assert view["name"] == MODEL and view["active_version"] == v1
    assert view["live_workers"] == 1 and view["converged"] is True
    (worker,) = view["workers"]
    assert worker["serving_version"] == v1 and worker["loaded_versions"] == [v1]
    assert worker["requests"] == 1 and worker["stale_answers"] == 0
    assert worker["port"] == 8123 and worker["gone"] is False

    result = bridge_fleet(published.settings, "--json")
    assert result.exit_code == 0, result.output
    (listed,) = json.loads(result.output)
    assert CONTRACT <= set(listed) and listed["converged"] is True
    table = bridge_fleet(published.settings, "--name", MODEL)
    assert table.exit_code == 0 and "live" in table.output and str(listed["pid"]) in table.output


def test_a_silent_worker_shows_as_gone_then_is_removed(published):
    """Check that a heartbeat older than three intervals is listed as gone once, then removed,
    without any TTL index."""
    db = published.store.db
    old = fleet.heartbeat_document("elsewhere", 4242, MODEL, 8000, utcnow(), [1], 1, 10, 0)
    old["last_seen"] = utcnow() - timedelta(seconds=fleet.INTERVAL_S * 3 + 1)
    fleet.report(db, old)
    fresh = fleet.heartbeat_document("here", 1, MODEL, 8000, utcnow(), [1], 1, 0, 0)
    fleet.report(db, fresh)
    first = fleet.list_workers(db, MODEL)
    assert sorted((w["pid"], w["gone"]) for w in first) == [(1, False), (4242, True)]
    assert [w["pid"] for w in fleet.list_workers(db, MODEL)] == [1]


def test_a_staged_version_is_loaded_in_the_background_and_reported(app, client, published):
    """Check that a worker seeing a staged version loads it at its next beat and reports it,
    and reports a version that cannot load with the reason."""
    v1, v2 = published.versions[V1], published.versions[V2]
    handle = registry_of(app)
    heartbeat = Heartbeat(handle.store, handle.models, port=None)
    published.store.stage_version(MODEL, v2, expected=v1)
    time.sleep(published.store.pointer_lease_ms / 1000)  # the worker's lease runs out
    heartbeat.beat()
    (worker,) = client.get("/fleet").json["workers"]
    assert v2 in worker["loaded_versions"] and worker["load_errors"] == []

    published.store.versions.update_one(
        {"name": MODEL, "version": v1}, {"$set": {"sha256": "0" * 64}}
    )
    handle.active.cache = type(handle.active.cache)()  # forget v1, as a fresh worker would
    published.store.stage_version(MODEL, v1, expected=v1)
    time.sleep(published.store.pointer_lease_ms / 1000)
    heartbeat.beat()
    (worker,) = client.get("/fleet").json["workers"]
    assert [e["version"] for e in worker["load_errors"]] == [v1]
    assert "checksum" in worker["load_errors"][0]["reason"]


def test_server_workers_report_and_leave(published, tmp_path):
    """Check that each worker of a real API instance reports itself within a few beats and
    removes its document when the server stops."""
    with ApiServer(published.settings, tmp_path, workers=2) as server:
        deadline = time.monotonic() + 30
        view: dict = {}
        while time.monotonic() < deadline:
            for _ in range(6):  # reach both workers, so both serve the active version
                requests.post(server.url("/predict"), json=record(published.inputs[0]), timeout=10)
            view = requests.get(server.url("/fleet"), timeout=10).json()
            if view["live_workers"] == 2 and view["converged"]:
                break
            time.sleep(0.5)
        assert view["live_workers"] == 2, view
        assert {w["port"] for w in view["workers"]} == {server.port}
    assert fleet.list_workers(published.store.db, MODEL) == []


def registry_of(app):
    with app.app_context():
        return registry()


def pretend_worker(db, pid: int, loaded: list[int], errors: dict[int, str] | None = None) -> None:
    """A live heartbeat of a worker that is not in this process."""
    fleet.report(
        db, fleet.heartbeat_document("peer", pid, MODEL, 8000, utcnow(), loaded, 1, 0, 0, errors)
    )


def test_activation_waits_for_live_workers_then_switches_on_timeout(published, mongo_client):
    """Check that an activation stages the version, and when a live worker never reports it
    loaded, switches after api.prepare_timeout_s saying which workers will load on demand."""
    v1, v2 = published.versions[V1], published.versions[V2]
    pretend_worker(published.store.db, 77, [v1])
    store = ModelStore(mongo_client, with_api(published.settings, prepare_timeout_s=0.3))
    state = store.set_active_version(MODEL, v2)
    assert state.active_version == v2 and state.staged_version is None
    assert state.prepared["timed_out"] is True
    assert state.prepared["not_loaded"] == ["peer:77"]
    assert state.prepared["prepare_s"] >= 0.3


def test_activation_switches_once_every_live_worker_loaded_it(published, mongo_client):
    """Check that the switch happens without waiting out the timeout once all live workers
    report the staged version loaded."""
    v2 = published.versions[V2]
    pretend_worker(published.store.db, 78, [v2])
    store = ModelStore(mongo_client, with_api(published.settings, prepare_timeout_s=30))
    state = store.set_active_version(MODEL, v2)
    assert state.prepared["timed_out"] is False and state.prepared["loaded"] == 1


def test_a_version_one_worker_cannot_load_is_refused_before_the_switch(client, published):
    """Check that a worker's load failure refuses the activation with that worker's reason,
    leaving the pointer and no stage mark behind."""
    v1, v2 = published.versions[V1], published.versions[V2]
    pretend_worker(published.store.db, 79, [v1], {v2: "onnxruntime: out of memory"})
    refused = client.post("/models/activate", json={"name": MODEL, "version": v2})
    assert refused.status_code == 409
    message = refused.json["error"]["message"]
    assert "peer:79" in message and "out of memory" in message
    state = published.store.get_active_version(MODEL)
    assert state.active_version == v1 and state.staged_version is None


def test_bridge_activate_prepares_the_workers_of_a_running_api(published, tmp_path):
    """Check the whole protocol: `bridge activate` stages the version, both workers of a real
    API load it in the background and report it, then the pointer flips and they serve it."""
    v2 = published.versions[V2]
    with ApiServer(published.settings, tmp_path, workers=2) as server:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            view = requests.get(server.url("/fleet"), timeout=10).json()
            if view["live_workers"] == 2:
                break
            time.sleep(0.3)
        env = {
            "MONGODB_URI": published.settings.registry.mongodb_uri,
            "REGISTRY_DB": published.settings.registry.database,
        }
        result = CliRunner().invoke(main, ["activate", MODEL, str(v2)], env=env)
        assert result.exit_code == 0, result.output
        assert "2 of 2 live API workers had loaded" in result.output, result.output
        view = requests.get(server.url("/fleet"), timeout=10).json()
        assert all(v2 in w["loaded_versions"] for w in view["workers"]), view
        for _ in range(6):
            answer = requests.post(server.url("/predict"), json=record(published.inputs[0]))
            assert answer.json()["model"]["version"] == v2
