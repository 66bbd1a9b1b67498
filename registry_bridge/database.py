"""Connect to the registry database: ``MONGODB_URI`` when set, else the embedded server.

The embedded server (nx-27017, MongoDB wire protocol over SQLite) is started on
demand as a daemon on ``registry.embedded.host:port`` with its files under
``registry.embedded.data_dir``, so the CLI, the API and the demo share one database.
It records that data directory in the database ``registry_identity``; a server on the
port that keeps another directory (another clone's) is refused, not silently shared.
Connection failures become one ``RegistryError("REGISTRY_UNAVAILABLE", ...)``: its message
says only that the database is unreachable (it may reach a page or an HTTP answer); the URI,
password masked, and the driver's text go in its operator detail (the CLI's line, the logs).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pymongo import MongoClient, uri_parser
from pymongo.errors import OperationFailure, PyMongoError

from conf.settings import EmbeddedSettings, RegistrySettings
from conf.uris import mask_uri, scrub
from registry_bridge.errors import RegistryError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
AUTHENTICATION_FAILED = 18  # MongoDB's error code for a refused login


def embedded_uri(settings: EmbeddedSettings) -> str:
    return f"mongodb://{settings.host}:{settings.port}/"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3) as sock:
            # Connecting to a free port of the ephemeral range can connect the socket to
            # itself (TCP simultaneous open): that is nobody listening.
            return sock.getsockname() != sock.getpeername()
    except OSError:
        return False


def _paths(settings: EmbeddedSettings) -> tuple[Path, Path, Path]:
    data_dir = settings.data_dir.resolve()
    return data_dir, data_dir / "nx-27017.pid", data_dir / "nx-27017.log"


def _server_command() -> list[str]:
    exe = Path(sys.executable).with_name("nx-27017")
    return [str(exe)] if exe.exists() else [shutil.which("nx-27017") or "nx-27017"]


# Where an embedded server records whose it is: the data directory of the clone that
# started it. Two clones configured with the same port would otherwise share one server
# silently, each believing the data lived in its own .registry/.
IDENTITY_DB, IDENTITY_COLLECTION, IDENTITY_ID = "registry_identity", "server", "owner"
UNKNOWN_OWNER = "unknown (a server this clone did not start)"


@dataclass(frozen=True)
class EmbeddedStatus:
    running: bool
    uri: str
    pid: int | None
    data_dir: Path  # this clone's
    serving_data_dir: str | None = None  # the answering server's, when it is running

    @property
    def foreign(self) -> bool:
        """True when the server answering on the port keeps another clone's data."""
        return self.running and self.serving_data_dir != str(self.data_dir)

    def describe(self) -> str:
        if self.foreign:
            return _not_ours(self.uri, self.serving_data_dir, self.data_dir)
        state = (
            f"running (pid {self.pid})"
            if self.running and self.pid
            else ("running" if self.running else "stopped")
        )
        return f"embedded registry database at {self.uri}: {state}; data in {self.data_dir}"


def _not_ours(uri: str, theirs: str | None, ours: Path) -> str:
    return (
        f"the registry database answering at {uri} is not this clone's: its data is in "
        f"{theirs or UNKNOWN_OWNER}, this clone's is {ours}; stop that server or set "
        "registry.embedded.port in a config file (--config) for this clone"
    )


def _owner(settings: EmbeddedSettings) -> str | None:
    """The data directory the server on the port says it keeps, claimed for this clone when
    it has no record and the server is the one this clone's pid file names; else None."""
    data_dir, pid_file, _ = _paths(settings)
    client: MongoClient = MongoClient(
        embedded_uri(settings), serverSelectionTimeoutMS=2000, connectTimeoutMS=2000
    )
    try:
        identity = client[IDENTITY_DB][IDENTITY_COLLECTION]
        doc = identity.find_one({"_id": IDENTITY_ID})
        if doc is not None:
            return str(doc.get("data_dir"))
        if _read_pid(pid_file) is None:
            return None  # started elsewhere, by code older than the identity record
        identity.update_one(
            {"_id": IDENTITY_ID}, {"$set": {"data_dir": str(data_dir)}}, upsert=True
        )
        return str(data_dir)
    except PyMongoError:
        return None
    finally:
        client.close()


def _check_owner(settings: EmbeddedSettings) -> None:
    """Refuse a server on the configured port that keeps another clone's data (one line)."""
    data_dir = _paths(settings)[0]
    owner = _owner(settings)
    if owner != str(data_dir):
        raise RegistryError(
            "REGISTRY_UNAVAILABLE", _not_ours(embedded_uri(settings), owner, data_dir)
        )


def _read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def embedded_status(settings: EmbeddedSettings) -> EmbeddedStatus:
    """The server that answers on the configured port, and whether it is this clone's."""
    data_dir, pid_file, _ = _paths(settings)
    running = _listening(settings.host, settings.port)
    return EmbeddedStatus(
        running,
        embedded_uri(settings),
        _read_pid(pid_file),
        data_dir,
        _owner(settings) if running else None,
    )


