"""Feedback: ground-truth labels joined to the requests the API captured.

A label names a request by the id its answer carried (``request_id``, ``X-Request-Id``)
and, for a request of several records, the record (its index in the request or its row
in a ``/batch-predict`` upload; default 0); the rows of a call are parsed and checked in
:mod:`.feedback_rows`. :func:`record_feedback` joins every label of a call to its
captured record in ``inference_log`` and stores it with the model name, the version,
the decision the API made, the time of the request and the time of the label. A call is
all or nothing: an unknown id, a label that is not a class of the version, a duplicate
(twice in the call, or labelled before) or a malformed row refuses the whole call with
INVALID_INPUT, one detail per row (``{"row", "request_id", "field", "problem"}``, rows
counted from 1), and nothing is stored.

The ``feedback`` collection is written here only. Like ``inference_log`` it is
**columnar**: one document per (call, name, version), so a quality report over 100,000
labels reads a few documents, not 100,000 (the embedded server's cost goes per element).
Layout (``format`` 1; little-endian numpy bytes in ``bson.Binary``, read back with
``np.frombuffer`` only)::

    {name, version, call,                  # call: one id per accepted call
     labelled_at, by,                      # BSON date of the call, who sent it
     first_at, last_at,                    # BSON dates: first and last request labelled
     count, format: 1,
     classes: [names],                     # the version's classes: codes index them
     keys: ["<request_id>#<record>", ...], # one per label; unique per name (index)
     at: <f8 per label (request time, epoch s), label: <i2 (code), decision: <i2 (-1: none)}

Uniqueness: a unique multikey index on ``(name, keys)`` refuses a label stored twice on
MongoDB; the embedded server does not enforce unique multikey indexes (docs/embedded-
mongo.md), so a call also looks, after its insert, for another call holding one of its
keys and withdraws itself if it finds one (of two racing calls at least the later one
withdraws; neither leaves a duplicate).

Plain numpy: the API's workers import this module.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from bson.binary import Binary
from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, PyMongoError

from registry_bridge.errors import RegistryError, first_line
from registry_bridge.monitoring.feedback_rows import (
    MAX_LABEL_CHARS,
    MAX_LABELS,
    LabelRow,
    echoed,
    refusal,
    row_problem,
    too_many,
)
from registry_bridge.monitoring.inference_log import (
    DECISION_FIELDS,
    INFERENCE_LOG,
    MalformedBucket,
    read_decisions,
)

log = logging.getLogger(__name__)

FEEDBACK = "feedback"
FORMAT = 1


@dataclass
class FeedbackResult:
    """What a call stored: labels per (name, version), and the unknown ids it skipped."""

    call: str
    stored: int
    versions: dict[tuple[str, int], int] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "stored": self.stored,
            "versions": [
                {"name": name, "version": version, "labels": n}
                for (name, version), n in sorted(self.versions.items())
            ],
            "skipped": self.skipped,
        }


# --- the join and the write ----------------------------------------------------------


@dataclass(frozen=True)
class _Captured:
    """One captured request a label may point to."""

    name: str
    version: int
    classes: tuple[str, ...]
    t: float
    rows: dict[int, str | None]  # record row -> the decision (None: no prediction)


_ensured: set[tuple[int, str]] = set()


def ensure_indexes(db: Any) -> None:
    """The indexes feedback needs (once per process and database; idempotent).

    ``inference_log.request_ids``: the join (a multikey index; MongoDB uses it for
    ``$in``, the embedded server scans, docs/embedded-mongo.md). ``feedback``: unique
    ``(name, keys)`` against duplicates, ``(name, last_at)`` for the quality reports.
    """
    key = (id(db.client), db.name)
    if key in _ensured:
        return
    db[INFERENCE_LOG].create_index("request_ids", name="request_ids")
    db[FEEDBACK].create_index(
        [("name", ASCENDING), ("keys", ASCENDING)], unique=True, name="name_keys_unique"
    )
    db[FEEDBACK].create_index([("name", ASCENDING), ("last_at", ASCENDING)], name="name_last_at")
    _ensured.add(key)


def record_feedback(
    db: Any,
    rows: Sequence[LabelRow],
    name: str | None = None,
    by: str | None = None,
    skip_unknown: bool = False,
    now: datetime | None = None,
) -> FeedbackResult:
    """Join ``rows`` to their captured requests and store them, all or nothing.

    Args:
        name: only requests captured for this model name (None: any name).
        skip_unknown: an id with no captured request is reported in ``skipped`` instead
            of refusing the call (capture keeps a sample; ``capture.sample_percent``).

    Raises:
        RegistryError: INVALID_INPUT with one detail per bad row (nothing stored),
            REGISTRY_UNAVAILABLE when the database fails (nothing stored).
    """
    call = uuid.uuid4().hex
    if not rows:
        raise RegistryError(
            "INVALID_INPUT", "no labels to store", [{"field": "labels", "problem": "empty"}]
        )
    if len(rows) > MAX_LABELS:
        raise too_many(len(rows))
    try:
        ensure_indexes(db)
        captured = _captured(db, {r.request_id for r in rows}, name)
        joined, problems, skipped = _join(rows, captured, name, skip_unknown)
        if not problems:
            problems = _already_labelled(db, joined)
        if problems:
            raise refusal(problems, len(rows))
        result = FeedbackResult(call, 0, skipped=skipped)
        if joined:
            _write(db, joined, call, by, now or datetime.now(UTC), result)
        return result
    except PyMongoError as exc:
        raise RegistryError(
            "REGISTRY_UNAVAILABLE",
            "the registry database refused the feedback; nothing was stored",
            operator_detail=f"({first_line(exc)})",
        ) from None


def _captured(db: Any, ids: set[str], name: str | None) -> dict[str, list[_Captured]]:
    """Every captured request carrying one of ``ids``, by id (one query, features left out)."""
    query: dict[str, Any] = {"request_ids": {"$in": sorted(ids)}}
    if name is not None:
        query["name"] = name
    found: dict[str, list[_Captured]] = {}
    for doc in db[INFERENCE_LOG].find(query, dict.fromkeys(DECISION_FIELDS, 1)):
        try:
            bucket = read_decisions(doc)
        except MalformedBucket as exc:
            log.warning("%s document %s skipped: %s", INFERENCE_LOG, doc.get("_id"), exc)
            continue
        rows_of: dict[int, dict[int, str | None]] = {}
        for j, row, label in zip(
            bucket.request.tolist(), bucket.rows.tolist(), bucket.labels, strict=True
        ):
            rows_of.setdefault(j, {})[row] = label
        for j, rid in enumerate(bucket.request_ids):
            if rid in ids:
                found.setdefault(rid, []).append(
                    _Captured(
                        bucket.name,
                        bucket.version,
                        bucket.classes,
                        float(bucket.t[j]),
                        rows_of.get(j, {}),
                    )
                )
    return found


@dataclass(frozen=True)
class _Joined:
    row: LabelRow
    name: str
    version: int
    classes: tuple[str, ...]
    t: float
    record: int
    decision: str | None

    @property
    def key(self) -> str:
        return f"{self.row.request_id}#{self.record}"


def _join(
    rows: Sequence[LabelRow],
    captured: Mapping[str, list[_Captured]],
    name: str | None,
    skip_unknown: bool,
) -> tuple[list[_Joined], list[dict[str, Any]], list[dict[str, Any]]]:
    """(joined rows, problems, skipped unknown ids) — a row has at most one problem."""
    joined: list[_Joined] = []
    problems: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    first_row: dict[tuple[str, str, int], int] = {}
    where = f" for {echoed(name, 100)}" if name else ""
    for row in rows:
        matches = captured.get(row.request_id, [])
        if not matches:
            problem = row_problem(
                row,
                "request_id",
                f"has no captured request{where} (unknown, not sampled by "
                "capture.sample_percent, or older than capture.retention_days)",
            )
            (skipped if skip_unknown else problems).append(problem)
            continue
        if len(matches) > 1:
            problems.append(
                row_problem(
                    row,
                    "request_id",
                    f"names {len(matches)} captured requests (a client reused its X-Request-Id)",
                )
            )
            continue
        found = matches[0]
        record = 0 if row.record is None else row.record
        if row.record is None and len(found.rows) > 1:
            problems.append(
                row_problem(
                    row,
                    "record",
                    f"is needed: the request has {len(found.rows)} captured records",
                )
            )
            continue
        if record not in found.rows:
            kept = sorted(found.rows)[:10]
            problems.append(
                row_problem(row, "record", f"{record} was not captured (captured: {kept})")
            )
            continue
        decision = found.rows[record]
        if row.label not in found.classes:
            problems.append(
                row_problem(
                    row,
                    "label",
                    f"{echoed(row.label, MAX_LABEL_CHARS)!r} is not a class of "
                    f"{echoed(found.name, 100)} v{found.version} "
                    f"({', '.join(found.classes)})",
                )
            )
            continue
        if decision is None:
            problems.append(
                row_problem(row, "record", "has no prediction to compare with (a bad cell)")
            )
            continue
        key = (found.name, row.request_id, record)
        if key in first_row:
            problems.append(
                row_problem(
                    row, "request_id", f"is labelled twice in this call (row {first_row[key]})"
                )
            )
            continue
        first_row[key] = row.row
        joined.append(
            _Joined(row, found.name, found.version, found.classes, found.t, record, decision)
        )
    return joined, problems, skipped


def _already_labelled(db: Any, joined: Sequence[_Joined]) -> list[dict[str, Any]]:
    """A problem per row whose record a stored call labelled already."""
    by_name: dict[str, dict[str, _Joined]] = {}
    for j in joined:
        by_name.setdefault(j.name, {})[j.key] = j
    problems = []
    for name, keyed in by_name.items():
        for doc in _holding(db, name, keyed, {"keys": 1, "labelled_at": 1}):
            at = doc.get("labelled_at")
            when = at.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(at, datetime) else "before"
            for key in set(doc.get("keys") or ()) & keyed.keys():
                problems.append(
                    row_problem(keyed[key].row, "request_id", f"is already labelled ({when})")
                )
    return sorted(problems, key=lambda p: p["row"])


def _holding(
    db: Any, name: str, keys: Iterable[str], projection: dict[str, int], other_than: str = ""
) -> Iterator[dict[str, Any]]:
    query: dict[str, Any] = {"name": name, "keys": {"$in": sorted(keys)}}
    if other_than:
        query["call"] = {"$ne": other_than}
    yield from db[FEEDBACK].find(query, projection)


def _write(
    db: Any,
    joined: Sequence[_Joined],
    call: str,
    by: str | None,
    now: datetime,
    result: FeedbackResult,
) -> None:
    """One document per (name, version); withdrawn whole on any failure or race."""
    groups: dict[tuple[str, int], list[_Joined]] = {}
    for j in joined:
        groups.setdefault((j.name, j.version), []).append(j)
    docs = [
        _document(name, version, items, call, by, now) for (name, version), items in groups.items()
    ]
    collection = db[FEEDBACK]
    try:
        collection.insert_many(docs, ordered=True)
        raced = []
        for name in {j.name for j in joined}:
            keyed = {j.key: j for j in joined if j.name == name}
            for doc in _holding(db, name, keyed, {"keys": 1}, other_than=call):
                raced += [keyed[k] for k in set(doc.get("keys") or ()) & keyed.keys()]
    except BaseException as exc:
        _withdraw(collection, call)
        if isinstance(exc, BulkWriteError):  # the unique index saw a concurrent call (MongoDB)
            raise RegistryError(
                "INVALID_INPUT",
                "another call labelled some of these records at the same time; nothing was "
                "stored (send the call again: the rows already labelled will be named)",
                [{"field": "labels", "problem": "labelled concurrently"}],
            ) from None
        raise
    if raced:
        _withdraw(collection, call)
        problems = [
            row_problem(j.row, "request_id", "was labelled by a concurrent call")
            for j in sorted(raced, key=lambda j: j.row.row)
        ]
        raise refusal(problems, len(joined))
    result.stored = len(joined)
    result.versions = {k: len(v) for k, v in groups.items()}
    log.info("feedback call %s: %d label(s) stored by %s", call, len(joined), by)


def _withdraw(collection: Any, call: str) -> None:
    try:
        collection.delete_many({"call": call})
    except PyMongoError as exc:  # reported by the caller's error; the log says what is left
        log.error("feedback call %s may be partly stored: %s", call, first_line(exc))


def _document(
    name: str, version: int, items: Sequence[_Joined], call: str, by: str | None, now: datetime
) -> dict[str, Any]:
    classes = list(items[0].classes)
    code = {c: i for i, c in enumerate(classes)}
    at = np.array([j.t for j in items], dtype="<f8")
    return {
        "name": name,
        "version": int(version),
        "call": call,
        "labelled_at": now,
        "by": by,
        "first_at": datetime.fromtimestamp(float(at.min()), UTC),
        "last_at": datetime.fromtimestamp(float(at.max()), UTC),
        "count": len(items),
        "format": FORMAT,
        "classes": classes,
        "keys": [j.key for j in items],
        "at": Binary(at.tobytes()),
        "label": Binary(np.array([code[j.row.label] for j in items], dtype="<i2").tobytes()),
        "decision": Binary(
            np.array([code.get(j.decision or "", -1) for j in items], dtype="<i2").tobytes()
        ),
    }


# --- reading back --------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """One version's labelled records in a window: class codes of the truth and of the
    decision (into ``classes``; -1: no decision)."""

    name: str
    version: int
    classes: tuple[str, ...]
    truth: np.ndarray
    decision: np.ndarray

    @property
    def count(self) -> int:
        return int(self.truth.size)


def read_labelled(
    db: Any, name: str, since: datetime, until: datetime, version: int | None = None
) -> dict[int, Labelled]:
    """Per version, the labels of requests made in [since, until) (a few documents read)."""
    # Documents whose newest request is in the window; each label's own time decides.
    query: dict[str, Any] = {"name": name, "last_at": {"$gte": since}}
    if version is not None:
        query["version"] = int(version)
    low, high = since.timestamp(), until.timestamp()
    parts: dict[int, tuple[tuple[str, ...], list[np.ndarray], list[np.ndarray]]] = {}
    for doc in db[FEEDBACK].find(query, {"keys": 0}):
        try:
            number, classes, truth, decision, at = _columns(doc)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s document %s skipped: %s", FEEDBACK, doc.get("_id"), exc)
            continue
        keep = (at >= low) & (at < high)
        known, truths, decisions = parts.setdefault(number, (classes, [], []))
        if classes != known:  # the same version lists the same classes; recode if not
            truth, decision = _recode(truth, classes, known), _recode(decision, classes, known)
        truths.append(truth[keep])
        decisions.append(decision[keep])
    return {
        number: Labelled(name, number, classes, np.concatenate(truths), np.concatenate(decisions))
        for number, (classes, truths, decisions) in parts.items()
    }


def labels_by_key(db: Any, name: str, since: datetime) -> dict[str, str]:
    """The true label of each labelled record of ``name`` requested since ``since``, by
    key (``<request_id>#<record>``): what the shadow comparison scores both versions on."""
    found: dict[str, str] = {}
    for doc in db[FEEDBACK].find({"name": name, "last_at": {"$gte": since}}):
        try:
            _, classes, truth, _, _ = _columns(doc)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s document %s skipped: %s", FEEDBACK, doc.get("_id"), exc)
            continue
        for key, code in zip(doc.get("keys") or (), truth.tolist(), strict=False):
            found[str(key)] = classes[code]
    return found


def _columns(
    doc: Mapping[str, Any],
) -> tuple[int, tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    if doc.get("format") != FORMAT:
        raise ValueError(f"format {doc.get('format')!r}, not {FORMAT}")
    count = int(doc["count"])
    classes = tuple(str(c) for c in doc["classes"])
    columns = []
    for key, dtype in (("label", "<i2"), ("decision", "<i2"), ("at", "<f8")):
        value = doc[key]
        if not isinstance(value, bytes) or len(value) != count * np.dtype(dtype).itemsize:
            raise ValueError(f"{key} does not hold {count} values")
        columns.append(np.frombuffer(value, dtype=dtype))
    truth, decision, at = columns
    if count and (truth.min() < 0 or max(truth.max(), decision.max()) >= len(classes)):
        raise ValueError("a code is not among classes")
    return int(doc["version"]), classes, truth.astype(np.int64), decision.astype(np.int64), at


def _recode(codes: np.ndarray, classes: Sequence[str], into: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(into)}
    table = np.array([index.get(c, -1) for c in classes] + [-1], dtype=np.int64)
    return table[codes]  # -1 (no decision) reads the last entry
