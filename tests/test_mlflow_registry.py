"""MLflow sees the registry: the gridfs:// artifact repository, the pyfunc loader and the mirror.

Everything runs on the suite's MongoDB server and a real SQLite MLflow store. The module
shares one registry database and one MLflow store (creating an MLflow store costs ~10 s):
v1 (logistic regression) and v2 (kNN) are published through the store, whose mirror
registers them in MLflow, and v1 is active. Tests that move the alias put v1 back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import yaml
from api_fixtures import FAMILIES, MODEL, make_app, publish_candidates
from click.testing import CliRunner
from conftest import ROOT, free_port, throwaway_settings
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from registry_samples import tamper_first_chunk
from test_readme_walkthrough import CHROMIUM_FLAGS

from bench.common import venv_env
from conf.contract import FEATURES
from registry_bridge.cli import main as bridge_main
from registry_bridge.mirror import Mirror, version_uri
from registry_bridge.mlflow_plugin import GridFSArtifactRepository, parse_uri
from registry_bridge.store import ModelStore

ALIAS = "production"


class Registry:
    """The module's registry database, MLflow store, and how to reach them."""

    def __init__(self, settings, store, published, env):
        self.settings = settings
        self.store = store
        self.published = published
        self.env = env  # what a fresh process needs: MONGODB_URI, REGISTRY_DB, MLFLOW_...
        self.client = MlflowClient(settings.mlflow.tracking_uri, settings.mlflow.tracking_uri)
        self.database = settings.registry.database

    def alias_version(self, name: str = MODEL) -> int:
        """The registry version the MLflow alias names (read back through its tags)."""
        found = self.client.get_model_version_by_alias(name, ALIAS)
        return int(found.tags["registry_version"])

    def bridge(self, *args: str):
        return CliRunner().invoke(bridge_main, list(args), env=self.env)