def start_embedded(settings: EmbeddedSettings) -> EmbeddedStatus:
    """Start the embedded server unless something already listens on its port.

    Raises:
        RegistryError: REGISTRY_UNAVAILABLE when it does not come up in time.
    """
    if _listening(settings.host, settings.port):
        _check_owner(settings)
        return embedded_status(settings)
    data_dir, pid_file, log_file = _paths(settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        *_server_command(),
        "--daemon",
        "--data-dir",
        str(data_dir),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--pid-file",
        str(pid_file),
        "--log-file",
        str(log_file),
    ]
    log.info("starting embedded registry database: %s", " ".join(command))
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=START_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RegistryError(
            "REGISTRY_UNAVAILABLE",
            f"could not start the embedded registry database ({embedded_uri(settings)}): {exc}",
        ) from None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _listening(settings.host, settings.port):
            _check_owner(settings)  # ours: the pid file names it, so this records it
            return embedded_status(settings)
        time.sleep(0.1)
    raise RegistryError(
        "REGISTRY_UNAVAILABLE",
        f"the embedded registry database did not start on "
        f"{embedded_uri(settings)} within {START_TIMEOUT_S:.0f}s; see {log_file}",
    )


def stop_embedded(settings: EmbeddedSettings) -> bool:
    """Stop the embedded server this project started; True when one was stopped."""
    _, pid_file, _ = _paths(settings)
    pid = _read_pid(pid_file)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    if not _wait_until_gone(pid, settings, seconds=5):
        # Seen now and then: the server lingers on SIGTERM with clients still connected.
        os.kill(pid, signal.SIGKILL)
        _wait_until_gone(pid, settings, seconds=5)
    pid_file.unlink(missing_ok=True)
    return True


def _wait_until_gone(pid: int, settings: EmbeddedSettings, seconds: float) -> bool:
    # The server removes its pid file before it closes its socket: wait for the process
    # itself to end and the port to be free, so "stopped" means a new start can bind.
    deadline = time.monotonic() + seconds
    while pid_alive(pid) or _listening(settings.host, settings.port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (a zombie counts: it has not been reaped)."""
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def resolve_uri(settings: RegistrySettings, start: bool = True) -> str:
    """The URI to use: MONGODB_URI, or the embedded server (started when ``start``)."""
    if settings.mongodb_uri:
        return settings.mongodb_uri
    if start:
        start_embedded(settings.embedded)
    return embedded_uri(settings.embedded)


def check_uri(settings: RegistrySettings) -> None:
    """Refuse a MONGODB_URI the driver cannot parse, in one line with its secrets masked.

    Raises:
        RegistryError: INVALID_INPUT naming the masked URI and what is wrong with it.
    """
    uri = settings.mongodb_uri
    if not uri or uri.startswith("mongodb+srv://"):  # srv parsing needs DNS: left to connect
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown options only warn; the driver says so later
            uri_parser.parse_uri(uri)
    except (PyMongoError, ValueError) as exc:
        raise RegistryError(
            "INVALID_INPUT",
            f"MONGODB_URI {mask_uri(uri)} is not a valid MongoDB URI: {scrub(str(exc), uri)}",
        ) from None


def connect(settings: RegistrySettings, start: bool = True) -> MongoClient:
    """A checked client for the registry database (one per process: it pools).

    Raises:
        RegistryError: REGISTRY_UNAVAILABLE naming the masked URI; UNAUTHORIZED when the
            server refuses the URI's credentials or does not do authentication at all.
    """
    uri = resolve_uri(settings, start=start)
    try:
        client: MongoClient = MongoClient(
            uri,
            serverSelectionTimeoutMS=settings.timeout_ms,
            connectTimeoutMS=settings.timeout_ms,
            tz_aware=True,
        )
        client.admin.command("ping")
    except (PyMongoError, ValueError) as exc:
        # pymongo appends timeouts and a topology dump: keep the first, useful part.
        reason = scrub(str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0], uri)
        refused_login = isinstance(exc, OperationFailure) and exc.code == AUTHENTICATION_FAILED
        raise RegistryError(
            "UNAUTHORIZED" if refused_login else "REGISTRY_UNAVAILABLE",
            f"cannot {'log in to' if refused_login else 'reach'} the registry database",
            operator_detail=f"at {mask_uri(uri)}: {reason}",
        ) from None
    except (KeyError, TypeError) as exc:
        # pymongo's SASL code indexes the server's answer: a server without authentication
        # (the embedded one) answers without "payload" and the driver raises KeyError.
        raise RegistryError(
            "UNAUTHORIZED",
            "cannot log in to the registry database",
            operator_detail=f"at {mask_uri(uri)}: the server answered the authentication "
            f"handshake unexpectedly ({type(exc).__name__} {exc}); does it have "
            "authentication enabled? If not, remove the user and password from MONGODB_URI",
        ) from None
    return client
