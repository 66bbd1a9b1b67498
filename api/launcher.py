"""Start a server as a child process on a free loopback port, wait until it answers, stop it.

The one launcher of ``python -m api`` (and of the peers the bench measures against):
the demo, the bench and the tests all start the API through :class:`Server`, so a
change in how the API starts (its server, its ready path) is made once. The process
runs in its own session, so :meth:`Server.stop` stops its workers with it, and writes to
a log file (a pipe nobody reads would block the workers once full).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` right now."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def api_command(*args: str) -> list[str]:
    """``python -m api`` with this interpreter, as ``make serve`` runs it."""
    return [sys.executable, "-m", "api", *args]


@dataclass
class Server:
    """A server process started in its own session, logging to a file, stopped as a group."""

    name: str
    command: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # empty: this process's environment
    cwd: Path | None = None  # None: the repository's root
    host: str = LOOPBACK
    scheme: str = "http"
    ca_file: Path | None = None  # https: the certificate to trust (a self-signed one)
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The process id (its group's too); the server must have been started."""
        if self.process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.process.pid

    def start(self) -> Server:
        """Start the process (does not wait; see :meth:`wait_ready`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.log_path, "ab")
        log.info("starting %s: %s", self.name, " ".join(self.command))
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            self.command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env or dict(os.environ),
            cwd=self.cwd or ROOT,
            start_new_session=True,
        )
        handle.close()
        return self

    def wait_ready(
        self,
        path: str,
        timeout_s: float = 120.0,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> float:
        """Poll ``path`` until it answers 2xx; returns seconds since start.

        Raises:
            RuntimeError: the process exited or did not answer in time (names its log).
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before it "
                    f"was ready; see {self.log_path}:\n{self.tail()}"
                )
            try:
                request = urllib.request.Request(
                    self.base_url + path, data=body, method=method, headers=dict(headers or {})
                )
                with urllib.request.urlopen(request, timeout=5, context=context) as answer:
                    if 200 <= answer.status < 300:
                        self.ready_s = round(time.perf_counter() - self.started_at, 2)
                        return self.ready_s
                    last = f"HTTP {answer.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.name} not ready on {self.base_url}{path} after {timeout_s:.0f}s "
            f"({last}); see {self.log_path}:\n{self.tail()}"
        )

    def tail(self, lines: int = 15) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextmanager
def serving(server: Server, path: str = "/ready", timeout_s: float = 120.0) -> Iterator[Server]:
    """Start ``server``, wait until ``path`` answers, and stop it when the block ends."""
    server.start()
    try:
        server.wait_ready(path, timeout_s=timeout_s)
        yield server
    finally:
        server.stop()


def start_all(
    servers: Mapping[str, Server], ready_paths: Mapping[str, str], timeout_s: float = 180.0
) -> None:
    """Start every server at once, then wait for each; stop them all if any fails."""
    try:
        for server in servers.values():
            server.start()
        for name, server in servers.items():
            server.wait_ready(ready_paths[name], timeout_s=timeout_s)
            log.info("%s ready after %.1fs on port %d", name, server.ready_s, server.port)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