@pytest.fixture(scope="module")
def registry(mongo_server, mongo_client, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-registry")
    name = f"test_{uuid.uuid4().hex[:12]}"
    settings = throwaway_settings(mongo_server.uri, name, tmp)
    env = {
        "MONGODB_URI": mongo_server.uri,
        "REGISTRY_DB": name,
        "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        "MODEL_NAME": MODEL,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the plugin connects like any process: from the environment
    # models:/ URIs resolve through MLflow's global tracking URI (other tests move it).
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    Mirror(settings.mlflow).client.search_registered_models()  # creates the MLflow store
    store = ModelStore(mongo_client, settings)
    assert store.mirror is not None
    published = publish_candidates(store, settings)  # v1, v2; v1 active
    yield Registry(settings, store, published, env)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    mongo_client.drop_database(name)


def test_publish_registers_each_version_with_its_uri_run_and_tags(registry):
    """Check that each published version is an MLflow model version pointing at its gridfs URI."""
    versions = {
        int(mv.tags["registry_version"]): mv
        for mv in registry.client.search_model_versions(f"name = '{MODEL}'")
    }
    assert sorted(versions) == [1, 2]
    for family in FAMILIES:
        number = registry.published.versions[family]
        stored = registry.store.get_model_version(MODEL, number)
        mv = versions[number]
        assert mv.source == f"gridfs:///{registry.database}/{MODEL}/{number}"
        assert mv.status == "READY" and str(mv.version) == str(number)
        assert mv.tags["sha256"] == stored.sha256
        assert mv.tags["model_family"] == family
        assert mv.tags["registry_database"] == registry.database
        assert float(mv.tags["test_f1_macro"]) == pytest.approx(stored.metrics["test_f1_macro"])
    assert registry.alias_version() == 1


def test_the_uri_lists_a_model_directory(registry):
    """Check the listing: MLmodel (onnx + pyfunc, signature, metadata), model.onnx, the card."""
    uri = version_uri(registry.database, MODEL, 2)
    repo = GridFSArtifactRepository(uri)
    listed = {f.path: f for f in repo.list_artifacts()}
    stored = registry.store.get_model_version(MODEL, 2)
    assert set(listed) == {"MLmodel", "model.onnx", "model_card.json"}
    assert listed["model.onnx"].file_size == stored.size_bytes
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == (
        "registry_bridge.mlflow_plugin"
    )
    assert mlmodel["flavors"]["onnx"]["data"] == "model.onnx"
    assert mlmodel["metadata"]["sha256"] == stored.sha256
    assert mlmodel["metadata"]["registry_version"] == 2
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [c["name"] for c in inputs] == list(FEATURES)
    assert {c["type"] for c in inputs} == {"double"}
    card = json.loads((local / "model_card.json").read_text())
    assert card["classes"] == stored.classes and card["version"] == 2
    assert hashlib.sha256((local / "model.onnx").read_bytes()).hexdigest() == stored.sha256


def test_download_artifacts_of_a_registered_version_has_the_registry_sha256(registry, tmp_path):
    """Check mlflow.artifacts.download_artifacts("models:/<name>/<v>") gives the checked bytes."""
    mlflow.set_tracking_uri(registry.settings.mlflow.tracking_uri)
    for number in (1, 2):
        local = Path(
            mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{number}", dst_path=tmp_path)
        )
        data = (local / "model.onnx").read_bytes()
        stored = registry.store.get_model_version(MODEL, number)
        assert hashlib.sha256(data).hexdigest() == stored.sha256


def test_writes_through_the_plugin_are_refused(registry, tmp_path):
    """Check log_artifact(s) and delete are refused, pointing at `bridge publish`/`delete`."""
    repo = GridFSArtifactRepository(version_uri(registry.database, MODEL, 1))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(MlflowException, match="read-only.*bridge publish"):
        repo.log_artifact(str(tmp_path / "f.txt"))
    with pytest.raises(MlflowException, match="read-only.*bridge publish"):
        repo.log_artifacts(str(tmp_path))
    with pytest.raises(MlflowException, match="bridge delete"):
        repo.delete_artifacts()


@pytest.mark.parametrize(
    "uri, problem",
    [
        ("gridfs://admin:s3cret@db.example:27017/model_registry/m/1", "no host or credentials"),
        ("gridfs:///", "expected gridfs:///<database>/<name>/<version>"),
        ("gridfs:///model_registry/m/1/x", "expected gridfs:///<database>/<name>/<version>"),
        ("gridfs:///model_registry/m/0", "positive whole number"),
        ("gridfs:///model_registry/m/١", "positive whole number"),
        ("gridfs:///a%00b/m/1", "'a.x00b' is not a database name: it holds '.x00'"),
        ("gridfs:///a.b/m/1", "'a.b' is not a database name"),
        (f"gridfs:///{'d' * 64}/m/1", "longer than 63 bytes"),
    ],
)
def test_malformed_uris_are_refused(uri, problem):
    """Check a gridfs URI naming a host or credentials, or no version, is refused."""
    with pytest.raises(MlflowException, match=problem.replace("<", ".").replace(">", ".")):
        parse_uri(uri)


def test_reading_a_database_without_a_registry_creates_nothing(registry, mongo_client, tmp_path):
    """Check the plugin is read-only in effect: a gridfs URI on a database that holds no registry
    is a clear MlflowException, and neither the database nor an index is created; a NUL in the
    name is refused as such, not as pymongo's raw InvalidName."""
    absent = f"test_absent_{uuid.uuid4().hex[:8]}"
    for uri in (f"gridfs:///{absent}/{MODEL}/1", f"gridfs:///{absent}"):
        with pytest.raises(MlflowException, match=f"no registry in database '{absent}'"):
            GridFSArtifactRepository(uri).list_artifacts()
    with pytest.raises(MlflowException, match="no registry in database"):
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"gridfs:///{absent}/{MODEL}/1", dst_path=str(tmp_path)
        )
    assert absent not in mongo_client.list_database_names()
    with pytest.raises(MlflowException, match="is not a database name"):
        mlflow.artifacts.download_artifacts(artifact_uri="gridfs:///x%00y/m/1")
    # The registry's own database still reads (and the reader created no index of its own).
    before = mongo_client[registry.database].model_versions.index_information()
    assert [
        f.path for f in GridFSArtifactRepository(f"gridfs:///{registry.database}").list_artifacts()
    ] == [MODEL]
    assert mongo_client[registry.database].model_versions.index_information() == before


def test_a_tampered_artifact_is_refused_naming_version_and_checksum(
    published, mongo_server, registry_db, settings, monkeypatch, tmp_path
):
    """Check changed GridFS bytes make the download fail with an MlflowException naming both."""
    monkeypatch.setenv("MONGODB_URI", mongo_server.uri)
    stored = published.store.get_model_version(MODEL, 2)
    tamper_first_chunk(registry_db, stored.artifact_file_id, mongo_server)
    uri = version_uri(settings.registry.database, MODEL, 2)
    with pytest.raises(MlflowException) as err:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path))
    message = str(err.value)
    assert f"{MODEL} v2: checksum mismatch" in message and stored.sha256 in message
    assert not (tmp_path / "model.onnx").exists()


