"""Real processes for tests: the API on a free port, and a private embedded database.

``ApiServer`` runs ``python -m api`` exactly as ``make serve`` does, through the launcher
the demo and the bench use (api.launcher), with its output in a file. ``PrivateDatabase``
is an nx-27017 server of the test's own (free port, temporary data dir) that a test
may kill and restart without touching the suite's shared server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from conftest import data_path

from api.launcher import Server, api_command, free_port, start_all
from conf.settings import EmbeddedSettings, Settings
from registry_bridge import database


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f}s")
        time.sleep(interval)


class ApiServer:
    """``python -m api`` on 127.0.0.1:<free port>, serving ``settings``' registry database."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        args: tuple[str, ...] = (),
    ):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"api-{self.port}.log"
        self.env = {
            **os.environ,
            "MONGODB_URI": settings.registry.mongodb_uri or "",
            "REGISTRY_DB": settings.registry.database,
            "API_HOST": "127.0.0.1",
            "API_PORT": str(self.port),
            "API_WORKERS": str(workers),
            "MODEL_NAME": settings.api.model_name,
            "OUTPUT_DIR": str(settings.api.output_dir),
            "VERTEBRAL_DATA": str(data_path()),
            # The registry mirror writes to MLflow on activation: the test's store, never ./mlruns.
            "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        }
        self.env.pop("API_ADMIN_TOKEN", None)
        self.env.update(env or {})
        self.args = list(args)
        tls_cert = (config or {}).get("api", {}).get("tls_cert")
        self.tls_cert = Path(tls_cert) if tls_cert else None
        if self.tls_cert is not None:
            self.base = self.base.replace("http://", "https://")
        if config:  # knobs without an environment variable (limits) go through --config
            config_path = workdir / f"api-{self.port}.yaml"
            config_path.write_text(yaml.safe_dump(dict(config)))
            self.args += ["--config", str(config_path)]
        self.server: Server | None = None

    @property
    def process(self) -> subprocess.Popen | None:
        """The API's process once started (None before)."""
        return None if self.server is None else self.server.process

    def launcher(self) -> Server:
        """The launcher's :class:`~api.launcher.Server` for this API, not started: what
        :meth:`start` runs, and what :func:`started_together` hands to ``start_all``."""
        if self.server is None:
            scheme = self.base.partition("://")[0]
            self.server = Server(
                "api",
                api_command(*self.args),
                self.port,
                self.log_path,
                self.env,
                scheme=scheme,
                ca_file=self.tls_cert if scheme == "https" else None,
            )
        return self.server

    def start(self, wait_for: str = "/ready", timeout: float = 60) -> ApiServer:
        """Start the API (api.launcher, as the demo and the bench do) and wait until
        ``wait_for`` answers 2xx."""
        server = self.launcher().start()
        try:
            server.wait_ready(wait_for, timeout_s=timeout)
        except RuntimeError as exc:
            self.stop()
            raise AssertionError(str(exc)) from None
        return self

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this server."""
        return self.base + path

    def log(self) -> str:
        """Everything the server, the workers and the app logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the API and its workers (SIGTERM, then SIGKILL if it lingers)."""
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> ApiServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextmanager
def started_together(*apis: ApiServer, timeout: float = 60) -> Iterator[tuple[ApiServer, ...]]:
    """Start the instances at the same time (``api.launcher.start_all``: all started, then
    each waited for) and stop them all when the block ends. Two instances took 3.3-8.2 s
    one after the other, 2.2-2.9 s together (3 rounds each, 2026-12-07, shared 2-core
    machine at load average 5-8)."""
    servers = {str(n): api.launcher() for n, api in enumerate(apis)}
    try:
        start_all(servers, dict.fromkeys(servers, "/ready"), timeout_s=timeout)
        yield apis
    finally:
        for api in apis:
            api.stop()


class PrivateDatabase:
    """An embedded registry server owned by one test: it may be killed and restarted."""

    def __init__(self, data_dir: Path):
        self.embedded = EmbeddedSettings(port=free_port(), data_dir=data_dir)
        self.uri = database.embedded_uri(self.embedded)

    def start(self) -> PrivateDatabase:
        """Start (or restart) on the same port with the same data dir."""
        database.start_embedded(self.embedded)
        return self

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, no flush."""
        pid = int((self.embedded.data_dir / "nx-27017.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not database.pid_alive(pid), 10, f"pid {pid} still alive", interval=0.02)
        (self.embedded.data_dir / "nx-27017.pid").unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        database.stop_embedded(self.embedded)

    def __enter__(self) -> PrivateDatabase:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
