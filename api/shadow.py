"""Shadow traffic in a worker: a copy of the answered requests, scored by the shadow version
off the request path.

While ``bridge shadow NAME V --percent P`` runs (the pointer document holds it; every
worker reads it with the pointer), :func:`offer` is called once a request of NAME has
been answered by its active version (both request paths call it, like capture). For P %
of them it appends ONE tuple to a bounded deque: no lock, no thread woken, no copy (the
arrays are kept by reference). A full queue drops the copy and counts it: shadow work is
dropped, never a request delayed. A thread of the worker takes up to ``BATCH_ROWS``
records every ``POLL_S``, scores them with V in one onnxruntime call (a batch costs the
worker far less CPU than one call per request) and writes one ``shadow_log`` bucket
(registry_bridge/monitoring/shadow_log.py), which ``bridge compare`` reads.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from api.exit_hooks import on_exit, time_left
from api.metrics import SHADOW_DROPPED, SHADOW_SCORED
from registry_bridge.errors import first_line
from registry_bridge.monitoring import shadow_log
from registry_bridge.scoring import decide

log = logging.getLogger(__name__)

POLL_S = 0.2
BATCH_ROWS = 512
PURGE_INTERVAL_S = 3600.0


class ShadowQueue:
    """One name's copies waiting for the shadow version, and the thread that scores them."""

    def __init__(self, active: Any, size: int, retention_days: float):
        """Start scoring the copies of ``active``'s requests (an api.active.ActiveModel)."""
        self.active = active
        self.size = size
        self.retention = timedelta(days=retention_days)
        self.queued: deque[tuple[Any, ...]] = deque()
        self.dropped = 0
        self.scored = 0
        self._rows = 0  # records queued, under _lock (request threads and the scorer)
        self._lock = threading.Lock()
        self._purged_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"shadow-{active.name}", daemon=True)
        self._thread.start()
        on_exit(self.stop, signal=self._stop.set)
        try:
            shadow_log.ensure_indexes(active.store.db)
        except Exception as exc:  # the reports' index only; the thread retries nothing
            log.warning("shadow_log index not created: %s", first_line(exc))

    def offer(
        self,
        version: int,
        matrix: np.ndarray,
        labels: list[str],
        request_id: str,
        latency_ms: float,
    ) -> None:
        """Queue a copy (its arrays by reference), or drop it when the queue is full."""
        with self._lock:
            full = self._rows + len(labels) > self.size
            if not full:
                self._rows += len(labels)
        if full:
            self.dropped += 1
            SHADOW_DROPPED.labels(self.active.name).inc()
            return
        self.queued.append((version, matrix, labels, request_id, latency_ms))

    def stop(self) -> None:
        """Score what is queued, then stop (the worker is exiting; at most 5 s, or what is
        left of the worker's exit budget)."""
        self._stop.set()
        self._thread.join(timeout=time_left(5.0))

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        # What is queued now, in batches of at most BATCH_ROWS records; what arrives
        # meanwhile waits for the next poll. Draining until the queue was empty scored
        # batches of ~32 records back to back under load, one insert each (2 ms of CPU in
        # the worker and the database together): 18-21 % of /predict's throughput at 100 %
        # shadow, against ~0 with the scoring left out (bench.promotion, 2026-12-07).
        waiting = len(self.queued)
        while waiting:
            taken: list[tuple[Any, ...]] = []
            rows = 0
            while waiting and rows < BATCH_ROWS:
                item = self.queued.popleft()
                waiting -= 1
                taken.append(item)
                rows += len(item[2])
            with self._lock:
                self._rows -= rows
            try:
                self._score(taken)
            except Exception as exc:  # the shadow must never take the worker down
                log.warning("shadow batch of %s lost: %s", self.active.name, first_line(exc))

    def _score(self, taken: list[tuple[Any, ...]]) -> None:
        shadow = self.active.shadow
        if shadow is None:  # stopped meanwhile: nothing to compare with
            return
        model = self.active.load_version(int(shadow["version"]))
        matrix = np.concatenate([item[1] for item in taken])
        started = time.perf_counter()
        decision = decide(model, model.predict(matrix))
        per_record_ms = (time.perf_counter() - started) * 1000 / max(len(matrix), 1)
        classes = model.classes
        batch = shadow_log.ShadowBatch(
            name=self.active.name,
            active_version=max(item[0] for item in taken),
            shadow_version=model.version,
            features=tuple(model.schema.features),
            classes=classes,
            request_ids=[item[3] for item in taken],
            counts=np.array([len(item[2]) for item in taken], dtype=np.int32),
            active_ms=np.array([item[4] for item in taken], dtype=np.float32),
            active_codes=shadow_log.encode_labels(
                [label for item in taken for label in item[2]], classes
            ),
            shadow_codes=shadow_log.encode_labels(decision.labels.tolist(), classes),
            shadow_ms=per_record_ms,
            matrix=matrix,
        )
        now = datetime.now(UTC)
        shadow_log.write(self.active.store.db, batch, now)
        self.scored += len(matrix)
        SHADOW_SCORED.labels(self.active.name).inc(len(matrix))
        if time.monotonic() - self._purged_at > PURGE_INTERVAL_S:
            self._purged_at = time.monotonic()
            shadow_log.purge(self.active.store.db, now - self.retention)


def offer(
    served: Any,
    matrix: np.ndarray,
    labels: list[str],
    request_id: str,
    latency_ms: float,
) -> None:
    """Give the shadow a copy of an answered request, for its share (never raises)."""
    router = None if served is None else served.router
    if router is None or served is None or served.canary or served.stale:
        return
    shadow = router.shadow
    if shadow is None or random.random() * 100 >= float(shadow["percent"]):
        return
    try:
        router.shadow_queue().offer(served.model.version, matrix, labels, request_id, latency_ms)
    except Exception as exc:  # never fail an answered request for its copy
        log.warning("shadow copy of %s not queued: %s", router.name, first_line(exc))