LOAD_AND_PREDICT = """
import json, sys, time
import numpy as np, pandas as pd
import mlflow.pyfunc
features, rows = json.loads(sys.stdin.read())
started = time.perf_counter()
model = mlflow.pyfunc.load_model(sys.argv[1])
loaded = time.perf_counter() - started
out = model.predict(pd.DataFrame(rows, columns=features))
print(json.dumps({"columns": list(out.columns), "labels": out["prediction"].tolist(),
                  "probabilities": out[[c for c in out.columns if c.startswith("prob_")]]
                  .to_numpy().tolist(), "load_s": loaded}))
"""


def test_load_model_of_the_alias_in_a_fresh_process_matches_predict(registry):
    """Check models:/<name>@production loaded in a new process answers like /predict, 310 rows."""
    from conftest import data_path

    from pipelines.data import load_dataset

    rows = load_dataset(replace(registry.settings.data, path=data_path())).features
    rows = rows[list(FEATURES)].to_numpy(dtype=float).tolist()
    assert len(rows) == 310
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, f"models:/{MODEL}@{ALIAS}"],
        input=json.dumps([list(FEATURES), rows]),
        capture_output=True,
        text=True,
        env={**os.environ, **registry.env},
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    app = make_app(registry.settings, registry.store.db.client)
    records = [dict(zip(FEATURES, row, strict=True)) for row in rows]
    answer = app.test_client().post("/predict", json={"records": records})
    assert answer.status_code == 200, answer.json
    predictions = answer.json["predictions"]
    classes = registry.store.get_model_version(MODEL, 1).classes
    assert loaded["columns"][:2] == ["prediction", "probability"]
    assert loaded["labels"] == [p["label"] for p in predictions]
    expected = np.array([[p["probabilities"][c] for c in classes] for p in predictions])
    assert np.abs(np.array(loaded["probabilities"]) - expected).max() <= 1e-5


def test_the_alias_follows_every_activate_and_rollback(registry, caplog):
    """Check @production names the active version after each activate and rollback: store,
    CLI and HTTP API alike."""
    store = registry.store
    store.set_active_version(MODEL, 2, by="tests")
    assert registry.alias_version() == 2
    store.rollback(MODEL, by="tests")
    assert registry.alias_version() == 1
    result = registry.bridge("activate", MODEL, "2")
    assert result.exit_code == 0, result.output
    assert registry.alias_version() == 2
    result = registry.bridge("rollback", MODEL)
    assert result.exit_code == 0, result.output
    assert registry.alias_version() == 1
    client = make_app(registry.settings, store.db.client).test_client()
    answer = client.post("/models/activate", json={"name": MODEL, "version": 2})
    assert answer.status_code == 200, answer.json
    assert registry.alias_version() == 2
    answer = client.post("/models/rollback", json={"name": MODEL})
    assert answer.status_code == 200, answer.json
    assert registry.alias_version() == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_switch_only_moves_the_alias_mlflow_is_reconciled_before_it(registry, monkeypatch):
    """Check that activate and rollback reconcile MLflow (its import, store and versions: the
    slow part) while the old version is still active, and that the switch itself is one
    alias write, made once the pointer has moved."""
    store, mirror = registry.store, registry.store.mirror
    before = store.get_active_version(MODEL).active_version
    other = 2 if before == 1 else 1
    calls: list[tuple[str, int]] = []

    def active() -> int:
        return store.get_active_version(MODEL).active_version

    def recording(what, real):
        def call(*args, **kwargs):
            calls.append((what, active()))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(mirror, "reconcile", recording("reconcile", mirror.reconcile))
    client = mirror.client
    alias = recording("alias", client.set_registered_model_alias)
    monkeypatch.setattr(client, "set_registered_model_alias", alias)
    store.set_active_version(MODEL, other, by="tests")
    assert registry.alias_version() == other
    store.rollback(MODEL, by="tests")
    assert registry.alias_version() == before
    assert calls == [
        ("reconcile", before),
        ("alias", other),
        ("reconcile", other),
        ("alias", before),
    ]


