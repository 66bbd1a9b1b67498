"""Loaded versions cached per worker, per (name, version), least recently used dropped.

Loading (session, schema, outputs) is the scoring core's: ``registry_bridge.scoring``.
A load holds only its own (name, version) gate, never the cache's lock, so requests for
every other version go on while one loads (a 30 MB graph takes a second or more).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from registry_bridge.scoring import LoadedModel, Prediction, load_model

__all__ = ["CACHE_SIZE", "LoadedModel", "Prediction", "SessionCache", "load_model"]

# Sessions kept per process by default (setting api.max_loaded_versions): the active
# version, the one rolled back to, and a spare, for two names.
CACHE_SIZE = 8


class SessionCache:
    """Loaded versions per (name, version), least recently used dropped beyond ``size``."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self._models: dict[tuple[str, int], LoadedModel] = {}
        # Last use per key: a counter bumped without a lock (a lost bump only makes the
        # order slightly approximate), read under the lock when one must go.
        self._used: dict[tuple[str, int], int] = {}
        self._tick = itertools.count()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def peek(self, name: str, version: int) -> LoadedModel | None:
        """The loaded version, or None (no I/O: the hot path); marks it used."""
        key = (name, version)
        found = self._models.get(key)
        if found is not None:
            self._used[key] = next(self._tick)
        return found

    def holds(self, name: str, version: int) -> bool:
        """Whether that version is loaded (no I/O, no bookkeeping)."""
        return (name, version) in self._models

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` loaded now (what the worker reports to the fleet)."""
        return sorted(v for n, v in list(self._models) if n == name)

    def get_or_load(
        self, name: str, version: int, loader: Callable[[], LoadedModel]
    ) -> LoadedModel:
        """The cached version, loading it once even when many threads ask at once."""
        found = self.peek(name, version)
        if found is not None:
            return found
        key = (name, version)
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            found = self._models.get(key)
            if found is not None:
                return found
            try:
                model = loader()
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:  # stored before its gate goes: no second load in between
                self._loading.pop(key, None)
                self._models[key] = model
                self._used[key] = next(self._tick)
                while len(self._models) > self.size:
                    oldest = min(self._models, key=lambda k: self._used.get(k, -1))
                    del self._models[oldest]
                    self._used.pop(oldest, None)
            return model
