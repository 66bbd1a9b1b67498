"""``python -m api`` / ``make serve``: run the API under granian (api/front.py says why).

Binds ``API_HOST:API_PORT`` with ``API_WORKERS`` workers. A non-loopback bind
without ``API_ADMIN_TOKEN`` is refused (anyone who can reach the port could switch
the served model) unless ``--insecure`` is given. Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from api.hosts import is_loopback
from conf.settings import Settings, SettingsError, load_settings
from registry_bridge import database
from registry_bridge.errors import RegistryError

log = logging.getLogger("api")

# Seconds a stopping worker has to finish its requests before it is killed.
GRACEFUL_TIMEOUT_S = 10
READ_BUFFER_BYTES = 64 * 1024
# A shorter admin token can be guessed by trying; 16 random hex characters are 64 bits.
MIN_TOKEN_CHARS = 16


def check_bind(settings: Settings, insecure: bool) -> None:
    """Refuse a guessable admin token, and an exposed bind without one (unless insecure)."""
    token = settings.api.admin_token
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise SettingsError(
            f"API_ADMIN_TOKEN is {len(token)} characters long; use at least {MIN_TOKEN_CHARS} "
            "(e.g. openssl rand -hex 24)"
        )
    host = settings.api.host
    if is_loopback(host) or settings.api.admin_token or insecure:
        return
    raise SettingsError(
        f"API_HOST={host} is reachable from other machines but API_ADMIN_TOKEN "
        "is unset: anyone could activate models. Set API_ADMIN_TOKEN, bind "
        "127.0.0.1, or pass --insecure"
    )


def check_tls(settings: Settings) -> None:
    """Refuse a certificate without its key (or the reverse), and a pair that TLS cannot use.

    The server loads the pair only as it starts, where a bad file is a traceback; loading
    it once here turns that into one line naming the setting.
    """
    cert, key = settings.api.tls_cert, settings.api.tls_key
    if bool(cert) != bool(key):
        given, missing = (
            ("api.tls_cert", "api.tls_key") if cert else ("api.tls_key", "api.tls_cert")
        )
        raise SettingsError(
            f"{given} is set but {missing} is not: HTTPS needs both the certificate and its key"
        )
    if not cert or not key:
        return
    try:
        # An encrypted key would make OpenSSL prompt on the terminal: refuse it instead.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise SettingsError(_tls_problem(cert, key, exc)) from None


def _no_password() -> bytes:
    raise ValueError("the key is encrypted; give an unencrypted PEM key")


def _tls_problem(cert: Path, key: Path, exc: Exception) -> str:
    """One line naming the setting at fault: the certificate, the key, or their pairing."""
    try:
        ssl.create_default_context(cafile=str(cert))  # parses every certificate in the file
    except (ssl.SSLError, OSError, ValueError):
        return f"api.tls_cert: {cert} is not a readable PEM certificate"
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    if reason == "KEY_VALUES_MISMATCH":
        return f"api.tls_key: {key} is not the private key of api.tls_cert {cert}"
    return f"api.tls_key: {key} is not a usable PEM private key ({reason})"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m api", description="Run the API under granian (make serve)."
    )
    parser.add_argument(
        "--config", help="YAML settings file (default: $VERTEBRAL_CONFIG or conf/default.yaml)"
    )
    parser.add_argument("--host", help="bind address (API_HOST)")
    parser.add_argument("--port", help="bind port (API_PORT)")
    parser.add_argument("--workers", help="worker processes (API_WORKERS)")
    parser.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback bind without API_ADMIN_TOKEN"
    )
    return parser.parse_args(argv)


def _granian(settings: Settings) -> Any:
    """granian, RSGI: each worker builds its Flask app after the fork (one MongoClient per
    process) and serves it through :class:`api.front.Front`."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    api = settings.api
    tls: dict[str, Any] = {}
    if api.tls_cert and api.tls_key:
        tls = {"ssl_cert": api.tls_cert, "ssl_key": api.tls_key}
    return Granian(
        "api.front:Front",  # named in granian's logs; the loader below builds it
        address=api.host,
        port=api.port,
        interface=Interfaces.RSGI,
        workers=api.workers,
        # HTTP/1.1 only: the protocol whose hostile clients tests/reliability covers.
        http=HTTPModes.http1,
        websockets=False,
        # A head must arrive within client_timeout_s (granian's bound: 60 s).
        http1_settings=HTTP1Settings(
            header_read_timeout=int(min(api.client_timeout_s, 60) * 1000),
            # What one connection may buffer outside api.max_buffered_mb (granian's default,
            # ~400 KB, let 200 slow 1 MB bodies hold ~80 MB); also the longest head accepted.
            max_buffer_size=READ_BUFFER_BYTES,
        ),
        # Connections each worker holds at once; more wait in the kernel's backlog.
        backpressure=api.max_pending_connections,
        backlog=max(1024, api.max_pending_connections),
        respawn_failed_workers=True,  # a worker killed (OOM, TERM) is replaced
        respawn_interval=0.5,
        workers_kill_timeout=GRACEFUL_TIMEOUT_S,
        log_access=False,  # api.access logs one structured line per request
        **tls,
    )


def _raise_open_files(settings: Settings) -> None:
    """Each held connection is a descriptor: the cap, not the soft limit (often 1,024),
    decides how many a worker holds (workers inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = settings.api.max_pending_connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def _load_front(settings: Settings) -> Any:
    """What each worker serves (called in the worker, after granian forks it)."""

    def load(target: str) -> Any:
        from api import create_app
        from api.front import Front

        return Front(create_app({"SETTINGS": settings}))

    return load


def _start_registry(settings: Settings) -> None:
    """Start the embedded database once here, so workers do not race to start it."""
    try:
        database.connect(settings.registry, start=True).close()
    except RegistryError as exc:
        if exc.code == "UNAUTHORIZED":  # wrong credentials will not fix themselves
            raise
        log.warning("%s", exc)  # not fatal: the API serves 503 until the database is there


def main(argv: list[str] | None = None) -> int:
    """Run the API; a bad setting or bind exits 2 with one line on stderr."""
    args = _parse(argv)
    try:
        settings = load_settings(
            args.config,
            overrides={"api.host": args.host, "api.port": args.port, "api.workers": args.workers},
        )
        check_bind(settings, args.insecure)
        check_tls(settings)
        database.check_uri(settings.registry)
    except (SettingsError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not is_loopback(settings.api.host) and not settings.api.admin_token:
        log.warning("serving on %s without API_ADMIN_TOKEN (--insecure)", settings.api.host)
    try:
        _start_registry(settings)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Must be set before any worker imports prometheus_client (values pick their backend then).
    metrics_dir = tempfile.mkdtemp(prefix="api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    owner = os.getpid()
    _raise_open_files(settings)
    try:
        _granian(settings).serve(target_loader=_load_front(settings))
    finally:
        # Only the process that created it removes the directory: a forked worker leaving
        # through here would take every next worker's metrics with it (issue 21, item 1).
        if os.getpid() == owner:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
