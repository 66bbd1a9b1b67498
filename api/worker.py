"""The gunicorn worker of ``python -m api``: gthread, but threads only take requests that arrived.

Over 500 lines: one event loop class, whose deadlines and caps (issue 21) only hold
together; it goes as a whole if the API moves to another server (issue 23).

gunicorn's gthread worker hands a connection to a thread as soon as a byte arrives, and
the thread then blocks reading the request: a client sending one byte every 2 s holds
that thread as long as it likes, and 2 x workers x threads such clients stall the API.
Here the worker's event loop (one selector, no thread) completes the TLS handshake and
reads the request head and a body of up to :data:`BODY_BUFFER_LIMIT` (every
``/predict``), ``Content-Length`` or chunked, answering ``Expect: 100-continue`` itself;
only then does a thread parse and serve it.

Every read has a deadline. In the loop, a request must have arrived within
``api.client_timeout_s`` of its first byte being awaited, or the client gets 408. A
larger body (``/batch-predict`` uploads) is streamed by a thread, at most
:data:`STREAM_SHARE` of the threads at once (the others stay free for small requests),
and each of its reads must return within ``client_timeout_s`` and before a deadline that
starts at ``client_timeout_s`` and grows by 1 s per :data:`MIN_BODY_RATE` bytes received:
a steady upload never meets it, a drip or a silence does within ``client_timeout_s``.

The loop itself is bounded: at most ``api.max_pending_connections`` connections and
``api.max_buffered_mb`` of buffered requests per worker, a quarter of each per client
address. At a cap, the connection that has waited longest is closed (a 408 when it had
sent part of a request), so a flood of idle or slow connections evicts itself, not the
ordinary client that sends its request at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import heapq
import itertools
import json
import re
import resource
import selectors
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn import sock as gunicorn_sock
from gunicorn import util as gunicorn_util
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker
from werkzeug.exceptions import RequestTimeout

from registry_bridge.errors import STATUS_BY_CODE, error_body

# Bodies up to this size are read before a thread takes the request.
BODY_BUFFER_LIMIT = 1 << 20
READ_CHUNK = 1 << 16
HEAD_END = b"\r\n\r\n"
# A streamed body's read deadline moves 1 s later per this many bytes received: 64 KB/s
# is a slow uplink (0.5 Mbit/s); a client sending 1 byte every 2 s gains nothing.
MIN_BODY_RATE = 64 * 1024
# At most this share of a worker's threads stream large bodies at once; the rest serve
# small requests whatever the uploads do. Others wait in the loop, unread.
STREAM_SHARE = 0.5
# One client address may hold this share of each cap (connections, buffered bytes).
CLIENT_SHARE = 0.25
# Closing after an answer: send FIN, then read and discard what the client still sends
# (so the kernel does not reset the answer away) for at most this long and this much.
LINGER_S = 2.0
LINGER_BYTES = 64 * 1024
MAX_LINGERING = 256
# Connections accepted per readiness event of the listener (one per event let a backlog
# of idle connections queue an ordinary client behind them).
ACCEPT_BATCH = 64
# On a graceful stop, a new connection that sent nothing yet has this long to begin.
FIRST_BYTES_ON_STOP_S = 1.0
# Draining a body the application did not read, before the next request on the
# connection: longer than this and the connection is closed instead (no thread waits).
DRAIN_S = 0.05

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect:[ \t]*100-continue[ \t]*(?=\r\n)", re.IGNORECASE)
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,15})[ \t]*(?:;[^\r\n]*)?\r\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number

# What the loop knows of a request so far.
_MORE, _READY, _STREAM = "more", "ready", "stream"


def _error_bytes(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    body = json.dumps(error_body(code, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error writer, with the API's ``{"error": {code, message}}`` body."""
    code = next(
        (c for c, status in STATUS_BY_CODE.items() if status == status_int),
        re.sub(r"\W+", "_", reason).upper(),
    )
    body = json.dumps(error_body(code, mesg or reason)).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


