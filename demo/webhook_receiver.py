"""The demo's webhook receiver: the 20-line receiver of docs/webhooks.md ("A receiver that
checks the signature"), copied here with its check unchanged, keeping what it got instead
of printing it, on 127.0.0.1 in a thread."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    """One POST the receiver got: its body, and whether its signature verified."""

    event: dict[str, Any]
    verified: bool
    delivery: str


@dataclass
class WebhookReceiver:
    """A local receiver for ``secret``; ``got`` lists every POST in arrival order."""

    secret: bytes
    got: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    lock: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Receiver(BaseHTTPRequestHandler):
            # docs/webhooks.md's do_POST; only what it does with a good body differs.
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 65536))
                mac = hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
                signed = self.headers.get("X-Registry-Signature", "").encode()
                verified = hmac.compare_digest(f"sha256={mac}".encode(), signed)
                receiver.keep(body, verified, self.headers.get("X-Registry-Delivery", ""))
                if not verified:
                    return self.send_error(401, "bad signature")
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the demo prints what it got, not an access log

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def keep(self, body: bytes, verified: bool, delivery: str) -> None:
        try:
            event = json.loads(body)
        except ValueError:
            event = {"event": "?", "body": body[:200].decode("utf-8", "replace")}
        with self.lock:
            # At least once: a delivery seen before is a retry, dropped (docs/webhooks.md).
            if not any(r.delivery == delivery and r.verified for r in self.got) or not delivery:
                self.got.append(Received(event, verified, delivery))
            self.lock.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(got)`` holds; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate(self.got):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
            return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
