"""Data capture: a sample of what the served version is asked and answers, kept for monitoring.

A sampled ``/predict`` or ``/invocations`` request (``capture.sample_percent``) and a
sample of ``/batch-predict`` rows are written to ``inference_log`` as columnar bucket
documents (one per version of each batch the writer takes; the layout and its only
writer, :func:`~registry_bridge.monitoring.inference_log.bucket`, are in
:mod:`registry_bridge.monitoring.inference_log`): per record its time, endpoint, request
id, row, features, label, probabilities and the request's latency. Those are patients'
measurements: they are kept ``capture.retention_days`` days.

Nothing is written, and almost nothing built, on the request path: :meth:`Capture.record`
appends ONE tuple per request (its arrays by reference, no dict, no datetime, no Flask:
a non-Flask hot path can call it) to a bounded in-memory queue (a deque: no lock, no
thread woken). A background thread per worker process looks for them twice a second and
turns a batch into columns. ``capture.queue_size`` bounds the queued records (one
request's records are queued or dropped together). A full queue drops records and counts
them (``api_capture_dropped_total``); a failing database loses the batch and counts it
(``api_capture_failed_total``): a capture problem never fails or slows a prediction.

Volume: each window of ``WINDOW_S`` seconds keeps at most its share of
``capture.max_records_per_minute`` (split between the instance's worker processes), drawn
uniformly from every record the window offered (:class:`WindowSample`, reservoir sampling
over rows). A flood therefore neither fills the disk nor decides which records drift
reads: its records and everyone else's in the same window have the same chance.

The request id is :func:`request_id`'s: the client's plain ``X-Request-Id``, else a new
one; the caller echoes it in the answer.

Retention: a TTL index on each bucket's ``last_at``, and the writer thread also deletes
expired buckets itself every ``PURGE_INTERVAL_S``, so retention holds wherever the
server's TTL monitor does not run.
"""

from __future__ import annotations

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

from api.exit_hooks import on_exit, time_left
from api.metrics import CAPTURE_DROPPED, CAPTURE_FAILED, CAPTURE_WRITTEN
from conf.settings import CaptureSettings
from registry_bridge.monitoring.inference_log import INFERENCE_LOG, Entry, bucket
from registry_bridge.scoring.columns import PREDICTION, probability_column

log = logging.getLogger(__name__)

