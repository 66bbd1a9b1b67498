"""Which model names this API serves, one leased pointer each, and pinned versions.

``ActiveModels`` holds one :class:`api.active.ActiveModel` per served name, created on
first use, so each name keeps the "next request after the acknowledgement" guarantee
of its own pointer. Every name shares one :class:`api.runtime.SessionCache` bounded by
``api.max_loaded_versions``: loading a version takes only that (name, version)'s gate,
so a request for another name never waits for it.

Served names: ``api.model_name`` always (``/predict`` serves it), plus ``api.models``
when set, else every registered name. Registered names are read at most once per
``NAMES_TTL_S`` (an unknown name asked in a loop must not cost a query per request).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pymongo

from api.active import CHECK_TIMEOUT_S, ActiveModel, Resolved
from api.runtime import SessionCache
from registry_bridge.errors import RegistryError, translate_driver_errors
from registry_bridge.scoring import model_from_version, shown
from registry_bridge.store import READY, ModelStore, checked_version

NAMES_TTL_S = 1.0


class ActiveModels:
    """The served names' resolvers (thread-safe)."""

    def __init__(
        self,
        store: ModelStore,
        default: str,
        listed: tuple[str, ...] = (),
        max_loaded_versions: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.cache = SessionCache(max_loaded_versions)
        self.listed = tuple(dict.fromkeys((default, *listed))) if listed else ()
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[str, ActiveModel] = {}
        self._registered: frozenset[str] = frozenset()
        self._registered_at = float("-inf")
        self.on_staged: Callable[[], None] | None = None  # the heartbeat's wake (api/fleet.py)
        self.default = self._create(default)
        for name in self.listed:
            self._create(name)

    def _create(self, name: str) -> ActiveModel:
        with self._lock:
            found = self._models.get(name)
            if found is None:
                found = self._models[name] = ActiveModel(self.store, name, self.cache)
                found.on_staged = self.on_staged
            return found

    def registered(self) -> frozenset[str]:
        """Names with a published version (read again at most once per NAMES_TTL_S).

        Raises:
            RegistryError: REGISTRY_UNAVAILABLE.
        """
        if self._clock() - self._registered_at > NAMES_TTL_S:
            names = _registered_names(self.store)
            self._registered, self._registered_at = frozenset(names), self._clock()
        return self._registered

    def names(self) -> list[str]:
        """Every served name, sorted (the registered ones too when api.models is unset)."""
        if self.listed:
            return sorted(self.listed)
        try:
            registered = self.registered()
        except RegistryError:
            registered = frozenset()
        return sorted(registered | set(self._models))

    def loaded(self) -> list[ActiveModel]:
        """The resolvers created so far in this worker (what the heartbeat reports)."""
        with self._lock:
            return list(self._models.values())

    def peek(self, name: str) -> ActiveModel | None:
        """The resolver of ``name`` if one exists already (no I/O: the event loop asks)."""
        return self._models.get(name)

    def find(self, name: str) -> ActiveModel | None:
        """The resolver of ``name`` if it is served, else None."""
        found = self._models.get(name)  # no lock: the hot path
        if found is not None:
            return found
        if self.listed or name not in self.registered():
            return None
        return self._create(name)

    def get(self, name: str) -> ActiveModel:
        """The resolver of a served ``name``.

        Raises:
            RegistryError: NOT_FOUND naming ``name`` (and what is served) when it is not
                served; REGISTRY_UNAVAILABLE when the names cannot be read.
        """
        found = self.find(name)
        if found is None:
            served = ", ".join(self.names()) or "none"
            raise RegistryError(
                "NOT_FOUND",
                f"model {shown(name)!r} is not served by this API (served: {served})",
                [{"field": "name", "problem": "not served"}],
            )
        return found

    def pinned(self, name: str, version: object) -> Resolved:
        """Version ``version`` of a served ``name``, whether active or not.

        The version document is read on every call, so a deleted version stops being
        served at once; its bytes are read and sha256-checked once, when loaded.

        Raises:
            RegistryError: NOT_FOUND (name not served, version missing or deleted),
                INVALID_INPUT (not a version number), REGISTRY_UNAVAILABLE.
        """
        self.get(name)
        number = checked_version(version)
        with pymongo.timeout(CHECK_TIMEOUT_S):
            meta = self.store.get_model_version(name, number)
        model = self.cache.peek(name, number)
        if model is None or model.sha256 != meta.sha256:
            model = self.cache.get_or_load(
                name, number, lambda: model_from_version(meta, self.store.artifacts.read(meta))
            )
        return Resolved(model, stale=False)


@translate_driver_errors
def _registered_names(store: ModelStore) -> list[str]:
    with pymongo.timeout(CHECK_TIMEOUT_S):
        return [str(name) for name in store.versions.distinct("name", {"status": READY})]
