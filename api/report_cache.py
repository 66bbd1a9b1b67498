"""Monitoring reports and plots, computed once at a time and kept for a short while.

Why: a drift report or a plot reads up to 100k captured records and runs the statistics
or matplotlib: ~1.45 s of CPU each with ~900k records captured (second hostile review).
Sixteen clients asking for plots, with no token needed, took the CPU from ``/predict``
(its p90 went from 6 ms to 2.1 s). Here a worker computes one report or plot at a time,
the same (model, version, what, window) is answered from memory for ``TTL_S`` seconds,
and a request that waited ``WAIT_S`` for its turn gets 503 with a retry hint instead of
queueing more work behind it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from registry_bridge.errors import RegistryError

EXTENSION = "reports"  # key in app.extensions: one cache per app, so per worker
TTL_S = 30.0  # a report is a view over hours; half a minute old is still that view
WAIT_S = 10.0  # longer than one computation takes, short enough to answer a person
MAX_ENTRIES = 64  # plots are ~30 kB: a few MB per worker at most


class ReportCache:
    """One per worker process: values by key, computed by one thread at a time."""

    def __init__(
        self,
        ttl_s: float = TTL_S,
        wait_s: float = WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self._clock = clock
        self._values: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._turn = threading.Lock()  # held while computing: one computation at a time

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value of ``key``, fresh within the TTL, computing it when needed.

        Raises:
            RegistryError: BUSY (503) when this worker was busy computing
                others for longer than ``wait_s``; whatever ``compute`` raises.
        """
        found = self._fresh(key)
        if found is not None:
            return found[1]
        if not self._turn.acquire(timeout=self.wait_s):
            raise RegistryError(
                "BUSY",
                "monitoring is busy computing other reports; retry in a few seconds",
            )
        try:
            found = self._fresh(key)  # computed by the thread this one waited for
            if found is not None:
                return found[1]
            value = compute()
            self._values[key] = (self._clock(), value)
            self._values.move_to_end(key)
            while len(self._values) > MAX_ENTRIES:
                self._values.popitem(last=False)
            return value
        finally:
            self._turn.release()

    def _fresh(self, key: Hashable) -> tuple[float, Any] | None:
        found = self._values.get(key)
        if found is not None and self._clock() - found[0] <= self.ttl_s:
            return found
        return None
