"""The ``inference_log`` collection: what the API captured, as columnar buckets.

Captured records (api/capture.py) are kept in ``inference_log`` as **columnar buckets**:
one document per (name, version) of each batch a worker writes, holding columns rather
than a list of record dicts, so a bucket of 500 records is ~20 BSON elements plus one
request id per request (the embedded server's CPU goes per element; the per-record
layout cost it ~60 µs per record). Layout (``format`` 1; little-endian numpy bytes in
``bson.Binary``, read back with ``np.frombuffer`` only, never unpickled)::

    {name, version, at, last_at,          # BSON dates: first and last record (TTL: last_at)
     count,                               # records
     format: 1,
     features: [names], classes: [names], # the columns of x and of p
     label_names: [names],                # classes, then any other label seen
     sources: [names],                    # endpoint names ("predict", "batch"...)
     request_ids: [id per request],       # {"request_ids": id} finds a request
     t: <f8 per request (epoch seconds), latency_ms: <f4 per request (NaN: unknown),
     source: <u1 per request (index into sources),
     request: <i4 per record (index into request_ids, t, latency_ms, source),
     row: <i4 per record (its row in the request or upload),
     x: <f4 count × features (NaN: missing), p: <f4 count × classes (NaN: no prediction),
     y: <i2 per record (index into label_names; -1: no prediction)}

:func:`bucket` is the only writer, :func:`read_bucket` the only reader (a document that
is not such a bucket raises :class:`MalformedBucket`; the reports log and skip it), and
:func:`read_decisions` its lighter twin for feedback (no features, no probabilities).

The API imports this module only (for capture): no scipy, no matplotlib.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
from bson.binary import Binary

log = logging.getLogger(__name__)

INFERENCE_LOG = "inference_log"
# Live records read for one report (the newest first): bounds memory and time.
MAX_LIVE_RECORDS = 100_000


@dataclass(frozen=True)
class LiveSample:
    """Captured records of one version: a feature matrix (NaN = missing) and the labels."""

    features: tuple[str, ...]
    matrix: np.ndarray
    labels: list[str]

    @property
    def size(self) -> int:
        return len(self.labels)


BUCKET_FORMAT = 1


class Entry(NamedTuple):
    """One captured request as api/capture.py queues it (a tuple: cheap for a request to
    build, read by name here)."""

    t: float  # epoch seconds
    source: str  # the endpoint: "predict", "invocations", "batch"
    request_id: str
    latency_ms: float | None
    x: np.ndarray  # records × features
    labels: Sequence[str | None]  # None or "": no prediction
    p: np.ndarray  # records × classes, NaN: no prediction
    rows: Sequence[int] | np.ndarray | None  # the records' rows; None: 0..n-1


def bucket(
    name: str,
    version: int,
    features: Sequence[str],
    classes: Sequence[str],
    entries: Sequence[Entry],
) -> dict[str, Any]:
    """The ``inference_log`` document holding the captured requests ``entries`` of one
    version, as columns (the layout is in the module docstring). The only writer of buckets.

    Raises:
        ValueError: an entry's arrays do not match its labels, the features or the classes.
    """
    width, depth = len(features), len(classes)
    counts = [len(e.labels) for e in entries]
    count = sum(counts)
    # One numpy call per column, not per request: the writer shares the API worker's cores.
    x = _stacked([e.x for e in entries], count, width, "features")
    p = _stacked([e.p for e in entries], count, depth, "classes")
    starts = np.cumsum(counts) - counts
    rows = np.arange(count, dtype="<i4") - np.repeat(starts, counts).astype("<i4")
    for entry, first, n in zip(entries, starts.tolist(), counts, strict=True):
        if entry.rows is not None:  # batch rows: their row in the upload
            rows[first : first + n] = entry.rows
    label_names = list(classes)
    codes: dict[str | None, int] = {c: i for i, c in enumerate(label_names)}
    codes[None] = codes[""] = -1
    y_codes = []
    for entry in entries:
        for label in entry.labels:
            code = codes.get(label)
            if code is None:  # a label the version does not list: kept all the same
                code = codes[label] = len(label_names)
                label_names.append(str(label))
            y_codes.append(code)
    sources: dict[str, int] = {}
    source = [sources.setdefault(e.source, len(sources)) for e in entries]
    if len(sources) > 255:
        raise ValueError("more than 255 sources in one bucket")
    t = np.array([e.t for e in entries], dtype="<f8")
    latency = np.array(
        [np.nan if e.latency_ms is None else e.latency_ms for e in entries], dtype="<f4"
    )
    return {
        "name": name,
        "version": int(version),
        "at": datetime.fromtimestamp(float(t.min()), UTC) if t.size else datetime.now(UTC),
        "last_at": datetime.fromtimestamp(float(t.max()), UTC) if t.size else datetime.now(UTC),
        "count": count,
        "format": BUCKET_FORMAT,
        "features": list(features),
        "classes": list(classes),
        "label_names": label_names,
        "sources": list(sources),
        "request_ids": [str(e.request_id) for e in entries],
        "t": Binary(t.tobytes()),
        "latency_ms": Binary(latency.tobytes()),
        "source": Binary(np.array(source, dtype="<u1").tobytes()),
        "request": Binary(np.repeat(np.arange(len(entries), dtype="<i4"), counts).tobytes()),
        "row": Binary(rows.tobytes()),
        "x": Binary(x.tobytes()),
        "p": Binary(p.tobytes()),
        "y": Binary(np.array(y_codes, dtype="<i2").tobytes()),
    }


def _stacked(parts: list[np.ndarray], count: int, width: int, what: str) -> np.ndarray:
    """The requests' ``count × width`` arrays as one little-endian float32 array."""
    if not parts:
        return np.empty((0, width), dtype="<f4")
    stacked = np.concatenate(parts, axis=0, dtype="<f4", casting="same_kind")
    if stacked.shape != (count, width):
        raise ValueError(f"records of shape {stacked.shape[1:]} for {width} {what}")
    return stacked


