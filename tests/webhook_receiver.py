"""A real HTTP receiver on loopback for webhook tests: records every POST, fails on demand."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Received:
    """One POST as the receiver got it, and when (``time.time()``)."""

    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """``url`` answers 204, or ``fail_status`` to the next ``failures`` POSTs."""

    server: ThreadingHTTPServer
    scheme: str = "http"
    got: list[Received] = field(default_factory=list)
    failures: int = 0
    fail_status: int = 500
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/hook?team=ml"

    def delivered(self) -> list[Received]:
        """The POSTs answered 2xx."""
        with self.lock:
            return [r for r in self.got if 200 <= r.status < 300]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until ``count`` POSTs were answered 2xx; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < count:
            assert time.monotonic() < deadline, f"{len(self.delivered())} of {count} delivered"
            time.sleep(0.01)
        return self.delivered()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver(
    handler: type[BaseHTTPRequestHandler] | None = None, tls: tuple[Path, Path] | None = None
) -> Receiver:
    """A receiver on 127.0.0.1:<free port> (``handler``: another one, e.g. the docs';
    ``tls``: HTTPS with this certificate and key)."""
    receiver: Receiver

    class Recording(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                status = receiver.fail_status if receiver.failures > 0 else 204
                receiver.failures = max(0, receiver.failures - 1)
                receiver.got.append(Received(dict(self.headers), body, time.time(), status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler or Recording)
    server.daemon_threads = True
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    receiver = Receiver(server, "https" if tls else "http")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return receiver