def test_an_mlflow_failure_warns_once_and_sync_repairs(registry, caplog):
    """Check that with MLflow unreachable the activation still succeeds with one warning saying
    how to repair, `bridge list` reports the drift, and `bridge sync` repairs it."""
    store = registry.store
    good = store.mirror
    dead = f"http://127.0.0.1:{free_port()}"
    store.mirror = Mirror(replace(registry.settings.mlflow, tracking_uri=dead))
    try:
        with caplog.at_level(logging.WARNING, logger="registry_bridge.mirror"):
            state = store.set_active_version(MODEL, 2, by="tests")
    finally:
        store.mirror = good
    assert state.active_version == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "registry_bridge.mirror"]
    assert len(warnings) == 1, warnings
    assert "activate of 'vertebral-column' is done in the registry" in warnings[0]
    assert f"`bridge sync --name {MODEL}`" in warnings[0]
    assert registry.alias_version() == 1  # MLflow was not told

    listed = registry.bridge("list", "--name", MODEL)
    assert listed.exit_code == 0, listed.output
    assert "out of sync" in listed.output and f"bridge sync --name {MODEL}" in listed.output
    as_json = json.loads(registry.bridge("list", "--name", MODEL, "--json").output)
    assert [(v["version"], v["mlflow"]["in_sync"]) for v in as_json] == [(1, False), (2, False)]

    synced = registry.bridge("sync", "--name", MODEL)
    assert synced.exit_code == 0, synced.output
    assert "repaired" in synced.output and f"@{ALIAS} on MLflow v1" in synced.output
    assert registry.alias_version() == 2
    shown = registry.bridge("show", MODEL, "2")
    assert f"mlflow version: models:/{MODEL}/2;" in shown.output and "in sync" in shown.output
    again = registry.bridge("sync", "--name", MODEL, "--json")
    assert json.loads(again.output)[0]["in_sync"] is True

    store.rollback(MODEL, by="tests")
    assert registry.alias_version() == 1


def test_sync_brings_an_unmirrored_registry_in_and_tags_differing_numbers(registry):
    """Check that versions published without the mirror arrive with `bridge sync`, and that
    when MLflow's numbers differ from the registry's the tags say which is which."""
    name = "other-model"
    registry.client.create_registered_model(name)
    registry.client.create_model_version(name, "file:///somewhere/else")  # MLflow v1: foreign
    unmirrored = ModelStore(
        registry.store.db,
        replace(registry.settings, mlflow=replace(registry.settings.mlflow, mirror=False)),
    )
    candidates = registry.published.candidates
    for family in FAMILIES:
        candidate = candidates[family]
        unmirrored.publish_model_version(replace(candidate.draft, name=name), candidate.artifact)
    unmirrored.set_active_version(name, 2, by="tests")
    dry = registry.bridge("sync", "--name", name, "--dry-run")
    assert dry.exit_code == 0 and "out of sync" in dry.output
    assert len(registry.client.search_model_versions(f"name = '{name}'")) == 1
    result = registry.bridge("sync")  # every name
    assert result.exit_code == 0, result.output
    assert f"MLflow mirror of {MODEL!r}: in sync" in result.output
    assert "not published by bridge" in result.output
    versions = {
        mv.version: mv.tags for mv in registry.client.search_model_versions(f"name = '{name}'")
    }
    assert versions[2]["registry_version"] == "1" and versions[3]["registry_version"] == "2"
    assert versions[3]["registry_note"] == "MLflow version 3 is registry version 2"
    assert registry.client.get_model_version_by_alias(name, ALIAS).tags["registry_version"] == "2"