def _fix_mmap_threshold() -> None:
    """Keep glibc giving blocks of 128 KB and more their own mappings, returned when freed.

    glibc raises that threshold to the size of each mapped block freed (up to 32 MB), so
    after the first buffered body was freed the next ones came from the heap, which
    keeps what it had: after a flood of 200 clients each holding 1 MB - 1 of a body, one
    worker stayed 73 MB above its RSS before it; with the threshold fixed, both workers
    went back to their RSS before it (and peaked 64 MB above it, not 76).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # not glibc: its own allocator's behaviour stands
        pass


class RequestReadTimeout(RequestTimeout):
    """A streamed body stopped arriving: Flask answers it 408 like any HTTP error."""

    description = "the request body did not arrive in time; the connection is closed"


class _DeadlineUnreader(SocketUnreader):
    """The parser's socket reads in a thread, each bounded by the request's deadline."""

    def __init__(self, sock: Any, parser: Any):
        super().__init__(sock, max_chunk=READ_CHUNK)
        self.parser = parser
        self.deadline = 0.0
        self.timeout = 0.0
        self.timed_out = False

    def arm(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.timed_out = False

    def _give_up(self) -> RequestReadTimeout:
        # The stream is cut mid-body: the answer says "Connection: close" and the
        # connection is never reused (gunicorn's chunked reader reads as finished then).
        self.timed_out = True
        if self.parser.mesg is not None:
            self.parser.mesg.must_close = True
        return RequestReadTimeout()

    def chunk(self) -> bytes:
        # Two bounds: the whole body's (a drip never earns time), and silence after a burst
        # (what was sent fast does not buy minutes of holding the thread).
        remaining = min(self.deadline - time.monotonic(), self.timeout)
        if remaining <= 0:
            raise self._give_up()
        self.sock.settimeout(remaining)
        try:
            data: bytes = self.sock.recv(self.mxchunk)
        except (TimeoutError, ssl.SSLWantReadError):
            raise self._give_up() from None
        finally:
            self.sock.settimeout(None)
        self.deadline += len(data) / MIN_BODY_RATE
        return data


@dataclass(eq=False)
class _Arrival:
    """A connection waiting in the loop: idle, its request arriving, or queued to stream."""

    conn: TConn
    client: str
    deadline: float
    handshaking: bool = False
    idle: bool = True  # no byte of a request yet (closed silently at its deadline)
    kept_alive: bool = False  # waiting for the next request after one was served
    buffer: bytearray = field(default_factory=bytearray)
    head_end: int = -1  # index of the blank line ending the head, once found
    searched: int = 0  # bytes of the buffer already searched for it
    state: str = _MORE
    body_end: int = -1  # where a Content-Length body ends in the buffer
    chunk_at: int = -1  # where the next chunk-size line starts (chunked bodies)
    trailers: bool = False
    queued: bool = False  # head in, body too large to buffer: waiting for a stream slot
    counted: int = 0  # bytes of this arrival counted in the buffered totals


@dataclass(eq=False)
class _Linger:
    sock: Any
    deadline: float
    drained: int = 0


class BufferingThreadWorker(ThreadWorker):
    """gthread whose event loop reads each request (head and small body) before a thread."""

    # Set by ``api.__main__`` in the arbiter before it forks the workers.
    client_timeout: float = 10.0
    max_pending: int = 1000
    max_buffered: int = 64 << 20

    def init_process(self) -> None:
        # gunicorn answers its own refusals (request line or header too large, malformed
        # head) with an HTML page; the API's contract is JSON errors everywhere. Set once
        # per worker process, before any thread runs.
        gunicorn_util.write_error = _write_json_error
        self._tls: ssl.SSLContext | None = None
        cfg = self.cfg
        # The parser refuses a head longer than these limits; up to there it is buffered.
        self._head_limit = (
            cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2)
        ) + len(HEAD_END)
        self._pending: OrderedDict[TConn, _Arrival] = OrderedDict()  # oldest first
        self._pending_of: dict[str, OrderedDict[TConn, _Arrival]] = {}
        self._holding: OrderedDict[TConn, _Arrival] = OrderedDict()  # with bytes buffered
        self._holding_of: dict[str, OrderedDict[TConn, _Arrival]] = {}
        self._buffered = 0
        self._buffered_of: dict[str, int] = {}
        self._queued: OrderedDict[TConn, _Arrival] = OrderedDict()
        self._streaming = 0
        self._in_threads = 0
        self._lingering: OrderedDict[Any, _Linger] = OrderedDict()
        self._timers: list[tuple[float, int, Any]] = []
        self._sequence = itertools.count()
        self._max_streaming = max(1, int(cfg.threads * STREAM_SHARE))
        self._client_pending = max(1, int(self.max_pending * CLIENT_SHARE))
        # Never below one whole request, or a client could not send one.
        self._client_buffered = max(
            BODY_BUFFER_LIMIT + self._head_limit + READ_CHUNK, int(self.max_buffered * CLIENT_SHARE)
        )
        _fix_mmap_threshold()
        # Each waiting connection is a descriptor: the caps, not the soft limit (often
        # 1,024), decide how many there are.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = self.max_pending + MAX_LINGERING + 4 * cfg.threads + 64
        if soft != resource.RLIM_INFINITY and soft < wanted:
            limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        super().init_process()

    # --- the loop -------------------------------------------------------------------

    def run(self) -> None:
        self.poller.register(
            self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks
        )
        # Always accepting: the caps close the longest-waiting connection instead. gthread
        # stops accepting at worker_connections, and 2,000 idle connections then kept every
        # new client in the backlog until their 408s.
        self.set_accept_enabled(True)
        while self.alive:
            self.notify()
            self.wait_for_and_dispatch_events(timeout=self._wait_s())
            if not self.is_parent_alive():
                break
            self._expire()
        # Graceful stop (TERM, or HUP's reload): accept no more; requests that arrived or
        # are arriving are still served, within graceful_timeout.
        self.set_accept_enabled(False)
        self._close_idle()
        grace = time.monotonic() + self.cfg.graceful_timeout
        while (self._pending or self._in_threads or self._lingering) and (time.monotonic() < grace):
            self.notify()
            self.wait_for_and_dispatch_events(timeout=min(self._wait_s(), grace - time.monotonic()))
            self._expire()
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
        for listener in self.sockets:
            listener.close()

    def _wait_s(self) -> float:
        if not self._timers:
            return 1.0
        return max(0.0, min(1.0, self._timers[0][0] - time.monotonic()))

    def _timer(self, deadline: float, item: Any) -> None:
        heapq.heappush(self._timers, (deadline, next(self._sequence), item))

    def _expire(self) -> None:
        """Answer (408, or 503 when queued) and close what waited past its deadline."""
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            deadline, _, item = heapq.heappop(self._timers)
            if isinstance(item, _Linger):
                if self._lingering.get(item.sock) is item and item.deadline == deadline:
                    self._end_linger(item)
            else:
                current = self._pending.get(item.conn)
                if current is not None and current is item and current.deadline == deadline:
                    self._refuse(current)

    def _close_idle(self) -> None:
        """On a graceful stop, close kept-alive connections with no next request begun.

        A connection accepted but silent so far is most likely a client between its
        connect and its request (closing it failed that request during a reload): it
        gets :data:`FIRST_BYTES_ON_STOP_S` to begin, not the whole client_timeout_s.
        """
        soon = time.monotonic() + FIRST_BYTES_ON_STOP_S
        for arrival in list(self._pending.values()):
            if not arrival.idle or self._has_data(arrival):
                continue
            if arrival.kept_alive:
                self._drop(arrival)
            elif arrival.deadline > soon:
                arrival.deadline = soon
                self._timer(soon, arrival)

    @staticmethod
    def _has_data(arrival: _Arrival) -> bool:
        try:
            return bool(arrival.conn.sock.recv(1, socket.MSG_PEEK))
        except (BlockingIOError, ssl.SSLError, ValueError):
            return False
        except OSError:
            return False

    # --- connections in ---------------------------------------------------------------

    def accept(self, listener: Any) -> None:
        """Accept the connections that are there (up to a batch) and wait for their requests."""
        for _ in range(ACCEPT_BATCH):
            try:
                client, address = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._evict_oldest(self._pending)  # make room; the next event retries
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

    def _await_request(
        self,
        conn: TConn,
        handshaking: bool = False,
        kept_alive: bool = False,
        leftover: bytes = b"",
    ) -> None:
        client = str(conn.client[0]) if isinstance(conn.client, tuple) else str(conn.client)
        while len(self._pending_of.get(client, ())) >= self._client_pending:
            self._evict_oldest(self._pending_of[client])
        while len(self._pending) >= self.max_pending:
            self._evict_oldest(self._pending)
        # A kept-alive connection may stay idle for gunicorn's keepalive; a new one, or
        # one whose next request has begun, has client_timeout for its whole request.
        wait = self.cfg.keepalive if kept_alive and not leftover else self.client_timeout
        arrival = _Arrival(conn, client, time.monotonic() + wait, handshaking)
        arrival.kept_alive = kept_alive
        self._pending[conn] = arrival
        self._pending_of.setdefault(client, OrderedDict())[conn] = arrival
        self._timer(arrival.deadline, arrival)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, arrival))
        if leftover:
            # Bytes read with the previous request: they come first (gunicorn's unread()
            # would put the next read before them), and may hold a whole request already.
            arrival.idle = False
            arrival.buffer += leftover
            if not self._count(arrival, len(leftover)):
                return
            self._advance(arrival)

    # --- reading a request in the loop --------------------------------------------------

    def _on_readable(self, arrival: _Arrival, _sock: Any) -> None:
        sock = arrival.conn.sock
        try:
            if arrival.handshaking:
                sock.do_handshake()
                arrival.handshaking = False
            while arrival.state == _MORE:
                data = sock.recv(READ_CHUNK)
                if not data:  # the client sent all it will send
                    if arrival.head_end >= 0:
                        self._refuse_truncated(arrival)
                    else:
                        self._drop(arrival)
                    return
                if arrival.idle:
                    arrival.idle = False
                    if arrival.kept_alive:  # its next request has its own client_timeout
                        arrival.deadline = time.monotonic() + self.client_timeout
                        self._timer(arrival.deadline, arrival)
                arrival.buffer += data
                if not self._count(arrival, len(data)):
                    return  # over a cap, and this one had waited longest
                if not self._advance(arrival):
                    return
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return  # more is on its way: the loop calls again when it is
        except (OSError, ssl.SSLError):
            self._drop(arrival)  # reset, or a failed handshake
            return

    def _advance(self, arrival: _Arrival) -> bool:
        """Parse what arrived; hand the request on when it can be. False: it left the loop."""
        arrival.state = self._scan(arrival)
        if self._pending.get(arrival.conn) is not arrival:
            return False  # dropped while answering Expect
        if arrival.state == _READY:
            self._dispatch(arrival)
            return False
        if arrival.state == _STREAM:
            self._queue_stream(arrival)
            return False
        return True

    def _scan(self, arrival: _Arrival) -> str:
        """Whether a thread can take the request: its head, and its body when small, are in."""
        buffer = arrival.buffer
        if arrival.head_end < 0:
            # From where the last search stopped: a head dripped in small pieces is not
            # searched again from its start each time (up to ~800 KB of head).
            end = buffer.find(HEAD_END, max(0, arrival.searched - len(HEAD_END) + 1))
            if end < 0:
                arrival.searched = len(buffer)
                # Past the limits the parser refuses it without reading more.
                return _READY if len(buffer) > self._head_limit else _MORE
            head = bytes(buffer[: end + 2])
            length = _CONTENT_LENGTH.search(head)
            chunked = _CHUNKED.search(head)
            if chunked and length:
                return _READY  # refused by the parser (a smuggling shape)
            if not chunked and length is None:
                return _READY  # no body
            size = int(length.group(1)) if length else 0
            if size > BODY_BUFFER_LIMIT:
                arrival.head_end = end
                return _STREAM  # Expect stays: the thread sends 100 when it reads
            expect = _EXPECT_CONTINUE.search(head)
            if expect:
                # Answered here, so that the body is read here too; the header goes, or
                # gunicorn's thread would send a second 100 Continue.
                del buffer[expect.start() : expect.end()]
                end -= expect.end() - expect.start()
                if not self._send_continue(arrival, head):
                    return _MORE  # dropped
            arrival.head_end = end
            start = end + len(HEAD_END)
            if chunked:
                arrival.chunk_at = start
            else:
                arrival.body_end = start + size
        if arrival.body_end >= 0:
            return _READY if len(buffer) >= arrival.body_end else _MORE
        return self._scan_chunks(arrival)

    def _send_continue(self, arrival: _Arrival, head: bytes) -> bool:
        if not head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.1"):
            return True
        try:
            arrival.conn.sock.send(_CONTINUE)  # 25 bytes on a fresh socket: never partial
        except (OSError, ssl.SSLError):
            self._drop(arrival)
            return False
        return True

    def _scan_chunks(self, arrival: _Arrival) -> str:
        """Follow a chunked body's framing to its end (no decoding); the parser checks it."""
        buffer = arrival.buffer
        start = arrival.head_end + len(HEAD_END)
        while True:
            if len(buffer) - start > BODY_BUFFER_LIMIT:
                return _STREAM
            at = arrival.chunk_at
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return _MORE
            if arrival.trailers:
                arrival.chunk_at = line_end + 2
                if line_end == at:  # the blank line after the last chunk
                    return _READY
                continue
            size = _CHUNK_SIZE.match(buffer, at)
            if size is None or size.end() != line_end + 2:
                return _READY  # malformed: the parser answers 400
            length = int(size.group(1), 16)
            if length == 0:
                arrival.trailers = True
                arrival.chunk_at = line_end + 2
                continue
            if length > BODY_BUFFER_LIMIT:
                return _STREAM
            end = line_end + 2 + length + 2
            if len(buffer) < end:
                return _MORE if end - start <= BODY_BUFFER_LIMIT else _STREAM
            arrival.chunk_at = end

    # --- the caps -----------------------------------------------------------------------

    def _count(self, arrival: _Arrival, size: int) -> bool:
        """Count buffered bytes; over a cap, close the longest-waiting holders. False: gone."""
        client = arrival.client
        if not arrival.counted:
            self._holding[arrival.conn] = arrival
            self._holding_of.setdefault(client, OrderedDict())[arrival.conn] = arrival
        arrival.counted += size
        self._buffered += size
        self._buffered_of[client] = self._buffered_of.get(client, 0) + size
        while self._buffered_of.get(client, 0) > self._client_buffered:
            self._evict_oldest(self._holding_of[client])
        while self._buffered > self.max_buffered:
            self._evict_oldest(self._holding)
        return self._pending.get(arrival.conn) is arrival

    def _evict_oldest(self, among: OrderedDict[TConn, _Arrival]) -> None:
        if among:
            self._refuse(next(iter(among.values())))

    def _refuse(self, arrival: _Arrival) -> None:
        """Answer a connection the loop gives up on, then close it."""
        if arrival.queued:
            answer = _error_bytes(
                503,
                "Service Unavailable",
                "SERVER_BUSY",
                "every upload slot of this worker stayed busy; retry later",
                "Retry-After: 1\r\n",
            )
        elif not arrival.idle and not arrival.handshaking:
            answer = _error_bytes(
                408,
                "Request Timeout",
                "REQUEST_TIMEOUT",
                f"the request did not arrive within {self.client_timeout:g} s",
            )
        else:
            self._drop(arrival)  # nothing asked, nothing to answer
            return
        try:
            arrival.conn.sock.send(answer)
        except (OSError, ssl.SSLError):
            pass
        self._drop(arrival, linger=True)

    def _refuse_truncated(self, arrival: _Arrival) -> None:
        """A head, then the end of the stream before the body it announced: 400 from here.

        The client may still read the answer. Handed to a thread instead, each such
        request would wait in the thread pool's queue with a copy of its buffer, outside
        the caps, and a flood closing at once would put them all there.
        """
        start = arrival.head_end + len(HEAD_END)
        if arrival.body_end >= 0:
            declared = arrival.body_end - start
            message = (
                f"the body ended after {len(arrival.buffer) - start} of the {declared} bytes "
                "its Content-Length announced (client disconnected?)"
            )
        else:
            message = "the chunked body ended before its last chunk (client disconnected?)"
        try:
            arrival.conn.sock.send(_error_bytes(400, "Bad Request", "INVALID_INPUT", message))
        except (OSError, ssl.SSLError):
            pass
        self._drop(arrival, linger=True)

    def _forget(self, arrival: _Arrival) -> None:
        """Take a connection out of the loop's books (and the poller)."""
        conn, client = arrival.conn, arrival.client
        # The timer heap keeps the arrival until its deadline: its bytes must not stay
        # with it (evicted 1 MB bodies did, ~1,000 of them per worker under a flood).
        arrival.buffer = bytearray()
        self._pending.pop(conn, None)
        self._queued.pop(conn, None)
        mine = self._pending_of.get(client)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._pending_of[client]
        if arrival.counted:
            self._holding.pop(conn, None)
            holding = self._holding_of.get(client)
            if holding is not None:
                holding.pop(conn, None)
                if not holding:
                    del self._holding_of[client]
            self._buffered -= arrival.counted
            left = self._buffered_of.get(client, 0) - arrival.counted
            if left > 0:
                self._buffered_of[client] = left
            else:
                self._buffered_of.pop(client, None)
            arrival.counted = 0
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, arrival: _Arrival, linger: bool = False) -> None:
        self._forget(arrival)
        self.nr_conns -= 1
        if linger:
            self._linger(arrival.conn)
        else:
            arrival.conn.close()

    # --- to a thread ---------------------------------------------------------------------

    def _queue_stream(self, arrival: _Arrival) -> None:
        """A body too large to buffer: a thread streams it when a stream slot is free."""
        if self._streaming < self._max_streaming:
            self._dispatch(arrival, streamed=True)
            return
        try:
            self.poller.unregister(arrival.conn.sock)  # unread until its turn
        except (KeyError, ValueError, OSError):
            pass
        arrival.queued = True
        # The head came in time; the wait for a slot is the server's, not the client's.
        arrival.deadline = time.monotonic() + self.client_timeout
        self._timer(arrival.deadline, arrival)
        self._queued[arrival.conn] = arrival

    def _dispatch(self, arrival: _Arrival, streamed: bool = False) -> None:
        conn, buffer = arrival.conn, arrival.buffer
        self._forget(arrival)
        conn.sock.setblocking(True)
        if conn.parser is None:
            # The socket is already wrapped for TLS: build the parser gunicorn's init would.
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.initialized = True
        unreader = conn.parser.unreader
        if not isinstance(unreader, _DeadlineUnreader):
            unreader = conn.parser.unreader = _DeadlineUnreader(conn.sock, conn.parser)
        unreader.arm(self.client_timeout)
        unreader.unread(bytes(buffer))
        conn.data_ready = True
        conn.streamed = streamed
        self._streaming += streamed
        self._in_threads += 1
        self.enqueue_req(conn)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        """A thread is done with a connection: back to the loop, or closed without blocking."""
        self._in_threads -= 1
        if getattr(conn, "streamed", False):
            self._streaming -= 1
            conn.streamed = False
        try:
            keep = bool(fs.result()) if not fs.cancelled() else False
        except Exception:
            keep = False
        try:
            if keep and self.alive:
                conn.sock.setblocking(False)
                leftover = conn.parser.unreader.take_buffered()
                self._await_request(conn, kept_alive=True, leftover=leftover)
            else:
                self.nr_conns -= 1
                self._linger(conn)
        except (OSError, ValueError):
            conn.close()
        self._start_queued()

    def _start_queued(self) -> None:
        while self._queued and self._streaming < self._max_streaming:
            _, arrival = self._queued.popitem(last=False)
            arrival.queued = False
            self._dispatch(arrival, streamed=True)

    def _keepalive_after(self, conn: TConn, keepalive: bool) -> bool:
        """Reuse the connection only if what the app left unread is already here.

        gthread drains an unread body for up to 5 s in the thread; a client that went
        silent after ``Expect`` held a thread that long. Closing costs nothing here.
        """
        unreader = conn.parser.unreader
        if not keepalive or getattr(unreader, "timed_out", False):
            return False
        deadline = time.monotonic() + DRAIN_S
        if isinstance(unreader, _DeadlineUnreader):  # its deadline bounds each read
            unreader.deadline = min(unreader.deadline, deadline)
        try:
            return bool(conn.parser.finish_body(deadline=deadline))
        except RequestReadTimeout:
            return False

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, RequestReadTimeout):  # read outside Flask (the /predict fast path)
            self.log.info("request body from %s did not arrive in time", addr and addr[0])
            try:
                gunicorn_util.write_nonblock(
                    client,
                    _error_bytes(408, "Request Timeout", "REQUEST_TIMEOUT", exc.description or ""),
                )
            except (OSError, ssl.SSLError):
                pass
            return
        super().handle_error(req, client, addr, exc)

    # --- closing -------------------------------------------------------------------------

    def _linger(self, conn: TConn) -> None:
        """gunicorn's graceful close (FIN, then discard the rest) without blocking the loop."""
        sock = conn.sock
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            conn.close()
            return
        if len(self._lingering) >= MAX_LINGERING:
            _, oldest = self._lingering.popitem(last=False)
            self._end_linger(oldest, popped=True)
        linger = _Linger(sock, time.monotonic() + LINGER_S)
        self._lingering[sock] = linger
        self._timer(linger.deadline, linger)
        try:
            self.poller.register(sock, selectors.EVENT_READ, partial(self._on_linger, linger))
        except (OSError, ValueError, KeyError):
            self._end_linger(linger)

    def _on_linger(self, linger: _Linger, _sock: Any) -> None:
        try:
            while linger.drained < LINGER_BYTES:
                data = linger.sock.recv(4096)
                if not data:
                    break
                linger.drained += len(data)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ssl.SSLError, ValueError):
            pass
        self._end_linger(linger)

    def _end_linger(self, linger: _Linger, popped: bool = False) -> None:
        if not popped:
            self._lingering.pop(linger.sock, None)
        try:
            self.poller.unregister(linger.sock)
        except (KeyError, ValueError, OSError):
            pass
        gunicorn_util.close(linger.sock)
