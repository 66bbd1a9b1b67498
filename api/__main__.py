"""``python -m api`` / ``make serve``: run the API under gunicorn.

Binds ``API_HOST:API_PORT`` with ``API_WORKERS`` workers. A non-loopback bind
without ``API_ADMIN_TOKEN`` is refused (anyone who can reach the port could switch
the served model) unless ``--insecure`` is given. Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
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

# Threads per worker: enough to overlap registry reads and client I/O on 2 cores. Each
# request waits for a shared active-version read, so with 4 threads the workers sat at
# ~0.5 core each under load (py-spy: threads parked in the read's Condition.wait); 8 gave
# ~20 % more requests/s at 8 and 32 clients (bench/online, same machine, A/B rounds).
THREADS_PER_WORKER = 8
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

    gunicorn loads the pair only in each worker, where a bad file is a traceback per worker
    and exit 255; loading it once here turns that into one line naming the setting.
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
        prog="python -m api", description="Run the API under gunicorn (make serve)."
    )
    parser.add_argument(
        "--config", help="YAML settings file (default: $VERTEBRAL_CONFIG or conf/default.yaml)"
    )
    parser.add_argument("--host", help="bind address (API_HOST)")
    parser.add_argument("--port", help="bind port (API_PORT)")
    parser.add_argument("--workers", help="gunicorn worker processes (API_WORKERS)")
    parser.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback bind without API_ADMIN_TOKEN"
    )
    return parser.parse_args(argv)


def _gunicorn_app(settings: Settings) -> Any:
    from gunicorn.app.base import BaseApplication

    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]

    def child_exit(server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    from api.worker import BufferingThreadWorker

    # Read by the workers, which the arbiter forks after this.
    BufferingThreadWorker.client_timeout = settings.api.client_timeout_s
    BufferingThreadWorker.max_pending = settings.api.max_pending_connections
    BufferingThreadWorker.max_buffered = settings.api.max_buffered_mb * 1024 * 1024
    tls = {}
    if settings.api.tls_cert and settings.api.tls_key:
        tls = {"certfile": str(settings.api.tls_cert), "keyfile": str(settings.api.tls_key)}

    class ApiServer(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": f"{settings.api.host}:{settings.api.port}",
                "workers": settings.api.workers,
                # gthread whose event loop, not a thread, waits for slow clients' requests.
                "worker_class": "api.worker.BufferingThreadWorker",
                "threads": THREADS_PER_WORKER,
                **tls,
                # Workers build the app after forking: one MongoClient per process.
                "preload_app": False,
                "child_exit": child_exit,
                "accesslog": None,  # api.access logs one structured line per request
                "errorlog": "-",
                "loglevel": "info",
                "graceful_timeout": 10,
                "timeout": 120,  # a large /batch-predict holds its worker for a while
                "worker_tmp_dir": metrics_dir,
            }
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn >= 25.1 opens a control socket at one path per user
                # (~/.gunicorn/gunicorn.ctl): a second instance takes it over and stopping
                # either removes it. Nothing here uses gunicornc; signals stop the server.
                options["control_socket_disable"] = True
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from api import create_app

            return create_app({"SETTINGS": settings})

    return ApiServer()


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
    try:
        _gunicorn_app(settings).run()
    finally:
        # Forked workers leave run() through this block too (gunicorn's worker ends with
        # sys.exit): a worker stopped by HUP, TERM or max_requests removed the directory
        # that every next worker needs (its heartbeat file lives there), and the arbiter
        # halted on "Worker failed to boot". Only the arbiter, which created it, removes it.
        if os.getpid() == owner:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
