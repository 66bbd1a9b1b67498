"""Workers report themselves: heartbeats in serving_workers, GET /fleet and `bridge fleet`."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import requests
from api_fixtures import FAMILIES, MODEL, record
from click.testing import CliRunner
from servers import ApiServer

from api import registry
from api.fleet import Heartbeat
from registry_bridge import fleet
from registry_bridge.cli import main
from registry_bridge.entities import utcnow

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
    Heartbeat(handle.store, handle.active, port=8123).beat()

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
    heartbeat = Heartbeat(handle.store, handle.active, port=None)
    published.store.state.update_one({"_id": MODEL}, {"$set": {"staged_version": v2}})
    time.sleep(published.store.pointer_lease_ms / 1000)  # the worker's lease runs out
    heartbeat.beat()
    (worker,) = client.get("/fleet").json["workers"]
    assert v2 in worker["loaded_versions"] and worker["load_errors"] == []

    published.store.versions.update_one(
        {"name": MODEL, "version": v1}, {"$set": {"sha256": "0" * 64}}
    )
    handle.active.cache = type(handle.active.cache)()  # forget v1, as a fresh worker would
    published.store.state.update_one({"_id": MODEL}, {"$set": {"staged_version": v1}})
    time.sleep(published.store.pointer_lease_ms / 1000)
    heartbeat.beat()
    (worker,) = client.get("/fleet").json["workers"]
    assert [e["version"] for e in worker["load_errors"]] == [v1]
    assert "checksum" in worker["load_errors"][0]["reason"]


def test_gunicorn_workers_report_and_leave(published, tmp_path):
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
