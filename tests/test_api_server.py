"""The API as deployed: real gunicorn workers following activations, and a registry outage."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from api_fixtures import FAMILIES, MODEL, make_app, publish_candidates, published, record  # noqa: F401
from conf.settings import EmbeddedSettings, load_settings
from conftest import ROOT, data_path, free_port
from registry_bridge import database
from registry_bridge.store import ModelStore

pytestmark = pytest.mark.slow


def _wait_ready(base: str, process: subprocess.Popen, log_file: Path,
                timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the API exited with {process.returncode}: "
                                 f"{log_file.read_text()[-2000:]}")
        try:
            if requests.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("the API did not become ready")


def _predict(base: str, body: dict) -> requests.Response:
    # A new connection per request, so gunicorn hands requests to both workers.
    return requests.post(f"{base}/predict", json=body, timeout=10,
                         headers={"Connection": "close"})


def test_every_worker_serves_the_new_version_after_activate(published, tmp_path):
    """Check that after POST /models/activate returns, every request on both workers uses it."""
    settings = published.settings
    port = free_port()
    env = {**os.environ, "MONGODB_URI": settings.registry.mongodb_uri,
           "REGISTRY_DB": settings.registry.database, "API_PORT": str(port),
           "API_WORKERS": "2", "OUTPUT_DIR": str(tmp_path / "out"),
           "VERTEBRAL_DATA": str(data_path())}
    env.pop("API_ADMIN_TOKEN", None)
    log_file = tmp_path / "api.log"
    with open(log_file, "wb") as sink:  # a file, not a pipe: a full pipe would block the workers
        process = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env,
                                   stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    v1, v2 = published.versions[FAMILIES[0]], published.versions[FAMILIES[1]]
    body = {"records": [record(r) for r in published.inputs[:5]]}
    try:
        _wait_ready(base, process, log_file)
        seen: dict[str, set[int]] = {}
        for _ in range(400):
            answer = _predict(base, body)
            assert answer.status_code == 200
            seen.setdefault(answer.headers["X-Worker-Pid"], set()).add(
                answer.json()["model"]["version"])
            if len(seen) == 2 and _ > 20:
                break
        assert len(seen) == 2, f"requests reached only workers {sorted(seen)}"
        assert all(versions == {v1} for versions in seen.values())

        # Background load across the switch: nothing may fail, nothing may go back to v1
        # once the activation has returned.
        results: list[tuple[float, float, int, int]] = []  # started, finished, status, version
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    answer = _predict(base, body)
                    status = answer.status_code
                    version = answer.json()["model"]["version"] if answer.ok else -1
                except requests.RequestException:  # counted as a failure, never lost
                    status, version = -1, -1
                results.append((started, time.monotonic(), status, version))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        asked = time.monotonic()
        activated = requests.post(f"{base}/models/activate", timeout=30,
                                  json={"name": MODEL, "version": v2, "reason": "switch test"})
        returned = time.monotonic()
        assert activated.status_code == 200, activated.text
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
        assert results and all(status == 200 for _, _, status, _ in results)
        assert {version for _, finished, _, version in results if finished < asked} == {v1}
        later = [version for started, _, _, version in results if started > returned]
        assert later and set(later) == {v2}

        after: dict[str, list[int]] = {}
        for _ in range(400):
            answer = _predict(base, body)
            assert answer.status_code == 200
            assert answer.headers["X-Model-Version"] == str(v2)
            after.setdefault(answer.headers["X-Worker-Pid"], []).append(
                answer.json()["model"]["version"])
            if len(after) == 2 and min(map(len, after.values())) >= 10:
                break
        assert set(after) == set(seen), "both workers answered after the switch"
        assert all(set(versions) == {v2} for versions in after.values())
        metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert f'api_predictions_total{{model="{MODEL}",version="{v2}"}}' in metrics
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_registry_outage_serves_stale_and_ready_recovers(tmp_path):
    """Check that with the database stopped predictions continue marked stale, /ready is 503
    until it is back, and an API with nothing loaded answers 503 REGISTRY_UNAVAILABLE."""
    embedded = EmbeddedSettings(port=free_port(), data_dir=tmp_path / "db")
    database.start_embedded(embedded)
    try:
        uri = database.embedded_uri(embedded)
        settings = load_settings(env={"MONGODB_URI": uri, "REGISTRY_DB": "outage",
                                      "VERTEBRAL_DATA": str(data_path()),
                                      "OUTPUT_DIR": str(tmp_path / "out")})
        settings = replace(settings, registry=replace(settings.registry, timeout_ms=500))
        store = ModelStore(database.connect(settings.registry), settings)
        published = publish_candidates(store, settings)
        v1 = published.versions[FAMILIES[0]]
        http = make_app(settings).test_client()
        body = {"records": [record(r) for r in published.inputs[:3]]}
        fresh = http.post("/predict", json=body)
        assert fresh.status_code == 200 and "X-Model-Stale" not in fresh.headers

        database.stop_embedded(embedded)
        for _ in range(20):
            started = time.perf_counter()
            stale = http.post("/predict", json=body)
            assert time.perf_counter() - started < 1.0
            assert stale.status_code == 200
            assert stale.headers["X-Model-Stale"] == "true"
            assert stale.json["model"]["version"] == v1
            assert stale.json["predictions"] == fresh.json["predictions"]
        not_ready = http.get("/ready")
        assert not_ready.status_code == 503
        assert not_ready.json["error"]["code"] == "REGISTRY_UNAVAILABLE"
        assert http.get("/models").status_code == 503
        empty = make_app(settings).test_client().post("/predict", json=body)
        assert empty.status_code == 503
        assert empty.json["error"]["code"] == "REGISTRY_UNAVAILABLE"

        database.start_embedded(embedded)
        deadline = time.monotonic() + 20
        while http.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "/ready did not recover"
            time.sleep(0.2)
        back = http.post("/predict", json=body)
        assert back.status_code == 200 and "X-Model-Stale" not in back.headers
    finally:
        database.stop_embedded(embedded)
