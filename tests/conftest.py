"""Shared fixtures: a throwaway registry database on the server in use, and the data.

The server is, in order: ``MONGODB_URI`` when set; else MongoDB 7 in Docker (through
testcontainers) when a Docker engine answers; else a private embedded nx-27017 server
started for this test session on a free port. Each test that asks for
``registry_db`` gets its own database, dropped afterwards.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pymongo import MongoClient

from api.launcher import free_port
from conf.settings import EmbeddedSettings, Settings, load_settings
from registry_bridge import database

# The API fixtures (published, app, client) for every test, without star imports.
pytest_plugins = ["api_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "vertebral_column" / "column_3C_weka.csv"


@functools.lru_cache(maxsize=1)
def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class MongoServer:
    """The server the suite talks to: its URI and whether it is a real MongoDB."""

    def __init__(self, uri: str, kind: str, data_dir: Path | None = None):
        self.uri = uri
        self.kind = kind  # "external", "docker" or "embedded"
        self.data_dir = (
            data_dir  # the embedded server's SQLite files (tests that must go below the wire)
        )

    @property
    def is_real_mongodb(self) -> bool:
        return self.kind != "embedded"


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    if os.environ.get("MONGODB_URI"):
        yield MongoServer(os.environ["MONGODB_URI"], "external")
        return
    if _docker_answers():
        from testcontainers.mongodb import MongoDbContainer

        with MongoDbContainer("mongo:7") as container:
            yield MongoServer(container.get_connection_url(), "docker")
        return
    embedded = EmbeddedSettings(
        port=free_port(), data_dir=tmp_path_factory.mktemp("embedded-registry")
    )
    database.start_embedded(embedded)
    try:
        yield MongoServer(database.embedded_uri(embedded), "embedded", embedded.data_dir)
    finally:
        database.stop_embedded(embedded)


@pytest.fixture(scope="session")
def mongo_client(mongo_server: MongoServer) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(
        mongo_server.uri, tz_aware=True, serverSelectionTimeoutMS=5000
    )
    yield client
    client.close()


@pytest.fixture
def registry_db_name(mongo_client: MongoClient) -> Iterator[str]:
    """A fresh database name on the suite's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    mongo_client.drop_database(name)


@pytest.fixture
def settings(mongo_server: MongoServer, registry_db_name: str, tmp_path: Path) -> Settings:
    """Settings pointing every part of the project at throwaway places.

    The registry is the test's own database, MLflow a fresh SQLite store, outputs and
    reports a temporary directory; the data is VERTEBRAL_DATA (or shared/ beside the repo).
    """
    return throwaway_settings(mongo_server.uri, registry_db_name, tmp_path)


def throwaway_settings(uri: str, db_name: str, tmp_path: Path) -> Settings:
    """Settings on database ``db_name`` of ``uri``, with MLflow and outputs under ``tmp_path``
    (what the ``settings`` fixture gives; for fixtures of a wider scope)."""
    env = {
        "MONGODB_URI": uri,
        "REGISTRY_DB": db_name,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "VERTEBRAL_DATA": str(data_path()),
        "OUTPUT_DIR": str(tmp_path / "outputs"),
        # No capture thread writing into a test's database unless the test asks for one.
        "CAPTURE_SAMPLE_PERCENT": "0",
    }
    (tmp_path / "mlruns").mkdir()
    loaded = load_settings(env=env)
    return replace(
        loaded,
        mlflow=replace(loaded.mlflow, artifact_root=tmp_path / "mlruns" / "artifacts"),
        training=replace(loaded.training, reports_dir=tmp_path / "reports" / "training"),
    )


@pytest.fixture
def registry_db(mongo_client: MongoClient, registry_db_name: str):
    """The test's own (empty) registry database."""
    return mongo_client[registry_db_name]


def data_path() -> Path:
    """The reference data: VERTEBRAL_DATA, else shared/ beside the repository."""
    path = Path(os.environ.get("VERTEBRAL_DATA") or SHARED_DATA)
    if not path.is_file():
        pytest.skip(f"no data set: set VERTEBRAL_DATA (looked at {path})")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked needs_real_mongodb when the suite runs on the embedded server."""
    if os.environ.get("MONGODB_URI") or _docker_answers():
        return
    skip = pytest.mark.skip(reason="needs a real MongoDB: set MONGODB_URI or run a Docker engine")
    for item in items:
        if "needs_real_mongodb" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def bridge(settings: Settings, registry_db_name: str):
    """Run ``bridge ARGS`` against the test's registry database and MLflow store, with
    MODEL_NAME ``vertebral-column`` (``env_changes`` on top, ``input`` on stdin)."""
    from click.testing import CliRunner

    from registry_bridge.cli import main

    env = {
        "MONGODB_URI": settings.registry.mongodb_uri or "",
        "REGISTRY_DB": registry_db_name,
        "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        "MODEL_NAME": "vertebral-column",
        "REGISTRY_USER": "cli-tester",
    }
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env_changes: dict | None = None):
        return runner.invoke(main, list(args), env={**env, **(env_changes or {})}, input=input)

    return run
