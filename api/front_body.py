"""Request bodies as a worker's event loop receives them (api/front.py reads them).

:class:`Budget` bounds the bytes buffered by one worker, the longest-waiting body first
evicted at a cap; :class:`StreamedBody` is the ``wsgi.input`` a thread reads a body too
large to buffer from, each piece pulled from the loop under the body's deadline.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

# One client address may hold this share of the buffered-bytes budget.
CLIENT_SHARE = 0.25
# A streamed body's deadline moves 1 s later per this many bytes received: 64 KB/s is a
# slow uplink (0.5 Mbit/s); a client sending 1 byte every 2 s gains nothing.
MIN_BODY_RATE = 64 * 1024
# At most this share of a worker's threads stream large bodies at once; the rest stay free.
STREAM_SHARE = 0.5
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


class BodyTimeout(Exception):
    """The body did not arrive in time (or its bytes were evicted at the budget's cap)."""


class ClientGone(Exception):
    """The client closed the connection before its request was read."""


@dataclass(eq=False)
class BodyReader:
    """One request whose body the loop is buffering."""

    client: str
    task: asyncio.Task[Any] | None
    held: int = 0
    evicted: bool = False


@dataclass
class Budget:
    """Buffered request bytes of one worker: at a cap the longest-waiting reader is evicted.

    Invariant: ``total`` is the sum of the live readers' ``held``, and after :meth:`add`
    returns it is within ``limit`` and each client's within ``per_client`` (unless one
    reader alone is over: it is then the one evicted).
    """

    limit: int
    per_client: int
    total: int = 0
    _readers: OrderedDict[int, BodyReader] = field(default_factory=OrderedDict)
    _by_client: dict[str, int] = field(default_factory=dict)

    def join(self, reader: BodyReader) -> None:
        self._readers[id(reader)] = reader

    def add(self, reader: BodyReader, size: int) -> None:
        """Count ``size`` more bytes of ``reader``; evict the oldest readers over a cap."""
        reader.held += size
        self.total += size
        self._by_client[reader.client] = self._by_client.get(reader.client, 0) + size
        while self._by_client.get(reader.client, 0) > self.per_client:
            oldest = next(r for r in self._readers.values() if r.client == reader.client)
            self._evict(oldest, reader)
        while self.total > self.limit:
            self._evict(next(iter(self._readers.values())), reader)

    def leave(self, reader: BodyReader) -> None:
        """The reader is done (its bytes go to the app, or away)."""
        if self._readers.pop(id(reader), None) is None:
            return
        self.total -= reader.held
        left = self._by_client.get(reader.client, 0) - reader.held
        if left > 0:
            self._by_client[reader.client] = left
        else:
            self._by_client.pop(reader.client, None)
        reader.held = 0

    def _evict(self, victim: BodyReader, adding: BodyReader) -> None:
        """Drop ``victim``'s bytes: it is answered 408 (its task is woken by a cancel)."""
        self.leave(victim)
        victim.evicted = True
        if victim is adding:  # alone over a cap: the body being read is the one refused
            raise BodyTimeout("evicted")
        if victim.task is not None:
            victim.task.cancel()


class StreamedBody(io.RawIOBase):
    """``wsgi.input`` of a body too large to buffer: the app's thread pulls it from the loop,
    each read under the body's deadline (raising werkzeug's 408 when it passes)."""

    def __init__(self, prefix: bytes, pull: Callable[[], Coroutine[Any, Any, bytes]], loop: Any):
        self._buffer = bytearray(prefix)
        self._pull = pull
        self._loop = loop
        self._done = False

    def readable(self) -> bool:
        return True

    def _more(self) -> None:
        from werkzeug.exceptions import RequestTimeout

        future = asyncio.run_coroutine_threadsafe(self._pull(), self._loop)
        try:
            chunk = future.result()
        except BodyTimeout:
            raise RequestTimeout("the request body did not arrive in time") from None
        except ClientGone:
            chunk = b""
        if not chunk:
            self._done = True
        self._buffer += chunk

    def read(self, size: int | None = -1) -> bytes:
        want = -1 if size is None else size
        while not self._done and (want < 0 or len(self._buffer) < want):
            self._more()
        if want < 0 or want >= len(self._buffer):
            out, self._buffer = bytes(self._buffer), bytearray()
        else:
            out, self._buffer = bytes(self._buffer[:want]), self._buffer[want:]
        return out

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        while not self._done and b"\n" not in self._buffer:
            if size is not None and 0 <= size <= len(self._buffer):
                break
            self._more()
        end = self._buffer.find(b"\n") + 1 or len(self._buffer)
        if size is not None and size >= 0:
            end = min(end, size)
        return self.read(end)


def fix_mmap_threshold() -> None:
    """Keep glibc giving blocks of 128 KB and more their own mappings, returned when freed.

    glibc raises that threshold to the size of each mapped block freed (up to 32 MB), so
    after the first buffered body was freed the next ones came from the heap, which
    keeps what it had: after a flood of 200 clients each holding 1 MB - 1 of a body, one
    gunicorn worker stayed 73 MB above its RSS before it; with the threshold fixed, both
    went back to their RSS before it (and peaked 64 MB above it, not 76).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # not glibc: its own allocator's behaviour stands
        pass
