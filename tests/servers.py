"""Real processes for tests: the API under gunicorn on a free port, and a private embedded database.

``ApiServer`` runs ``python -m api`` exactly as ``make serve`` does, with its output in
a file (a pipe that nobody reads would block the workers once full). ``PrivateDatabase``
is an nx-27017 server of the test's own (free port, temporary data dir) that a test
may kill and restart without touching the suite's shared server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
import yaml
from conftest import ROOT, data_path, free_port

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
        if config:  # knobs without an environment variable (limits) go through --config
            config_path = workdir / f"api-{self.port}.yaml"
            config_path.write_text(yaml.safe_dump(dict(config)))
            self.args += ["--config", str(config_path)]
        self.process: subprocess.Popen | None = None

    def start(self, wait_for: str = "/ready", timeout: float = 60) -> ApiServer:
        """Start gunicorn and wait until ``wait_for`` answers 200."""
        with open(self.log_path, "ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: self._answers(wait_for), timeout, f"no 200 on {wait_for}")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}: {self.log()[-2000:]}") from None
        return self

    def _answers(self, path: str) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the API exited with {self.process.returncode}")
        try:
            return requests.get(self.base + path, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this server."""
        return self.base + path

    def log(self) -> str:
        """Everything gunicorn, the workers and the app logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop gunicorn gracefully (SIGTERM), killing it if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> ApiServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


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