class MalformedBucket(ValueError):
    """An ``inference_log`` document that is not a readable bucket."""


@dataclass(frozen=True)
class Bucket:
    """One bucket read back: per record its time, features, label, probabilities and the
    request it came from (columns, never a record dict)."""

    name: str
    version: int
    features: tuple[str, ...]
    classes: tuple[str, ...]
    at: np.ndarray  # float64 epoch seconds, per record
    x: np.ndarray  # float32 records × features, NaN = missing
    p: np.ndarray  # float32 records × classes, NaN = no prediction
    labels: list[str | None]  # None = no prediction
    rows: np.ndarray  # the record's row in its request or upload
    request: np.ndarray  # per record: its index into request_ids, sources, latency_ms
    request_ids: list[str]
    sources: list[str]  # per request
    latency_ms: np.ndarray  # float32 per request, NaN = unknown

    @property
    def count(self) -> int:
        return len(self.labels)

    def column(self, feature: str) -> np.ndarray:
        """One feature's values as float64 (all NaN when the bucket does not hold it)."""
        if feature in self.features:
            return self.x[:, self.features.index(feature)].astype(float)
        return np.full(self.count, np.nan)

    def records(self) -> Iterator[dict[str, Any]]:
        """The records as dicts (what an operator or a test reads; reports use columns)."""
        features, classes = self.features, self.classes
        for i in range(self.count):
            j = int(self.request[i])
            latency = float(self.latency_ms[j])
            label = self.labels[i]
            values, probabilities = self.x[i].tolist(), self.p[i].tolist()
            yield {
                "name": self.name,
                "version": self.version,
                "at": datetime.fromtimestamp(float(self.at[i]), UTC),
                "source": self.sources[j],
                "request_id": self.request_ids[j],
                "row": int(self.rows[i]),
                "features": {f: _finite(v) for f, v in zip(features, values, strict=True)},
                "label": label,
                "probabilities": (
                    {c: _finite(v) for c, v in zip(classes, probabilities, strict=True)}
                    if label is not None
                    else None
                ),
                "latency_ms": latency if np.isfinite(latency) else None,
            }


