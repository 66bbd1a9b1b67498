"""The API under granian's ASGI interface: bodies read under a deadline, hot paths answered inline.

Why this shape (issue 23, measured in ``bench/results/online.json``): granian's HTTP layer is
Rust, and the same Flask app ran ~2.9x faster under it than under gunicorn. But granian's
WSGI interface hands each request to a Python thread *before* its body arrives (the thread
then blocks reading it), so 64 clients dripping a body held every thread. Here the event
loop of each worker reads every body first, under a deadline, within a memory budget; only
then does anything call the Flask app:

- **inline, on the event loop**, a buffered ``POST`` to a scoring path (``/predict``,
  ``/invocations``, ``/models/<name>/predict``, ``/v2/models/<name>/infer``) whose model
  resolves without I/O (its pointer lease runs and its version is loaded): scoring one
  record costs tens of microseconds, less than handing it to a thread and back;
- **in a thread** of a pool of :data:`THREADS` everything else: other paths, a pointer to
  read, a version to load, a body too large to buffer (streamed to the app, each read under
  a deadline, by at most :data:`STREAM_SHARE` of the threads at once).

Either way the request meets the same Flask app (and its ``/predict`` fast path,
``api/fast.py``), so the Host and origin checks, limits, metrics, the access log, capture
and the ``X-Model-*`` headers are those of every other path.

Deadlines: a request head must arrive within ``api.client_timeout_s`` (granian's header
read timeout), and so must a body of up to :data:`BODY_BUFFER_LIMIT`; a larger body's
deadline starts there and grows by 1 s per :data:`MIN_BODY_RATE` bytes received. A late
body is answered 408. Buffered bodies count against ``api.max_buffered_mb`` per worker, a
quarter of it per client address; at the cap the body that has waited longest is answered
408 and dropped, so a flood of slow bodies evicts itself, not the ordinary client.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from a2wsgi.wsgi import build_environ
from flask import Flask

from api.asgi_body import (
    CLIENT_SHARE,
    BodyReader,
    BodyTimeout,
    Budget,
    ClientGone,
    StreamedBody,
    fix_mmap_threshold,
)
from api.exit_hooks import run_exit_hooks
from api.fast import FastPredict
from registry_bridge.errors import error_body

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Threads per worker for what the loop does not answer inline: registry reads, version
# loads, uploads and the console overlap there.
THREADS = 8
# Bodies up to this size are read by the loop before the app sees the request.
BODY_BUFFER_LIMIT = 1 << 20
# A streamed body's deadline moves 1 s later per this many bytes received: 64 KB/s is a
# slow uplink (0.5 Mbit/s); a client sending 1 byte every 2 s gains nothing.
MIN_BODY_RATE = 64 * 1024
# At most this share of the threads stream large bodies at once; the rest stay free.
STREAM_SHARE = 0.5
# Answers of the threads are sent in pieces of about this size.
SEND_CHUNK = 256 * 1024


class Front:
    """The ASGI application granian serves: one per worker, around one Flask app."""

    def __init__(self, app: Flask, threads: int = THREADS):
        from api import EXTENSION

        self.app = app
        self.fast: FastPredict = app.wsgi_app  # type: ignore[assignment]
        self.wsgi = self.fast  # the Flask app behind its scoring fast path (api/fast.py)
        # A streamed body goes to Flask itself: its reads may raise 408, which Flask answers.
        self.streamed_wsgi = self.fast.app
        registry = app.extensions[EXTENSION]
        api = registry.settings.api
        self.timeout = api.client_timeout_s
        buffered = api.max_buffered_mb * 1024 * 1024
        self.budget = Budget(buffered, max(BODY_BUFFER_LIMIT, int(buffered * CLIENT_SHARE)))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="api")
        self.stream_slots = max(1, int(threads * STREAM_SHARE))
        self._streams: asyncio.Semaphore | None = None  # made in the worker's loop
        fix_mmap_threshold()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._http(scope, receive, send)
        except Exception:  # the Flask app answers its own errors: this is a bug here
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            try:
                await _error(send, "INTERNAL_ERROR", 500, "unexpected error; see the API's log")
            except Exception:  # the answer had begun: the connection is closed instead
                pass

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Nothing to start (create_app did); at a worker's stop, its exit hooks (flush
        captured records and access lines, leave the fleet), which os._exit would skip."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, run_exit_hooks)
                self.pool.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        declared = _content_length(headers)
        loop = asyncio.get_running_loop()
        reader = BodyReader(_client(scope), asyncio.current_task())
        try:
            body, rest = await self._buffer(receive, reader, declared)
        except ClientGone as gone:  # it may only have shut its sending side: say why
            await _error(send, "INVALID_INPUT", 400, str(gone))
            return
        except BodyTimeout:
            await _error(send, "REQUEST_TIMEOUT", 408, self._late())
            return
        except asyncio.CancelledError:
            if not reader.evicted:  # a shutdown, not the budget: let it through
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await _error(send, "REQUEST_TIMEOUT", 408, self._late())
            return
        finally:
            self.budget.leave(reader)
        if rest is None:
            environ = _environ(scope, body)
            if scope["method"] == "POST" and self._resolves_now(scope["path"]):
                await _answer_inline(self.wsgi, environ, send)
                return
            await loop.run_in_executor(self.pool, _answer_in_thread, self.wsgi, environ, send, loop)
            return
        await self._stream(scope, body, rest, send, loop)

    async def _buffer(
        self, receive: Receive, reader: BodyReader, declared: int | None
    ) -> tuple[bytes, Callable[[], Coroutine[Any, Any, bytes]] | None]:
        """The body if it fits the buffer (else what came so far and a pull for the rest)."""
        if declared is not None and declared > BODY_BUFFER_LIMIT:
            return b"", self._puller(receive, 0)
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.disconnect":
                raise ClientGone(_ended(size, declared))
            chunk = message.get("body", b"")
            if chunk:
                if size == 0 and not message.get("more_body", False):
                    return chunk, None  # the usual request: one piece, nothing to count
                if size == 0:
                    self.budget.join(reader)
                chunks.append(chunk)
                size += len(chunk)
                self.budget.add(reader, len(chunk))
            if not message.get("more_body", False):
                return b"".join(chunks), None
            if size > BODY_BUFFER_LIMIT:  # chunked and large: the rest is streamed
                return b"".join(chunks), self._puller(receive, size)

    def _puller(self, receive: Receive, received: int) -> Callable[[], Coroutine[Any, Any, bytes]]:
        """Read the next piece of a streamed body under its growing deadline (b"" at the end)."""
        start = time.monotonic()
        state = {"received": received, "more": True}

        async def pull() -> bytes:
            if not state["more"]:
                return b""
            now = time.monotonic()
            deadline = start + self.timeout + state["received"] / MIN_BODY_RATE
            try:
                async with asyncio.timeout_at(_loop_time(min(deadline, now + self.timeout))):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.disconnect":
                raise ClientGone(_ended(int(state["received"]), None))
            chunk = message.get("body", b"")
            state["received"] += len(chunk)
            state["more"] = bool(message.get("more_body", False))
            return chunk

        return pull

    async def _stream(
        self,
        scope: Scope,
        prefix: bytes,
        pull: Callable[[], Coroutine[Any, Any, bytes]],
        send: Send,
        loop: Any,
    ) -> None:
        """A large body: a thread runs the app while the loop feeds it the body."""
        if self._streams is None:
            self._streams = asyncio.Semaphore(self.stream_slots)
        try:
            async with asyncio.timeout(self.timeout):
                await self._streams.acquire()
        except TimeoutError:
            await _error(
                send,
                "BUSY",
                503,
                "every upload slot of this worker stayed busy; retry later",
                [(b"retry-after", b"1")],
            )
            return
        try:
            environ = _environ(scope, b"")
            environ["wsgi.input"] = StreamedBody(prefix, pull, loop)
            await loop.run_in_executor(
                self.pool, _answer_in_thread, self.streamed_wsgi, environ, send, loop
            )
        finally:
            self._streams.release()

    def _resolves_now(self, path: str) -> bool:
        """A scoring route of api/fast.py whose model answers without I/O
        (ActiveModel.resolves_now)."""
        resolver = self.fast.resolver(path)
        return resolver is not None and resolver.resolves_now()

    def _late(self) -> str:
        return f"the request did not arrive within {self.timeout:g} s"


def _loop_time(deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())


def _ended(received: int, declared: int | None) -> str:
    expected = "" if declared is None else f" of the {declared} its Content-Length declared"
    return f"the request body ended after {received} bytes{expected}: the connection closed"


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else ""


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The WSGI environ of a request: a buffered body has a known length and no chunking."""
    environ = cast(dict[str, Any], build_environ(scope, io.BytesIO(body)))  # type: ignore[arg-type]
    environ["wsgi.input_terminated"] = True  # werkzeug reads a body without Content-Length
    if "HTTP_TRANSFER_ENCODING" in environ and body:
        del environ["HTTP_TRANSFER_ENCODING"]
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


