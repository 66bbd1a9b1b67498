"""Loaded versions cached per worker, per (name, version).

Loading (session, schema, outputs) is the scoring core's: ``registry_bridge.scoring``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from registry_bridge.scoring import LoadedModel, Prediction, load_model

__all__ = ["CACHE_SIZE", "LoadedModel", "Prediction", "SessionCache", "load_model"]

# Sessions kept per process: the active version, the one rolled back to, and a spare.
CACHE_SIZE = 4


class SessionCache:
    """Loaded versions per (name, version), least recently used dropped beyond CACHE_SIZE."""

    def __init__(self, size: int = CACHE_SIZE):
        self._size = size
        self._models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def peek(self, name: str, version: int) -> LoadedModel | None:
        """The loaded version, or None (no I/O: the hot path)."""
        return self._models.get((name, version))

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` loaded now (what the worker reports to the fleet)."""
        return sorted(v for n, v in list(self._models) if n == name)

    def get_or_load(
        self, name: str, version: int, loader: Callable[[], LoadedModel]
    ) -> LoadedModel:
        """The cached version, loading it once even when many threads ask at once."""
        key = (name, version)
        found = self._models.get(key)
        if found is not None:
            return found
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            found = self._models.get(key)
            if found is not None:
                return found
            model = loader()
            with self._lock:
                self._models[key] = model
                self._models.move_to_end(key)
                while len(self._models) > self._size:
                    self._models.popitem(last=False)
                self._loading.pop(key, None)
            return model