def read_bucket(doc: Mapping[str, Any]) -> Bucket:
    """A stored bucket's columns (``np.frombuffer`` of its bytes, never unpickled).

    Raises:
        MalformedBucket: not a bucket of this format, or its columns do not fit together.
    """
    try:
        return _read_bucket(doc)
    except MalformedBucket:
        raise
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise MalformedBucket(f"{type(exc).__name__}: {exc}") from None


def _read_bucket(doc: Mapping[str, Any]) -> Bucket:
    if doc.get("format") != BUCKET_FORMAT:
        raise MalformedBucket(
            f"format {doc.get('format')!r}, not {BUCKET_FORMAT}"
            + (" (a per-record bucket of an older release)" if "records" in doc else "")
        )
    count = int(doc["count"])
    features = _names(doc, "features")
    classes = _names(doc, "classes")
    label_names = _names(doc, "label_names")
    source_names = _names(doc, "sources")
    request_ids = _names(doc, "request_ids")
    requests = len(request_ids)
    t = _binary(doc, "t", "<f8", requests)
    latency = _binary(doc, "latency_ms", "<f4", requests)
    source = _binary(doc, "source", "<u1", requests)
    request = _binary(doc, "request", "<i4", count)
    y = _binary(doc, "y", "<i2", count)
    if count < 0 or (count and not requests):
        raise MalformedBucket(f"count {count} with {requests} request(s)")
    if request.size and (request.min() < 0 or request.max() >= requests):
        raise MalformedBucket("a record points to no request")
    if source.size and source.max() >= len(source_names):
        raise MalformedBucket("a request has no source name")
    if y.size and (y.min() < -1 or y.max() >= len(label_names)):
        raise MalformedBucket("a record's label is not among label_names")
    names: list[str | None] = [*label_names, None]  # code -1: the last, no prediction
    return Bucket(
        name=str(doc["name"]),
        version=int(doc["version"]),
        features=features,
        classes=classes,
        at=t[request],
        x=_binary(doc, "x", "<f4", count * len(features)).reshape(count, len(features)),
        p=_binary(doc, "p", "<f4", count * len(classes)).reshape(count, len(classes)),
        labels=[names[code] for code in y.tolist()],
        rows=_binary(doc, "row", "<i4", count),
        request=request,
        request_ids=list(request_ids),
        sources=[source_names[code] for code in source.tolist()],
        latency_ms=latency,
    )


# What :func:`read_decisions` needs of a bucket (a projection: no features, no probabilities).
DECISION_FIELDS = (
    "name",
    "version",
    "format",
    "count",
    "classes",
    "label_names",
    "request_ids",
    "t",
    "request",
    "row",
    "y",
)


@dataclass(frozen=True)
class Decisions:
    """A bucket's decisions without its features: per request its id and time, per record
    its request, its row in the request and the label the API answered (None: none)."""

    name: str
    version: int
    classes: tuple[str, ...]
    request_ids: list[str]
    t: np.ndarray  # float64 epoch seconds, per request
    request: np.ndarray  # per record: its index into request_ids and t
    rows: np.ndarray  # per record: its row in its request or upload
    labels: list[str | None]


def read_decisions(doc: Mapping[str, Any]) -> Decisions:
    """A bucket's decisions (``DECISION_FIELDS`` are enough): what feedback joins labels to.

    Raises:
        MalformedBucket: not a bucket of this format, or its columns do not fit together.
    """
    try:
        if doc.get("format") != BUCKET_FORMAT:
            raise MalformedBucket(f"format {doc.get('format')!r}, not {BUCKET_FORMAT}")
        count = int(doc["count"])
        request_ids = _names(doc, "request_ids")
        label_names = _names(doc, "label_names")
        request = _binary(doc, "request", "<i4", count)
        y = _binary(doc, "y", "<i2", count)
        if request.size and (request.min() < 0 or request.max() >= len(request_ids)):
            raise MalformedBucket("a record points to no request")
        if y.size and (y.min() < -1 or y.max() >= len(label_names)):
            raise MalformedBucket("a record's label is not among label_names")
        names: list[str | None] = [*label_names, None]
        return Decisions(
            name=str(doc["name"]),
            version=int(doc["version"]),
            classes=_names(doc, "classes"),
            request_ids=list(request_ids),
            t=_binary(doc, "t", "<f8", len(request_ids)),
            request=request,
            rows=_binary(doc, "row", "<i4", count),
            labels=[names[code] for code in y.tolist()],
        )
    except MalformedBucket:
        raise
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise MalformedBucket(f"{type(exc).__name__}: {exc}") from None


