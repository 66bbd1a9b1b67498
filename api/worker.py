"""The gunicorn worker of ``python -m api``: gthread, but threads only take requests that arrived.

gunicorn's gthread worker hands a connection to a thread as soon as a byte arrives, and
the thread then blocks reading the headers: a client sending one header byte every 2 s
holds that thread as long as it likes, and 2 x workers x threads such clients stall the
API. Here the worker's event loop (one selector, no thread) completes the TLS handshake
and reads the request head, and a body of up to :data:`BODY_BUFFER_LIMIT` (every
``/predict``), without blocking; only then does a thread parse and serve it. A client
that has not sent that much within ``api.client_timeout_s`` gets a 408 and is closed.
Larger bodies (``/batch-predict`` uploads) are streamed by the thread as before.
"""

from __future__ import annotations

import errno
import json
import re
import selectors
import ssl
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn import sock as gunicorn_sock
from gunicorn import util as gunicorn_util
from gunicorn.workers.gthread import TConn, ThreadWorker

from registry_bridge.errors import STATUS_BY_CODE

# Bodies up to this size are read before a thread takes the request.
BODY_BUFFER_LIMIT = 1 << 20
READ_CHUNK = 1 << 16
HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)
# curl and others send the body only after gunicorn's "100 Continue" (or a 1 s pause).
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect:[ \t]*100-continue", re.IGNORECASE)
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error writer, with the API's ``{"error": {code, message}}`` body."""
    code = next(
        (c for c, status in STATUS_BY_CODE.items() if status == status_int),
        re.sub(r"\W+", "_", reason).upper(),
    )
    body = json.dumps({"error": {"code": code, "message": mesg or reason}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


@dataclass(eq=False)
class _Arrival:
    """A connection whose request is still arriving: what came so far and until when."""

    conn: TConn
    deadline: float
    handshaking: bool = False
    buffer: bytearray = field(default_factory=bytearray)


class BufferingThreadWorker(ThreadWorker):
    """gthread whose event loop reads each request's head (and small body) before a thread."""

    # Set by ``api.__main__`` in the arbiter before it forks the workers.
    client_timeout: float = 10.0

    def init_process(self) -> None:
        # gunicorn answers its own refusals (request line or header too large, malformed
        # head) with an HTML page; the API's contract is JSON errors everywhere. Set once
        # per worker process, before any thread runs.
        gunicorn_util.write_error = _write_json_error
        self._arrivals: dict[TConn, _Arrival] = {}
        self._tls: ssl.SSLContext | None = None
        # The parser refuses a head longer than these limits; up to there it is buffered.
        cfg = self.cfg
        self._head_limit = (
            cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2)
        ) + len(HEAD_END)
        super().init_process()

    def accept(self, listener: Any) -> None:
        """Accept a connection and wait, in the event loop, for its first request."""
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())  # non-blocking
        if self.cfg.is_ssl:
            if self._tls is None:  # one context per worker, not one per connection
                self._tls = gunicorn_sock.ssl_context(self.cfg)
            conn.sock = self._tls.wrap_socket(
                client,
                server_side=True,
                do_handshake_on_connect=False,
                suppress_ragged_eofs=self.cfg.suppress_ragged_eofs,
            )
        self._await_request(conn, handshaking=self.cfg.is_ssl)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection sends its next request: wait for it in the loop too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_request(conn)

    def murder_pending(self) -> None:
        """Also answer 408 to, and close, requests that did not arrive in time."""
        super().murder_pending()
        now = time.monotonic()
        for arrival in list(self._arrivals.values()):
            if arrival.deadline <= now or not self.alive:
                if not arrival.handshaking:
                    try:
                        arrival.conn.sock.send(_TIMED_OUT)
                    except (OSError, ssl.SSLError):
                        pass
                self._drop(arrival)

    def _await_request(self, conn: TConn, handshaking: bool = False) -> None:
        arrival = _Arrival(conn, time.monotonic() + self.client_timeout, handshaking)
        self._arrivals[conn] = arrival
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, arrival))

    def _on_readable(self, arrival: _Arrival, _sock: Any) -> None:
        sock = arrival.conn.sock
        try:
            if arrival.handshaking:
                sock.do_handshake()
                arrival.handshaking = False
            while not self._arrived(arrival.buffer):
                data = sock.recv(READ_CHUNK)
                if not data:  # the client sent all it will send
                    if arrival.buffer.find(HEAD_END) >= 0:
                        # A head, and a body shorter than it announced: the app answers
                        # that with a 400 (the client may still be reading).
                        break
                    self._drop(arrival)
                    return
                arrival.buffer += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return  # more is on its way: the loop calls again when it is
        except (OSError, ssl.SSLError):
            self._drop(arrival)  # reset, or a failed handshake
            return
        self._dispatch(arrival)

    def _arrived(self, buffer: bytearray) -> bool:
        """Whether a thread can take the request: its head, and its body when small, are in."""
        end = buffer.find(HEAD_END)
        if end < 0:
            return len(buffer) > self._head_limit  # the parser refuses it without reading more
        head = bytes(buffer[: end + 2])
        length = _CONTENT_LENGTH.search(head)
        if length is None or _CHUNKED.search(head) or _EXPECT_CONTINUE.search(head):
            return True  # no body, a chunked one the thread streams, or one awaiting 100
        size = int(length.group(1))
        return size > BODY_BUFFER_LIMIT or len(buffer) >= end + len(HEAD_END) + size

    def _dispatch(self, arrival: _Arrival) -> None:
        conn = arrival.conn
        self.poller.unregister(conn.sock)
        del self._arrivals[conn]
        conn.sock.setblocking(True)
        if conn.parser is None:
            # The socket is already wrapped for TLS: build the parser gunicorn's init would.
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.initialized = True
        conn.parser.unreader.unread(bytes(arrival.buffer))
        conn.data_ready = True
        self.enqueue_req(conn)

    def _drop(self, arrival: _Arrival) -> None:
        conn = arrival.conn
        self._arrivals.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.nr_conns -= 1
        conn.close()
