"""Request bodies read under a limit: refused with 413 while reading, declared or chunked.

werkzeug's ``get_data()`` silently stops at ``MAX_CONTENT_LENGTH`` when a chunked body
is longer, and a body read whole before any check costs the worker its size several
times over. Every endpoint that reads a body goes through here instead: bytes are
counted as they arrive, and so are lines (CSV records), so a body over the limit is
refused before it is parsed, whatever its ``Transfer-Encoding``.
"""

from __future__ import annotations

import io
from typing import IO, Any

from flask import request

from registry_bridge.errors import RegistryError
from registry_bridge.scoring import invalid

MB = 1024 * 1024
ADMIN_BODY_LIMIT = 64 * 1024  # an activation or rollback is a few names and numbers
_READ_SIZE = 64 * 1024


def _size(limit: int) -> str:
    return f"{limit // MB} MB" if limit >= MB and limit % MB == 0 else f"{limit} bytes"


def too_large(limit: int, what: str = "the request body") -> RegistryError:
    """PAYLOAD_TOO_LARGE naming the limit."""
    return RegistryError(
        "PAYLOAD_TOO_LARGE",
        f"{what} is larger than the limit of {_size(limit)}",
        [{"field": "body", "problem": "too large", "limit_bytes": limit}],
    )


def too_many_rows(max_records: int) -> RegistryError:
    """PAYLOAD_TOO_LARGE for a CSV body with more rows than one request may score."""
    return RegistryError(
        "PAYLOAD_TOO_LARGE",
        f"more than {max_records} rows in one request; the limit is {max_records} "
        "(use /batch-predict for more)",
        [{"field": "body", "problem": "too many rows", "limit_records": max_records}],
    )


def read_body(limit: int, max_lines: int | None = None) -> bytearray:
    """The whole request body, read in pieces and refused as soon as it passes a limit.

    Args:
        limit: bytes accepted; one more is a 413 (declared by Content-Length or not).
        max_lines: line breaks accepted (CSV: a header and ``max_records`` rows); more
            is a 413 before the rest is read. ``\\r`` alone counts as a line break too.

    Raises:
        RegistryError: PAYLOAD_TOO_LARGE naming the limit; INVALID_INPUT when the body
            ends before its Content-Length (the client went away).
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit)
    stream = request.stream
    body = bytearray()
    newlines = returns = 0
    while True:
        piece = stream.read(min(_READ_SIZE, limit + 1 - len(body)))
        if not piece:
            break
        body += piece
        if len(body) > limit:
            raise too_large(limit)
        if max_lines is not None:
            newlines += piece.count(b"\n")
            returns += piece.count(b"\r")
            if max(newlines, returns) > max_lines:
                raise too_many_rows(max_lines - 1)
    if declared is not None and len(body) < declared:
        raise invalid(
            f"the body ended after {len(body)} of the {declared} bytes its "
            "Content-Length announced (client disconnected?)"
        )
    return body


class LimitedStream(io.RawIOBase):
    """A body stream that raises 413 once more than ``limit`` bytes came through.

    For bodies scored as they stream (``/batch-predict``): chunked or not, the upload
    is cut at the limit with an error, never silently truncated. A body shorter than its
    Content-Length is an error too, not the end of the file: behind the server a client
    gone half-way looks like a short body.
    """

    def __init__(self, stream: IO[bytes], limit: int, declared: int | None):
        self._stream = stream
        self._limit = limit
        self._declared = declared
        self._seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(min(len(buffer), self._limit + 1 - self._seen))
        if not data and self._declared is not None and self._seen < self._declared:
            raise invalid(
                f"the upload ended after {self._seen} of the {self._declared} bytes "
                "its Content-Length announced (client disconnected?); nothing saved"
            )
        self._seen += len(data)
        if self._seen > self._limit:
            raise too_large(self._limit, "the upload")
        buffer[: len(data)] = data
        return len(data)


def body_stream(limit: int) -> IO[bytes]:
    """The request body as a buffered stream under ``limit`` (see LimitedStream)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit, "the upload")
    return io.BufferedReader(LimitedStream(request.stream, limit, declared), buffer_size=1 << 20)
