"""The API under granian (RSGI): bodies read under a deadline, scoring answered on the event loop.

Why this shape (issue 23; figures in bench/results and the closing note): granian's HTTP
layer is Rust, and the Flask app ran much faster under it than under gunicorn. But
granian's WSGI interface hands each request to a Python thread *before* its body arrives
(the thread then blocks reading it: src/wsgi/callbacks.rs), so 64 clients dripping a body
held every thread. Here each worker's event loop reads every body first, under a deadline
and within a memory budget; only then does anything call the Flask app:

- **inline, on the event loop**, a buffered ``POST`` to a scoring route of api/fast.py
  (``/predict``, ``/invocations``, ``/models/<name>/predict``, OIP ``infer``) whose model
  resolves without I/O (its pointer lease runs and its version is loaded): scoring one
  record costs tens of microseconds, less than handing it to a thread and back;
- **in a thread** of a pool of :data:`THREADS`, everything else: other paths, a pointer to
  read, a version to load, a body too large to buffer (streamed to the app, each read under
  a deadline, by at most ``STREAM_SHARE`` of the threads at once).

granian's own interface (RSGI), not ASGI: a response is one call, not two awaited messages.
With the same 150 µs of Python per request, RSGI answered 37–52 % more requests per second
than ASGI in each of three alternated rounds (shared machine: ratios, not figures).

Either way the request meets the same Flask app (and its fast path, api/fast.py), so the
Host and origin checks, limits, metrics, the access log, capture and the ``X-Model-*``
headers are those of every other path.

Deadlines: a request head must arrive within ``api.client_timeout_s`` (granian's header
read timeout), and so must a body of up to :data:`BODY_BUFFER_LIMIT`; a larger body's
deadline starts there and grows by 1 s per ``MIN_BODY_RATE`` bytes received. A late body
is answered 408. Buffered bodies count against ``api.max_buffered_mb`` per worker (a
declared length is reserved before reading), a quarter of it per client address; at the
cap the body that has waited longest is answered 408 and dropped, so a flood of slow
bodies evicts itself, not the ordinary client.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask
from granian.rsgi import ProtocolClosed, ProtocolError

from api.exit_hooks import run_exit_hooks
from api.fast import FastPredict
from api.front_body import (
    CLIENT_SHARE,
    MIN_BODY_RATE,
    STREAM_SHARE,
    BodyReader,
    BodyTimeout,
    Budget,
    ClientGone,
    StreamedBody,
    fix_mmap_threshold,
)
from registry_bridge.errors import error_body

log = logging.getLogger(__name__)

Headers = list[tuple[str, str]]
Pull = Callable[[], Coroutine[Any, Any, bytes]]

# Threads per worker for what the loop does not answer inline: registry reads, version
# loads, uploads and the console overlap there.
THREADS = 8
# Bodies up to this size are read by the loop before the app sees the request.
BODY_BUFFER_LIMIT = 1 << 20
# Answers of the threads are sent in pieces of about this size.
SEND_CHUNK = 256 * 1024
# A streamed body reaches the app's thread in pieces of up to this size.
PULL_BYTES = 1 << 20


class Front:
    """The RSGI application granian serves: one per worker, around one Flask app."""

    def __init__(self, app: Flask, threads: int = THREADS):
        from api import EXTENSION

        self.fast: FastPredict = app.wsgi_app  # type: ignore[assignment]
        # A streamed body goes to Flask itself: its reads may raise 408, which Flask answers.
        self.flask = self.fast.app
        api = app.extensions[EXTENSION].settings.api
        self.timeout = api.client_timeout_s
        buffered = api.max_buffered_mb * 1024 * 1024
        self.budget = Budget(buffered, max(BODY_BUFFER_LIMIT, int(buffered * CLIENT_SHARE)))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="api")
        self.stream_slots = max(1, int(threads * STREAM_SHARE))
        self._streams: asyncio.Semaphore | None = None  # made in the worker's loop
        fix_mmap_threshold()

    # --- RSGI ------------------------------------------------------------------------

    def __rsgi_del__(self, loop: Any) -> None:
        """A worker stops: its exit hooks (flush captured records and access lines, leave
        the fleet), which granian's ``os._exit`` of the worker would skip."""
        run_exit_hooks()
        self.pool.shutdown(wait=False)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        try:
            await self._http(scope, proto)
        except Exception:  # the Flask app answers its own errors: this is a bug here
            log.exception("unexpected error answering %s %s", scope.method, scope.path)
            _error(proto, "INTERNAL_ERROR", 500, "unexpected error; see the API's log")

    # --- one request -----------------------------------------------------------------

    async def _http(self, scope: Any, proto: Any) -> None:
        headers = scope.headers
        length = headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        chunked = "transfer-encoding" in headers
        loop = asyncio.get_running_loop()
        try:
            body, rest = await self._buffer(proto, _client(scope), declared, chunked)
        except ClientGone as gone:  # it may only have shut its sending side: say why
            _error(proto, "INVALID_INPUT", 400, str(gone))
            return
        except BodyTimeout:
            _error(proto, "REQUEST_TIMEOUT", 408, self._late())
            return
        if rest is None:
            environ = _environ(scope, body, chunked)
            if scope.method == "POST" and self._resolves_now(scope.path):
                status, answer_headers, chunks = _call(self.fast, environ)
                proto.response_bytes(status, answer_headers, b"".join(chunks))
                return
            await self._in_thread(self.fast, environ, proto, loop)
            return
        await self._stream(scope, body, rest, proto, loop)

    async def _buffer(
        self, proto: Any, client: str, declared: int | None, chunked: bool
    ) -> tuple[bytes, Pull | None]:
        """The body if it fits the buffer (else what came so far and a pull for the rest).

        Raises:
            BodyTimeout: it came too late, or the budget evicted it (the task's cancel).
            ClientGone: the connection closed before the body's end.
        """
        if (declared is None and not chunked) or declared == 0:
            return b"", None  # no body (a GET): nothing to wait for
        if declared is not None and declared > BODY_BUFFER_LIMIT:
            return b"", self._puller(aiter(proto), 0)
        reader = BodyReader(client, asyncio.current_task())
        self.budget.join(reader)
        try:
            return await self._read(proto, reader, declared)
        except asyncio.CancelledError:
            if not reader.evicted:  # a shutdown, not the budget: let it through
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise BodyTimeout("evicted") from None
        finally:
            self.budget.leave(reader)

    async def _read(
        self, proto: Any, reader: BodyReader, declared: int | None
    ) -> tuple[bytes, Pull | None]:
        """:meth:`_buffer`'s reading, its bytes counted in the budget as they come."""
        deadline = _loop_deadline(self.timeout)
        if declared is not None:
            self.budget.add(reader, declared)  # reserved: hyper reads no more than this
            try:
                async with asyncio.timeout_at(deadline):
                    body = await proto()
            except TimeoutError:
                raise BodyTimeout from None
            except (ProtocolClosed, ProtocolError):
                raise ClientGone(_ended(None, declared)) from None
            if len(body) < declared:
                raise ClientGone(_ended(len(body), declared))
            return body, None
        chunks: list[bytes] = []
        size = 0
        pieces = aiter(proto)
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(pieces)
            except TimeoutError:
                raise BodyTimeout from None
            except StopAsyncIteration:
                return b"".join(chunks), None
            except (ProtocolClosed, ProtocolError):
                raise ClientGone(_ended(size, None)) from None
            chunks.append(chunk)
            size += len(chunk)
            self.budget.add(reader, len(chunk))
            if size > BODY_BUFFER_LIMIT:  # chunked and large: the rest is streamed
                return b"".join(chunks), self._puller(pieces, size)

    def _puller(self, pieces: Any, received: int) -> Pull:
        """Read the next piece of a streamed body under its growing deadline (b"" at the end)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        state = {"received": received}

        async def piece() -> bytes:
            deadline = start + self.timeout + state["received"] / MIN_BODY_RATE
            try:
                async with asyncio.timeout_at(min(deadline, loop.time() + self.timeout)):
                    chunk = await anext(pieces)
            except TimeoutError:
                raise BodyTimeout from None
            except StopAsyncIteration:
                return b""
            except (ProtocolClosed, ProtocolError):
                raise ClientGone(_ended(int(state["received"]), None)) from None
            state["received"] += len(chunk)
            return chunk

        async def pull() -> bytes:
            # Up to PULL_BYTES per call: each call is a hop from the app's thread to the loop
            # and back, and hyper hands the body over in pieces of a few KB (one hop per
            # piece made a 1M-row /batch-predict upload 2.3x slower than under gunicorn).
            chunks = []
            size = 0
            while size < PULL_BYTES:
                chunk = await piece()
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)

        return pull

    async def _stream(self, scope: Any, prefix: bytes, pull: Pull, proto: Any, loop: Any) -> None:
        """A large body: a thread runs the app while the loop feeds it the body."""
        if self._streams is None:
            self._streams = asyncio.Semaphore(self.stream_slots)
        try:
            async with asyncio.timeout(self.timeout):
                await self._streams.acquire()
        except TimeoutError:
            _error(
                proto,
                "BUSY",
                503,
                "every upload slot of this worker stayed busy; retry later",
                [("retry-after", "1")],
            )
            return
        try:
            environ = _environ(scope, b"", chunked=False)
            environ["wsgi.input"] = StreamedBody(prefix, pull, loop)
            await self._in_thread(self.flask, environ, proto, loop)
        finally:
            self._streams.release()

    async def _in_thread(self, wsgi: Any, environ: dict[str, Any], proto: Any, loop: Any) -> None:
        """Run the app in a thread; send a short answer at once, a long one piece by piece."""
        status, headers, first, more = await loop.run_in_executor(
            self.pool, _call_until, wsgi, environ
        )
        if more is None:
            proto.response_bytes(status, headers, first)
            return
        transport = proto.response_stream(status, headers)
        try:
            await transport.send_bytes(first)
            while True:
                piece = await loop.run_in_executor(self.pool, _next_piece, more)
                if not piece:
                    return
                await transport.send_bytes(piece)
        except Exception as exc:  # the client went away mid-answer: nobody to tell
            log.info("answer cut short: %s", exc)
        finally:
            await loop.run_in_executor(self.pool, _close, more)

    def _resolves_now(self, path: str) -> bool:
        """A scoring route of api/fast.py whose model answers without I/O
        (ActiveModel.resolves_now)."""
        resolver = self.fast.resolver(path)
        return resolver is not None and resolver.resolves_now()

    def _late(self) -> str:
        return f"the request did not arrive within {self.timeout:g} s"


def _loop_deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


def _ended(received: int | None, declared: int | None) -> str:
    if received is None:
        return (
            f"the request body ended before the {declared} bytes its Content-Length "
            "declared: the connection closed"
        )
    expected = "" if declared is None else f" of the {declared} its Content-Length declared"
    return f"the request body ended after {received} bytes{expected}: the connection closed"


def _client(scope: Any) -> str:
    return _host(scope.client)


def _host(address: str) -> str:
    """``host`` of RSGI's ``host:port`` (an IPv6 host without its brackets)."""
    return address.rpartition(":")[0].strip("[]")