WRITE_BATCH = 500  # documents per insert_many
POLL_S = 0.5  # the writer looks for queued records this often
PURGE_INTERVAL_S = 3600.0
EXIT_FLUSH_S = 3.0
# A window's sample is written when it closes, so this is how late a captured record can
# reach the database: short enough for a demo or a person watching the console, long
# enough that a window holds many requests to draw from.
WINDOW_S = 5.0
REQUEST_ID_HEADER = "X-Request-Id"
EXTENSION = "capture"  # key in app.extensions
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Capture:
    """One per worker process: the sampling decision, the queue and its writer thread."""

    def __init__(self, db: Any, settings: CaptureSettings, processes: int = 1):
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
        per_window = settings.max_records_per_minute * WINDOW_S / 60.0 / max(processes, 1)
        self._window = WindowSample(max(1, math.ceil(per_window)))
        self._window_ends = 0.0
        self._close_window = False  # flush(): write the open window now
        # The server forks workers after import: a child starts its own writer on first use.
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
                on_exit(lambda: self.flush(time_left(EXIT_FLUSH_S)))

    def _run(self) -> None:
        self._prepare()
        self._window_ends = time.monotonic() + WINDOW_S
        while True:
            if not self._pending:
                self._queued = 0  # see _offer
            # Sleep unless a full batch waits: going on at once would turn the few records
            # queued meanwhile into a batch of their own each time, for nothing.
            if self._queued < WRITE_BATCH:
                time.sleep(POLL_S)
            for model, entry in self._take():
                self._window.add(model, entry)
            self._in_flight = 0  # counted in the window's rows now
            if self._close_window or time.monotonic() >= self._window_ends:
                self._close_window = False
                self._window_ends = time.monotonic() + WINDOW_S
                self._in_flight = self._window.seen  # until written: see flush()
                sample = self._window.take()
                if sample:
                    self._write(sample)
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
        """One bucket document per (name, version) of the batch (the layout: inference_log)."""
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
        """Write every queued record and the open window's sample now (tests, shutdown);
        False when that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._pending and not self._in_flight:
                if not self._window.seen:
                    return True
                self._close_window = True  # once all is in the window: one window, one cap
            time.sleep(0.02)
        return False


class WindowSample:
    """A uniform sample of at most ``cap`` of the records offered in one window.

    Reservoir sampling (Vitter's algorithm R) over rows: the i-th row offered takes a
    slot with probability cap/i, in place of a slot drawn uniformly, so after any number
    of rows every one of them is in the sample with the same probability. Memory is the
    cap plus the requests still referenced by a slot, whatever the window's volume.
    """

    def __init__(self, cap: int, rng: np.random.Generator | None = None):
        self.cap = cap
        self.seen = 0  # rows offered since the last take()
        self._rng = rng or np.random.default_rng()
        self._entries: list[tuple[Any, Entry]] = []
        self._slot_entry = np.empty(cap, dtype=np.int64)
        self._slot_row = np.empty(cap, dtype=np.int64)

    def add(self, model: Any, entry: Entry) -> None:
        """Offer the rows of one request."""
        if len(entry.labels) == 1:
            self._add_one(model, entry)
        else:
            self._add_rows(model, entry)

    def _add_one(self, model: Any, entry: Entry) -> None:
        # One row, as most /predict requests: the draw _add_rows would make (the same
        # random stream, so the same sample), in plain Python. _add_rows' ten numpy calls
        # on 1-row arrays took ~6 % of a worker's GIL time at 100 % capture (py-spy, wrk
        # at 8 clients).
        seen = self.seen
        self.seen = seen + 1
        slot = seen if seen < self.cap else int(self._rng.integers(0, seen + 1))
        if slot < self.cap:
            self._slot_entry[slot] = len(self._entries)
            self._slot_row[slot] = 0
            self._entries.append((model, entry))

    def _add_rows(self, model: Any, entry: Entry) -> None:
        n = len(entry.labels)
        index = len(self._entries)
        fill = min(n, max(self.cap - self.seen, 0))  # free slots: taken in order
        slots = np.arange(self.seen, self.seen + fill)
        rows = np.arange(fill)
        if n > fill:  # row j is the (seen + j + 1)-th offered: a slot in [0, seen + j]
            later = np.arange(fill, n)
            drawn = self._rng.integers(0, self.seen + later + 1)
            keep = drawn < self.cap
            # Two rows drawing one slot: the later wins, as when drawn one at a time.
            reversed_slots = drawn[keep][::-1]
            unique, first = np.unique(reversed_slots, return_index=True)
            slots = np.concatenate([slots, unique])
            rows = np.concatenate([rows, later[keep][::-1][first]])
        self.seen += n
        if len(slots):
            self._slot_entry[slots] = index
            self._slot_row[slots] = rows
            self._entries.append((model, entry))

    def take(self) -> list[tuple[Any, Entry]]:
        """The sample, each request cut to its rows in the sample; the window starts again."""
        kept = min(self.seen, self.cap)
        by_entry: dict[int, list[int]] = {}
        for index, row in zip(self._slot_entry[:kept], self._slot_row[:kept], strict=True):
            by_entry.setdefault(int(index), []).append(int(row))
        sample = []
        for index, rows in sorted(by_entry.items()):
            model, entry = self._entries[index]
            sample.append((model, _rows_of(entry, sorted(rows))))
        self.seen = 0
        self._entries = []
        return sample


def _rows_of(entry: Entry, rows: list[int]) -> Entry:
    """``entry`` cut to ``rows`` (kept in order, each still naming its row in the request)."""
    if len(rows) == len(entry.labels):
        return entry
    picked = np.asarray(rows)
    original = np.arange(len(entry.labels)) if entry.rows is None else np.asarray(entry.rows)
    return entry._replace(
        x=entry.x[picked],
        labels=[entry.labels[i] for i in rows],
        p=entry.p[picked],
        rows=original[picked],
    )


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
