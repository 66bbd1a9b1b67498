"""Data capture: a sample of what the served version is asked and answers, kept for monitoring.

A sampled ``/predict`` or ``/invocations`` request (``capture.sample_percent``) and a
sample of ``/batch-predict`` rows are written to ``inference_log`` as columnar bucket
documents (one per version of each batch the writer takes; the layout is in
:mod:`registry_bridge.monitor`, whose :func:`~registry_bridge.monitor.bucket` builds them):
per record its time, endpoint, request id, row, features, label, probabilities and the
request's latency. Those are patients' measurements: they are kept
``capture.retention_days`` days.

Nothing is written, and almost nothing built, on the request path: :meth:`Capture.record`
appends ONE tuple per request (its arrays by reference, no dict, no datetime, no Flask:
a non-Flask hot path can call it) to a bounded in-memory queue (a deque: no lock, no
thread woken). A background thread per worker process looks for them twice a second and
turns a batch into columns. ``capture.queue_size`` bounds the queued records (one
request's records are queued or dropped together). A full queue drops records and counts
them (``api_capture_dropped_total``); a failing database loses the batch and counts it
(``api_capture_failed_total``): a capture problem never fails or slows a prediction.

The request id is :func:`request_id`'s: the client's plain ``X-Request-Id``, else a new
one; the caller echoes it in the answer.

Retention: a TTL index on each bucket's ``last_at``, and the writer thread also deletes
expired buckets itself every ``PURGE_INTERVAL_S``, so retention holds wherever the
server's TTL monitor does not run.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from flask import after_this_request, current_app, g, request
from pymongo import ASCENDING

from api.metrics import CAPTURE_DROPPED, CAPTURE_FAILED, CAPTURE_WRITTEN
from conf.settings import CaptureSettings
from registry_bridge.monitor import INFERENCE_LOG, Entry, bucket
from registry_bridge.scoring.columns import PREDICTION, probability_column

log = logging.getLogger(__name__)

WRITE_BATCH = 500  # documents per insert_many
POLL_S = 0.5  # the writer looks for queued records this often
PURGE_INTERVAL_S = 3600.0
EXIT_FLUSH_S = 3.0
REQUEST_ID_HEADER = "X-Request-Id"
EXTENSION = "capture"  # key in app.extensions
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Capture:
    """One per worker process: the sampling decision, the queue and its writer thread."""

    def __init__(self, db: Any, settings: CaptureSettings):
        self.settings = settings
        self.enabled = settings.sample_percent > 0
        self._share = settings.sample_percent / 100.0
        self._limit = settings.max_rows_per_request
        self._queue_size = settings.queue_size
        self._collection = db[INFERENCE_LOG]
        # A deque, not a queue.Queue: append/popleft need no lock and wake no thread, so a
        # request pays ~nothing; the writer polls instead. One (model, Entry) per request:
        # the writer groups by the model's name and version and reads its features there.
        self._pending: deque[tuple[Any, Entry]] = deque()
        self._queued = 0  # records in _pending (bounded by queue_size)
        self._in_flight = 0  # records taken by the writer and not yet written (or lost)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._next_purge = 0.0
        # gunicorn forks workers after import: a child starts its own writer on first use.
        os.register_at_fork(after_in_child=functools.partial(_forget_writer, weakref.ref(self)))

    # --- request side: cheap, never raises ------------------------------------------

    def sampled(self) -> bool:
        """Whether this request is captured (decided once per request)."""
        return self.enabled and (self._share >= 1.0 or random.random() < self._share)

    def record(
        self,
        source: str,
        model: Any,
        matrix: np.ndarray,
        labels: Sequence[str],
        probabilities: np.ndarray,
        *,
        request_id: str,
        latency_ms: float | None,
    ) -> None:
        """Queue the scored records of a sampled request (the first max_rows_per_request).

        ``matrix`` and ``probabilities`` are kept by reference: the caller must not change
        them afterwards. No Flask: any hot path may call it. Never raises.
        """
        try:
            n = len(labels)
            if len(matrix) != n or len(probabilities) != n:
                raise ValueError(
                    f"{len(matrix)} rows, {n} labels and {len(probabilities)} probability rows"
                )
            if n > self._limit:
                n = self._limit
                matrix, labels, probabilities = matrix[:n], labels[:n], probabilities[:n]
            elif not n:
                return
            self._offer(
                n,
                model,
                Entry(
                    time.time(), source, request_id, latency_ms, matrix, labels, probabilities, None
                ),
            )
        except Exception:  # capture must never fail a prediction
            log.exception("capture failed on %s; the prediction is unaffected", source)

    def record_batch_rows(self, model: Any, scored: pa.RecordBatch) -> None:
        """Queue a sample of one scored /batch-predict chunk (each row drawn on its own).

        At most ``max_rows_per_request`` rows of one upload are kept, over all its chunks
        (counted in Flask's ``g``); a row whose cell was not a number is kept with that
        feature missing and without a prediction.
        """
        if not self.enabled:
            return
        try:
            self._record_batch_rows(model, scored)
        except Exception:  # capture must never fail a prediction
            log.exception("capture failed on a batch chunk; the prediction is unaffected")

    def _record_batch_rows(self, model: Any, scored: pa.RecordBatch) -> None:
        budget = g.get("capture_budget", self._limit)
        first = g.get("capture_rows_seen", 0)  # the chunk's first row in the upload
        n = scored.num_rows
        g.capture_rows_seen = first + n
        if budget <= 0 or n == 0:
            return
        if self._share >= 1.0:
            rows = np.arange(min(n, budget))
        else:
            rows = np.flatnonzero(np.random.random(n) < self._share)[:budget]
        g.capture_budget = budget - len(rows)
        if not len(rows):
            return
        taken = scored.take(pa.array(rows))
        matrix = np.column_stack(
            [_numbers(taken.column(f)) for f in model.schema.features]
        ).reshape(len(rows), len(model.schema.features))
        labels = [label or None for label in taken.column(PREDICTION).to_pylist()]
        probabilities = np.column_stack(
            [_numbers(taken.column(probability_column(c))) for c in model.classes]
        ).reshape(len(rows), len(model.classes))
        probabilities[[label is None for label in labels]] = np.nan
        latency = g.get("started")
        self._offer(
            len(rows),
            model,
            Entry(
                time.time(),
                "batch",
                flask_request_id(),
                (time.perf_counter() - latency) * 1000 if latency else None,
                matrix,
                labels,
                probabilities,
                rows + first,
            ),
        )

    def _offer(self, n: int, model: Any, entry: Entry) -> None:
        if self._thread is None:
            self._start_writer()
        if self._queued >= self._queue_size:
            CAPTURE_DROPPED.inc(n)
            return
        # Not atomic under every interpreter; the writer resets it whenever the queue is
        # empty, so a lost update only moves the bound a little, and not for long.
        self._queued += n
        self._pending.append((model, entry))

    # --- writer side ----------------------------------------------------------------

    def _start_writer(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="capture-writer", daemon=True
                )
                self._thread.start()
                # A worker stopping normally writes what is queued (bounded wait).
                atexit.register(self.flush, EXIT_FLUSH_S)

    def _run(self) -> None:
        self._prepare()
        while True:
            if not self._pending:
                self._queued = 0  # see _offer
            # Sleep unless a full batch waits, even right after a write: going on at once
            # would write the few records queued meanwhile as one small bucket each time,
            # and the server's cost is per document as much as per record.
            if self._queued < WRITE_BATCH:
                time.sleep(POLL_S)
            batch = self._take()
            if batch:
                self._write(batch)
                self._in_flight = 0
            if time.monotonic() >= self._next_purge:
                self.purge()

    def _take(self) -> list[tuple[Any, Entry]]:
        """Queued requests, oldest first, up to WRITE_BATCH records (at least one request)."""
        batch: list[tuple[Any, Entry]] = []
        pending = self._pending
        taken = 0
        try:
            while taken < WRITE_BATCH:
                queued = pending.popleft()
                batch.append(queued)
                taken += len(queued[1].labels)
        except IndexError:
            pass
        self._in_flight = taken
        self._queued -= taken
        return batch

    def _write(self, batch: list[tuple[Any, Entry]]) -> None:
        """One bucket document per (name, version) of the batch (see registry_bridge.monitor)."""
        records = sum(len(entry.labels) for _, entry in batch)
        try:
            groups: dict[tuple[str, int], tuple[Any, list[Entry]]] = {}
            for model, entry in batch:
                groups.setdefault((model.name, model.version), (model, []))[1].append(entry)
            docs = [
                bucket(model.name, model.version, model.schema.features, model.classes, entries)
                for model, entries in groups.values()
            ]
            self._collection.insert_many(docs, ordered=False)
            CAPTURE_WRITTEN.inc(records)
        except Exception as exc:  # the database is down or refuses: lose this batch, go on
            CAPTURE_FAILED.inc(records)
            log.warning("capture: %d record(s) not written: %s", records, str(exc)[:200])

    def _prepare(self) -> None:
        """Indexes for the reports and the TTL (best effort: the API runs without them)."""
        retention = int(self.settings.retention_days * 86400)
        try:
            self._collection.create_index(
                [("name", ASCENDING), ("version", ASCENDING), ("last_at", ASCENDING)],
                name="name_version_last_at",
            )
            self._collection.create_index(
                "last_at", expireAfterSeconds=retention, name="last_at_ttl"
            )
        except Exception as exc:
            log.info("capture: indexes not created (%s); purging by query only", str(exc)[:200])

    def purge(self) -> int:
        """Delete buckets whose newest record is older than the retention; returns how many."""
        self._next_purge = time.monotonic() + PURGE_INTERVAL_S
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.retention_days)
        try:
            return int(self._collection.delete_many({"last_at": {"$lt": cutoff}}).deleted_count)
        except Exception as exc:
            log.warning("capture: expired records not purged: %s", str(exc)[:200])
            return 0

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record was written or failed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._pending and not self._in_flight:
                return True
            time.sleep(0.02)
        return False


def _forget_writer(ref: weakref.ref[Capture]) -> None:
    """In a forked child: the parent's writer thread is not there."""
    capture = ref()
    if capture is not None:
        capture._thread = None
        capture._lock = threading.Lock()


def _numbers(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A batch column (text or numbers) as float64, NaN where a cell is not a finite number."""
    return np.array([_number(v) for v in column.to_pylist()], dtype=np.float64)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number if math.isfinite(number) else float("nan")


def current() -> Capture:
    """The current app's capture."""
    return current_app.extensions[EXTENSION]


def request_id(given: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a plain token, else a new one."""
    if given and _CLIENT_ID.match(given):
        return given
    # Not uuid4: os.urandom cost ~0.2 ms per call here, and an id needs no secrecy.
    return f"{random.getrandbits(128):032x}"


def flask_request_id() -> str:
    """This Flask request's id (made once, echoed in the answer as X-Request-Id)."""
    rid = g.get("request_id")
    if rid is None:
        rid = g.request_id = request_id(request.headers.get(REQUEST_ID_HEADER))

        @after_this_request
        def _echo(response: Any) -> Any:
            response.headers[REQUEST_ID_HEADER] = rid
            return response

    return rid