def _environ(scope: Any, body: bytes, chunked: bool) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of a request; a buffered body has a known length."""
    path = scope.path
    server = scope.server
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.method,
        "SCRIPT_NAME": "",
        # PEP 3333: the path's bytes, percent-decoded, as latin-1 text
        "PATH_INFO": path if path.isascii() and "%" not in path else _wsgi_path(path),
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": _host(server),
        "SERVER_PORT": server.rpartition(":")[2],
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": _client(scope),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,  # werkzeug reads a body without Content-Length
    }
    for name, value in scope.headers.items():
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    if chunked and body:  # read whole: the app sees a plain body of this length
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def _wsgi_path(path: str) -> str:
    return unquote_to_bytes(path).decode("latin-1")  # a str is taken as its UTF-8 bytes


class _Start:
    """WSGI's start_response, keeping what the app gave."""

    status = 500
    headers: Headers = []

    def __call__(self, status: str, headers: Headers, exc_info: Any = None) -> Any:
        self.status = int(status[:3])
        self.headers = headers
        return _no_write


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the WSGI write() callable is not supported")


def _call(wsgi: Any, environ: dict[str, Any]) -> tuple[int, Headers, list[bytes]]:
    """The app's whole answer (the inline path: a scoring answer is small)."""
    start = _Start()
    result = wsgi(environ, start)
    try:
        chunks = list(result)
    finally:
        _close(result)
    return start.status, start.headers, chunks