class _Start:
    """WSGI's start_response, keeping what the app gave."""

    status = 500
    headers: list[tuple[bytes, bytes]]

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status = int(status[:3])
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return _no_write


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the WSGI write() callable is not supported")


async def _answer_inline(wsgi: Any, environ: dict[str, Any], send: Send) -> None:
    start = _Start()
    result = wsgi(environ, start)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    await send({"type": "http.response.start", "status": start.status, "headers": start.headers})
    await send({"type": "http.response.body", "body": body})


def _answer_in_thread(wsgi: Any, environ: dict[str, Any], send: Send, loop: Any) -> None:
    """Run the app in this thread and send its answer through the loop, in pieces."""

    async def send_there(message: Message) -> None:
        await send(message)  # granian's send is called on the loop, not on this thread

    def emit(message: Message) -> None:
        asyncio.run_coroutine_threadsafe(send_there(message), loop).result()

    start = _Start()
    result = wsgi(environ, start)
    started = False
    pending: list[bytes] = []
    size = 0
    try:
        for chunk in result:
            if not chunk:
                continue
            pending.append(chunk)
            size += len(chunk)
            if size >= SEND_CHUNK:
                if not started:
                    emit(_start_message(start))
                    started = True
                emit({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                pending, size = [], 0
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        emit(_start_message(start))
    emit({"type": "http.response.body", "body": b"".join(pending)})


def _start_message(start: _Start) -> Message:
    return {"type": "http.response.start", "status": start.status, "headers": start.headers}


async def _error(
    send: Send,
    code: str,
    status: int,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An answer the loop writes itself, with the API's one error body."""
    body = json.dumps(error_body(code, message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *(extra or []),
    ]
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # the client is gone: nobody to tell
        log.debug("could not answer %s %s: the client is gone", status, code)
