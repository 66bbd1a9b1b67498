"""Data capture: a sample of what the served version is asked and answers, kept for monitoring.

A sampled ``/predict`` or ``/invocations`` request (``capture.sample_percent``) and a
sample of ``/batch-predict`` rows become records ``{at, source, request_id, row,
features, label, probabilities, latency_ms}``, written to ``inference_log`` in bucket
documents (one per batch the writer takes, see :func:`registry_bridge.monitor.bucket`).
Those are patients' measurements: they are kept ``capture.retention_days`` days.

Nothing is written on the request path. The request only appends records to a bounded
in-memory queue (a deque: no lock, no thread woken); a background thread per worker
process looks for them twice a second and writes them in batches. A full queue drops
records and counts them (``api_capture_dropped_total``); a failing database loses the
batch and counts it (``api_capture_failed_total``): a capture problem never fails or
slows a prediction.

Retention: a TTL index on ``at``, and the writer thread also deletes expired records
itself every ``PURGE_INTERVAL_S``, so retention holds wherever the server's TTL monitor
does not run.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import re
import threading
import time
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
from registry_bridge.monitor import INFERENCE_LOG, bucket
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
        self._collection = db[INFERENCE_LOG]
        # A deque, not a queue.Queue: append/popleft need no lock and wake no thread, so a
        # request pays ~nothing; the writer polls instead. Its bound is checked by length.
        self._pending: deque[dict[str, Any]] = deque()
        self._in_flight = 0  # records taken by the writer and not yet written (or lost)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._next_purge = 0.0

    # --- request side: cheap, never raises ------------------------------------------

    def sampled(self) -> bool:
        """Whether this request is captured (decided once per request)."""
        return self.enabled and (self._share >= 1.0 or random.random() < self._share)

    def record_batch_rows(self, model: Any, scored: pa.RecordBatch) -> None:
        """Queue a sample of one scored /batch-predict chunk (each row drawn on its own).

        At most ``max_rows_per_request`` rows of one upload are kept, over all its chunks;
        a row whose cell was not a number is kept with that feature missing.
        """
        if not self.enabled:
            return
        try:
            self._record_batch_rows(model, scored)
        except Exception:  # capture must never fail a prediction
            log.exception("capture failed on a batch chunk; the prediction is unaffected")

    def _record_batch_rows(self, model: Any, scored: pa.RecordBatch) -> None:
        budget = g.get("capture_budget", self.settings.max_rows_per_request)
        n = scored.num_rows
        if budget <= 0 or n == 0:
            return
        if self._share >= 1.0:
            rows = np.arange(min(n, budget))
        else:
            rows = np.flatnonzero(np.random.random(n) < self._share)[:budget]
        g.capture_budget = budget - len(rows)
        if not len(rows):
            return
        table = scored.take(pa.array(rows)).to_pydict()
        features = model.schema.features
        classes = model.classes
        meta = self._meta("batch", model)
        for i, row in enumerate(rows.tolist()):
            label = table[PREDICTION][i]
            self._offer(
                {
                    **meta,
                    "row": row,
                    "features": {f: _number(table[f][i]) for f in features},
                    "label": label or None,
                    "probabilities": {c: _number(table[probability_column(c)][i]) for c in classes}
                    if label
                    else None,
                }
            )

    def record(
        self,
        source: str,
        model: Any,
        matrix: np.ndarray,
        labels: Sequence[str],
        probabilities: np.ndarray,
    ) -> None:
        """Queue the scored records of a sampled request (the first max_rows_per_request)."""
        try:
            limit = self.settings.max_rows_per_request
            # Slices and tolist(): the cheapest way out of numpy for the usual single record.
            values = matrix[:limit].tolist()
            probs = probabilities[:limit].tolist()
            if not values:
                return
            meta = self._meta(source, model)
            features = model.schema.features
            classes = model.classes
            for row, (value, prob) in enumerate(zip(values, probs, strict=True)):
                self._offer(
                    {
                        **meta,
                        "row": row,
                        "features": dict(zip(features, value, strict=True)),
                        "label": str(labels[row]),
                        "probabilities": dict(zip(classes, prob, strict=True)),
                    }
                )
        except Exception:  # capture must never fail a prediction
            log.exception("capture failed on %s; the prediction is unaffected", source)

    @staticmethod
    def _meta(source: str, model: Any) -> dict[str, Any]:
        """What every record of this request shares (a new dict per record is made from it)."""
        started = g.get("started")
        return {
            "name": model.name,
            "version": model.version,
            "at": datetime.now(UTC),
            "source": source,
            "request_id": _request_id(),
            "latency_ms": round((time.perf_counter() - started) * 1000, 3) if started else None,
        }

    def _offer(self, doc: dict[str, Any]) -> None:
        self._ensure_writer()
        if len(self._pending) >= self.settings.queue_size:
            CAPTURE_DROPPED.inc()
        else:
            self._pending.append(doc)

    # --- writer side ----------------------------------------------------------------

    def _ensure_writer(self) -> None:
        # Started lazily in the process that captures: gunicorn forks workers after import.
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
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
                time.sleep(POLL_S)
            batch = self._take()
            if batch:
                self._write(batch)
                self._in_flight = 0
            if time.monotonic() >= self._next_purge:
                self.purge()

    def _take(self) -> list[dict[str, Any]]:
        """Up to WRITE_BATCH queued records, oldest first."""
        batch: list[dict[str, Any]] = []
        pending = self._pending
        try:
            while len(batch) < WRITE_BATCH:
                batch.append(pending.popleft())
        except IndexError:
            pass
        self._in_flight = len(batch)
        return batch

    def _write(self, batch: list[dict[str, Any]]) -> None:
        """One bucket document per (name, version) of the batch (see registry_bridge.monitor)."""
        groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for record in batch:
            groups.setdefault((record.pop("name"), record.pop("version")), []).append(record)
        docs = [bucket(name, version, records) for (name, version), records in groups.items()]
        try:
            self._collection.insert_many(docs, ordered=False)
            CAPTURE_WRITTEN.inc(len(batch))
        except Exception as exc:  # the database is down or refuses: lose this batch, go on
            CAPTURE_FAILED.inc(len(batch))
            log.warning("capture: %d record(s) not written: %s", len(batch), str(exc)[:200])

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


def _number(value: Any) -> float | None:
    """A cell as a float, None when it is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def current() -> Capture:
    """The current app's capture."""
    return current_app.extensions[EXTENSION]


def _request_id() -> str:
    """The client's X-Request-Id when it is a plain token, else a new one; echoed in the answer."""
    rid = g.get("request_id")
    if rid is None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        # Not uuid4: os.urandom cost ~0.2 ms per call here, and an id needs no secrecy.
        rid = g.request_id = given if _CLIENT_ID.match(given) else f"{random.getrandbits(128):032x}"

        @after_this_request
        def _echo(response: Any) -> Any:
            response.headers[REQUEST_ID_HEADER] = rid
            return response

    return rid