def _call_until(
    wsgi: Any, environ: dict[str, Any]
) -> tuple[int, Headers, bytes, Iterator[bytes] | None]:
    """In a thread: the answer's first :data:`SEND_CHUNK` bytes, and the rest (None: no rest)."""
    start = _Start()
    result = wsgi(environ, start)
    pieces = iter(result)
    first: list[bytes] = []
    size = 0
    try:
        for piece in pieces:
            first.append(piece)
            size += len(piece)
            if size >= SEND_CHUNK:
                return start.status, start.headers, b"".join(first), _Rest(pieces, result)
    except BaseException:
        _close(result)
        raise
    _close(result)
    return start.status, start.headers, b"".join(first), None


class _Rest:
    """The rest of a long answer, and the app's result to close after it."""

    def __init__(self, pieces: Iterator[bytes], result: Any):
        self.pieces = pieces
        self.result = result

    def __iter__(self) -> Iterator[bytes]:
        return self.pieces

    def __next__(self) -> bytes:
        return next(self.pieces)

    def close(self) -> None:
        _close(self.result)


def _next_piece(rest: Iterator[bytes]) -> bytes:
    """In a thread: the next :data:`SEND_CHUNK` bytes or so of the answer (b"" at the end),
    so that a long answer costs one hop to the loop per piece of that size."""
    pieces = []
    size = 0
    for piece in rest:
        pieces.append(piece)
        size += len(piece)
        if size >= SEND_CHUNK:
            break
    return b"".join(pieces)


def _close(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _error(proto: Any, code: str, status: int, message: str, extra: Headers | None = None) -> None:
    """An answer the loop writes itself, with the API's one error body."""
    body = json.dumps(error_body(code, message)).encode()
    headers = [("content-type", "application/json"), ("connection", "close"), *(extra or [])]
    try:
        proto.response_bytes(status, headers, body)
    except Exception:  # the client is gone, or the answer had begun: nobody to tell
        log.debug("could not answer %s %s: the client is gone", status, code)
