"""Point 4: altered GridFS bytes are never served, and a pickle stored as a version never runs."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from api_fixtures import FAMILIES, MODEL, record
from registry_samples import tamper_first_chunk
from servers import ApiServer

from registry_bridge.errors import RegistryError

AREA = "4 hostile artifacts"

pytestmark = pytest.mark.slow


class SideEffect:
    """Unpickling this runs ``exec`` of a line that creates ``marker``: what a malicious
    model file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pickle executed')",)


def _predict(server: ApiServer, published) -> requests.Response:
    return requests.post(server.url("/predict"), json=record(published.inputs[0]), timeout=30)


def test_altered_bytes_are_refused_and_fail_closed(
    published, registry_db, mongo_server, tmp_path, figure
):
    """Check that activation refuses a version whose GridFS bytes changed (409 naming the
    checksum mismatch), and an API starting with such a version active answers 503 naming it."""
    store = published.store
    v1, v2 = published.versions[FAMILIES[0]], published.versions[FAMILIES[1]]
    with ApiServer(published.settings, tmp_path) as server:
        tamper_first_chunk(
            registry_db, store.get_model_version(MODEL, v2).artifact_file_id, mongo_server
        )
        refused = requests.post(
            server.url("/models/activate"), timeout=30, json={"name": MODEL, "version": v2}
        )
        assert refused.status_code == 409, refused.text
        assert "checksum mismatch" in refused.json()["error"]["message"]
        assert f"v{v2}" in refused.json()["error"]["message"]
        assert store.get_active_version(MODEL).active_version == v1
        still = _predict(server, published)
        assert still.status_code == 200 and still.json()["model"]["version"] == v1
        with pytest.raises(RegistryError, match="checksum mismatch"):
            store.set_active_version(MODEL, v2, by="tests")

        # A good version, activated and served, whose bytes are altered afterwards.
        knn = published.candidates[FAMILIES[1]]
        v3 = store.publish_model_version(knn.draft, knn.artifact).version.version
        assert (
            requests.post(
                server.url("/models/activate"), timeout=30, json={"name": MODEL, "version": v3}
            ).status_code
            == 200
        )
        assert _predict(server, published).json()["model"]["version"] == v3
        tamper_first_chunk(
            registry_db, store.get_model_version(MODEL, v3).artifact_file_id, mongo_server
        )
        assert "Traceback" not in server.log()

    # A new API process (a restart, a new worker) must load v3 again: it fails closed.
    with ApiServer(published.settings, tmp_path).start(wait_for="/health") as fresh:
        answer = _predict(fresh, published)
        ready = requests.get(fresh.url("/ready"), timeout=10)
        log = fresh.log()
    figure("tampered version: activation answer", refused.status_code, "409")
    figure("tampered active version: /predict answer", answer.status_code, "503")
    assert answer.status_code == 503, answer.text
    message = answer.json()["error"]["message"]
    assert "checksum mismatch" in message and f"v{v3}" in message
    assert ready.status_code == 503 and "checksum mismatch" in ready.json()["error"]["message"]
    assert "Traceback" not in log


def test_a_pickle_stored_as_a_version_is_never_executed(published, tmp_path, figure):
    """Check that a pickle placed in GridFS under a version, with a matching sha256, is refused
    by activation, verify and serving, and its payload never runs (the marker never appears)."""
    marker = tmp_path / "marker-pickle-ran"
    payload = pickle.dumps(SideEffect(marker))
    # The payload is live: unpickling it elsewhere does create its marker.
    control = tmp_path / "control-marker"
    subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=pickle.dumps(SideEffect(control)),
        check=True,
        timeout=60,
    )
    assert control.exists()

    store = published.store
    v1 = published.versions[FAMILIES[0]]
    knn = published.candidates[FAMILIES[1]]
    # Through the store, so the version's sha256 and size match the pickle's bytes.
    evil = store.publish_model_version(replace(knn.draft, source="attacker"), payload).version
    assert store.read_artifact(evil) == payload
    attempts = {}
    # One worker: the 'keeps v1, stale' answer below needs the worker that served v1; with two,
    # the second request may reach a worker that never loaded anything (it fails closed, 503).
    with ApiServer(published.settings, tmp_path, workers=1) as server:
        refused = requests.post(
            server.url("/models/activate"),
            timeout=30,
            json={"name": MODEL, "version": evil.version},
        )
        attempts["API activate"] = refused.status_code
        assert refused.status_code == 409, refused.text
        assert f"version {evil.version}" in refused.json()["error"]["message"]
        assert "protobuf" in refused.json()["error"]["message"].lower()
        for what, call in (
            ("store activate", lambda: store.set_active_version(MODEL, evil.version, by="tests")),
            ("store verify", lambda: store.verify_model_version(MODEL, evil.version)),
        ):
            with pytest.raises(RegistryError, match="does not load in onnxruntime") as caught:
                call()
            attempts[what] = caught.value.status
        assert store.get_active_version(MODEL).active_version == v1
        served = requests.post(server.url("/predict"), json=record(published.inputs[0]), timeout=30)
        assert served.json()["model"]["version"] == v1

        # Someone with write access to the database points the registry at it directly.
        store.state.update_one({"_id": MODEL}, {"$set": {"active_version": evil.version}})
        # A raw write gets no commit wait: wait out the lease as an activation does.
        time.sleep(store.pointer_lease_ms / 1000)
        answer = requests.post(server.url("/predict"), json=record(published.inputs[0]), timeout=30)
        ready = requests.get(server.url("/ready"), timeout=10)
        log = server.log()
    with ApiServer(published.settings, tmp_path).start(wait_for="/health") as fresh:
        cold = requests.post(fresh.url("/predict"), json=record(published.inputs[0]), timeout=30)
        log += fresh.log()
    attempts["API serving (worker with v1 loaded: keeps v1, stale)"] = answer.status_code
    attempts["API serving (fresh start)"] = cold.status_code
    figure(
        "pickle version: answers (activate, verify, serve)",
        ", ".join(f"{k} {v}" for k, v in attempts.items()),
        "409 / 503",
    )
    figure("pickle payload executed", marker.exists(), "False")
    assert not marker.exists(), "the pickle payload ran"
    # A worker that was serving v1 keeps it (stale) rather than run something it cannot load.
    assert answer.status_code == 200 and answer.json()["model"]["version"] == v1
    assert answer.headers.get("X-Model-Stale") == "true"
    assert ready.status_code == 503
    assert cold.status_code == 503, cold.text
    assert f"version {evil.version}" in cold.json()["error"]["message"]
    assert "Traceback" not in log