def _names(doc: Mapping[str, Any], field: str) -> tuple[str, ...]:
    value = doc[field]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedBucket(f"{field} is not a list of strings")
    return tuple(value)


def _binary(doc: Mapping[str, Any], field: str, dtype: str, size: int) -> np.ndarray:
    value = doc[field]
    if not isinstance(value, bytes):  # bson.Binary is bytes; anything else is refused
        raise MalformedBucket(f"{field} is not binary")
    if len(value) != size * np.dtype(dtype).itemsize:
        raise MalformedBucket(f"{field} holds {len(value)} bytes, not {size} × {dtype}")
    return np.frombuffer(value, dtype=dtype)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def buckets(
    db: Any, name: str, version: int | None = None, since: datetime | None = None
) -> Iterator[Bucket]:
    """The readable buckets of ``name`` (one version, with records since a time), newest
    first; a malformed one is logged and skipped, never failing a report."""
    query: dict[str, Any] = {"name": name}
    if version is not None:
        query["version"] = int(version)
    if since is not None:
        query["last_at"] = {"$gte": since}
    for doc in db[INFERENCE_LOG].find(query).sort("last_at", -1):
        try:
            yield read_bucket(doc)
        except MalformedBucket as exc:
            log.warning("%s document %s skipped: %s", INFERENCE_LOG, doc.get("_id"), exc)


def read_live(
    db: Any, name: str, version: int, features: Sequence[str], since: datetime
) -> LiveSample:
    """The version's captured records since ``since`` (the newest MAX_LIVE_RECORDS)."""
    cutoff = since.timestamp()
    parts: list[np.ndarray] = []
    labels: list[str] = []
    for b in buckets(db, name, version, since):
        keep = b.at >= cutoff
        columns = [b.column(f)[keep] for f in features]
        parts.append(np.stack(columns, axis=1) if columns else np.empty((int(keep.sum()), 0)))
        kept = keep.tolist()
        labels.extend(label or "" for label, k in zip(b.labels, kept, strict=True) if k)
        if len(labels) >= MAX_LIVE_RECORDS:
            break
    matrix = np.concatenate(parts) if parts else np.empty((0, len(features)))
    return LiveSample(tuple(features), matrix[:MAX_LIVE_RECORDS], labels[:MAX_LIVE_RECORDS])


def newest_capture(db: Any, name: str, version: int) -> Any:
    """The id of the version's newest captured bucket (None: none): a report or plot
    computed when this was newest still describes the data."""
    doc = db[INFERENCE_LOG].find_one(
        {"name": name, "version": int(version)}, {"_id": 1}, sort=[("last_at", -1), ("_id", -1)]
    )
    return None if doc is None else doc["_id"]


def count_captured(
    db: Any, name: str, version: int | None = None, since: datetime | None = None
) -> int:
    """Captured records of ``name`` (one version, since a time, when given)."""
    query: dict[str, Any] = {"name": name}
    if version is not None:
        query["version"] = int(version)
    if since is not None:
        query["last_at"] = {"$gte": since}
    total = 0
    for doc in db[INFERENCE_LOG].find(query, {"count": 1, "at": 1}):
        at, count = doc.get("at"), doc.get("count")
        if isinstance(count, int) and isinstance(at, datetime) and (since is None or at >= since):
            total += count
            continue
        # A bucket across the start of the window (or not a bucket): read its records.
        try:
            whole = read_bucket(db[INFERENCE_LOG].find_one({"_id": doc["_id"]}) or {})
        except MalformedBucket as exc:
            log.warning("%s document %s skipped: %s", INFERENCE_LOG, doc["_id"], exc)
            continue
        cutoff = since.timestamp() if since is not None else -np.inf
        total += int(np.count_nonzero(whole.at >= cutoff))
    return total
