"""Shared fixtures: a throwaway registry database on the server in use, and the data.

The server is, in order: ``MONGODB_URI`` when set; else MongoDB 7 in Docker (through
testcontainers) when a Docker engine answers; else a private embedded nx-27017 server
started for this test session on a free port. Each test that asks for
``registry_db`` gets its own database, dropped afterwards.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pymongo import MongoClient

from api.launcher import free_port
from bench.common import SHORT_JOB_SUBMIT_ARGS
from conf.settings import EmbeddedSettings, Settings, load_settings
from registry_bridge import database

# The suite's Spark sessions (test_spark, test_binary_versions) are short local jobs: their
# JVM compiles with C1 only and starts no UI (bench/common.py says what that saves). A
# value the caller exported wins.
os.environ.setdefault("PYSPARK_SUBMIT_ARGS", SHORT_JOB_SUBMIT_ARGS)

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
    shutil.copyfile(_empty_mlflow_store(), tmp_path / "mlruns" / "mlflow.db")
    loaded = load_settings(env=env)
    return replace(
        loaded,
        # Every activation waits the lease: the tests keep the 50 ms they were written
        # with (the lease's own tests set theirs; the README walk runs the default).
        api=replace(loaded.api, pointer_lease_ms=50),
        mlflow=replace(loaded.mlflow, artifact_root=tmp_path / "mlruns" / "artifacts"),
        training=replace(loaded.training, reports_dir=tmp_path / "reports" / "training"),
    )


@functools.lru_cache(maxsize=1)
def _empty_mlflow_store() -> Path:
    """An MLflow SQLite store with its tables created, once per test process: each test's
    store starts as a copy (a few ms) instead of running MLflow's migrations (~2 s of CPU
    each). A copy is what a fresh store is: no run, no model, the Default experiment."""
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    atexit.register(shutil.rmtree, folder, True)
    database = folder / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments()
    return database


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


# The files that take longest (seconds on 2 cores, alone, before issue 22's point 6), run
# first: `make test` gives each of its two processes a whole file at a time (--dist
# loadfile), so a long file started near the end ran on after the other process had
# finished. With pytest-xdist's own order (--loadscope-reorder, files with the most tests
# first) the one-test files came last: the README walk (~240 s) began at ~8 min of 10.
# Longest first, the two processes end within a short file of each other.
LONGEST_FIRST = (
    "test_readme_walkthrough.py",  # 242
    "test_bench.py",  # 183
    "test_train_study.py",  # 65
    "reliability/test_load_during_activation.py",  # 67
    "reliability/test_hostile_input.py",  # 50
    "test_binary_versions.py",  # 50
    "test_compose.py",  # 40
    "test_mlflow_registry.py",  # 40
    "test_spark.py",  # 40
    "reliability/test_interrupted_writes.py",  # 40
    "test_cli.py",  # 35
    "reliability/test_database_outage.py",  # 30
    "reliability/test_access.py",  # 22
    "test_api_server.py",  # 20
)


def _file_rank(item: pytest.Item) -> int:
    path = item.path.as_posix()
    return next(
        (n for n, name in enumerate(LONGEST_FIRST) if path.endswith("/tests/" + name)),
        len(LONGEST_FIRST),
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the longest files first (LONGEST_FIRST; the Makefile keeps this order for
    pytest-xdist with --no-loadscope-reorder), the others as collected; and skip tests
    marked needs_real_mongodb when the suite runs on the embedded server."""
    items.sort(key=_file_rank)  # stable: each file's tests keep their order
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