def test_no_credential_reaches_mlflow(registry, mongo_server, tmp_path):
    """Check that publishing through a URI with a password leaves it in no MLflow field."""
    if mongo_server.kind != "embedded":
        pytest.skip("the embedded server accepts any PLAIN credentials; a real one needs a user")
    password = f"pw-{uuid.uuid4().hex}"
    uri = mongo_server.uri.replace("mongodb://", f"mongodb://bridge:{password}@", 1)
    uri += ("&" if "?" in uri else "?") + "authMechanism=PLAIN&authSource=admin"
    settings = throwaway_settings(uri, f"test_{uuid.uuid4().hex[:12]}", tmp_path)
    settings = replace(settings, mlflow=registry.settings.mlflow)
    store = ModelStore.from_settings(settings)
    try:
        candidate = registry.published.candidates[FAMILIES[0]]
        draft = replace(candidate.draft, name="secret-check")
        store.publish_model_version(draft, candidate.artifact)
        store.set_active_version("secret-check", 1, by="tests")
        assert registry.alias_version("secret-check") == 1
        source = registry.client.get_model_version("secret-check", "1").source
        assert source == f"gridfs:///{settings.registry.database}/secret-check/1"
    finally:
        store.db.client.drop_database(settings.registry.database)
        store.close()
    database = Path(registry.settings.mlflow.tracking_uri.removeprefix("sqlite:///"))
    assert database.read_bytes().count(password.encode()) == 0
    assert b"secret-check" in database.read_bytes()


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(registry, tmp_path):
    """Check `mlflow models serve -m models:/<name>@production --env-manager local` scores rows."""
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "models", "serve",
                "-m", f"models:/{MODEL}@{ALIAS}", "--env-manager", "local",
                "-h", "127.0.0.1", "-p", str(port), "-w", "1",
            ],
            env=venv_env(registry.env),  # mlflow execs uvicorn by name
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # it starts uvicorn: stop the whole group
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_answers(base + "/ping", server, log)
        rows = registry.published.inputs[:3].tolist()
        answer = requests.post(
            base + "/invocations",
            json={"dataframe_split": {"columns": list(FEATURES), "data": rows}},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert len(predictions) == 3
        classes = registry.store.get_model_version(MODEL, 1).classes
        assert {"prediction", "probability", *(f"prob_{c}" for c in classes)} <= set(predictions[0])
        assert all(p["model_version"] == 1 for p in predictions)
        wrong = requests.post(
            base + "/invocations",
            json={"dataframe_split": {"columns": ["nope"], "data": [[1.0]]}},
            timeout=60,
        )
        assert wrong.status_code == 400, wrong.text
    finally:
        stop_group(server)


def wait_until_answers(url: str, process: subprocess.Popen, log: Path, timeout: float = 180):
    """Poll ``url`` until it answers 200; fail with the log when the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s: {log.read_text()[-3000:]}")


def test_the_experiment_opens_on_model_training_and_the_ui_links_its_pages(registry):
    """Check the study's experiment carries MLflow 3's model-development kind and
    `make mlflow-ui` names the runs page and the model page (with the alias)."""
    from pipelines.mlflow_ui import direct_links
    from pipelines.tracking import ensure_experiment

    experiment_id = ensure_experiment(registry.settings.mlflow)
    tags = registry.client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    lines = direct_links(registry.settings.mlflow, "http://127.0.0.1:5000")
    assert f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs" in "\n".join(lines)
    model_line = next(line for line in lines if f"model {MODEL!r}" in line)
    assert model_line.endswith(f"http://127.0.0.1:5000/#/models/{MODEL}")
    assert f"@{ALIAS} = version 1" in model_line


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="headless Chromium is not installed")
def test_the_mlflow_ui_model_page_shows_the_versions_and_the_alias(registry, tmp_path):
    """Check MLflow's UI, rendered by headless Chromium, lists both versions and `production`."""
    from pipelines.mlflow_ui import SERVER_ENV, server_command

    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            server_command(registry.settings.mlflow, "127.0.0.1", port),
            env=venv_env({**registry.env, **SERVER_ENV}),  # as `make mlflow-ui` starts it
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # it starts uvicorn: stop the whole group
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_answers(base + "/health", server, log)
        dom = subprocess.run(
            [
                shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'u'}",
                "--virtual-time-budget=15000", "--dump-dom", f"{base}/#/models/{MODEL}",
            ],
            capture_output=True, text=True, timeout=180,
        ).stdout  # fmt: skip
    finally:
        stop_group(server)
    text = re.sub(r"<[^>]+>", " ", dom)
    assert re.search(r"Version\s+1\b", text) and re.search(r"Version\s+2\b", text), text[-3000:]
    assert ALIAS in text


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group started with ``start_new_session``, and wait for its leader."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
