"""Always serve the active version: a leased read of the pointer, stale on outage.

A request is served from a read of ``registry_state`` (one ``find_one`` by ``_id``
through ``ModelStore.get_active_version``) that *began* at most one lease
(``api.pointer_lease_ms``, bounded by the ``lease_ms`` stored with the pointer) before
the request reached this code; otherwise it reads again. Activations and rollbacks
acknowledge only after that lease has passed since their write was acknowledged
(``registry_bridge/lease.py``), so a request that starts after ``POST /models/activate``
(or ``bridge activate``) returned is still served by the new version on every worker
and every API instance; no request fails during the switch: until the new session is
loaded the request that loads it simply waits. With a lease of 0 every request reads.

Concurrent requests of one worker share a read: when the lease has run out a request
waits for the read in flight if that one began within one lease before the request
arrived, else for the first read that *started after it arrived* (single-flight). Past
half its lease, a request still served from the read wakes a read-ahead thread that
renews it, so under steady traffic requests rarely wait for the database: a worker
issues about two reads per lease instead of one per request.

When the database does not answer within ``CHECK_TIMEOUT_S`` the loaded version keeps
serving, marked stale, and the database is not asked again for ``BACKOFF_S`` so an
outage does not add a timeout to every request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pymongo
from pymongo.errors import PyMongoError

from api.metrics import REGISTRY_READS
from api.runtime import LoadedModel, SessionCache
from registry_bridge.canary import MAX_KEY_CHARS, Window, breach, routes_to_canary
from registry_bridge.entities import ActiveState, ModelVersion
from registry_bridge.errors import RegistryError, first_line
from registry_bridge.lease import reuse_window_s
from registry_bridge.scoring import model_from_version
from registry_bridge.store import ModelStore

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

    from api.shadow import ShadowQueue

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 0.25
# Past this fraction of its lease a read is renewed in the background (still served meanwhile).
READ_AHEAD_AT = 0.5
BACKOFF_S = 1.0


class SharedRead:
    """Single-flight leased reads: each caller gets a read that began at most
    ``window(value)`` seconds before it called, else one that began after it called."""

    def __init__(
        self,
        read: Callable[[], Any],
        window: Callable[[Any], float] = lambda _: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._read = read
        self._window = window
        self._clock = clock
        self._cond = threading.Condition()
        self._started = 0  # reads begun so far
        self._done = 0  # number of the last finished read
        self._in_flight = False
        self._outcome: tuple[Any, BaseException | None] = (None, None)
        self._fresh: tuple[float, Any] | None = None  # (monotonic start, value) of the last success
        self._ahead: threading.Event | None = None  # wakes the read-ahead thread

    def __call__(self) -> Any:
        called = self._clock()
        fresh = self._fresh  # one attribute read: no lock on the hot path
        if fresh is not None:
            age, window = called - fresh[0], self._window(fresh[1])
            if age <= window:
                if age > window * READ_AHEAD_AT and not self._in_flight:
                    self._read_ahead()  # so that requests do not wait when the lease runs out
                return fresh[1]
        return self._shared(called)

    def peek(self) -> tuple[bool, Any]:
        """Whether a call now would return without reading (the last read's lease runs),
        and that read's value (None before one)."""
        fresh = self._fresh  # one attribute read: the pair is consistent
        if fresh is None:
            return False, None
        return self._clock() - fresh[0] <= self._window(fresh[1]), fresh[1]

    def _read_ahead(self) -> None:
        if self._ahead is None:  # started on first use: after the server forks the worker
            with self._cond:
                if self._ahead is None:
                    self._ahead = threading.Event()
                    threading.Thread(
                        target=self._ahead_loop, name="pointer-read-ahead", daemon=True
                    ).start()
        if not self._ahead.is_set():  # set() takes a lock and notifies: once is enough
            self._ahead.set()

    def _ahead_loop(self) -> None:
        assert self._ahead is not None
        while True:
            self._ahead.wait()
            self._ahead.clear()
            try:
                self._shared(None)
            except Exception:  # the request path meets and reports read failures itself
                pass

    def _shared(self, called: float | None) -> Any:
        """A read for a caller that came at ``called`` (None: a new read, the read-ahead's)."""
        with self._cond:
            wanted = self._started + 1  # the first read to begin after this call
            while True:
                if self._done >= wanted:
                    value, error = self._outcome
                    if error is not None:
                        raise error
                    return value
                fresh = self._fresh
                if called is not None and fresh is not None:
                    # A read in flight when the caller came, begun within its window before
                    # (the lease's rule): under load the read-ahead may end after the lease
                    # ran out, and its callers then wait for it, not for one more read.
                    if called - fresh[0] <= self._window(fresh[1]):
                        return fresh[1]
                if not self._in_flight:
                    self._started += 1
                    number = self._started
                    self._in_flight = True
                    break
                self._cond.wait()
        outcome: tuple[Any, BaseException | None]
        began = self._clock()
        try:
            outcome = (self._read(), None)
        except BaseException as exc:  # handed to every waiter, then re-raised here too
            outcome = (None, exc)
        with self._cond:
            self._done, self._outcome, self._in_flight = number, outcome, False
            if outcome[1] is None:
                self._fresh = (began, outcome[0])
            self._cond.notify_all()
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]


@dataclass(frozen=True)
class Resolved:
    """The version serving this request, and whether the registry could confirm it.

    While a canary runs, ``router`` is the name's resolver: :meth:`ActiveModel.route` sends
    the request to the canary for its share, and every answer is counted in its window.
    """

    model: LoadedModel
    stale: bool
    reason: str | None = None  # why it is stale
    canary: bool = False  # answered by the canary's version
    router: ActiveModel | None = None


def routing_key(header: str | None, body: bytes | bytearray) -> bytes | bytearray:
    """What a request is routed by: the client's ``X-Request-Key`` (bounded), else its body."""
    if header:
        return header[:MAX_KEY_CHARS].encode("utf-8", "replace")
    return body


class ActiveModel:
    """Resolves the active version of one model name for each request (thread-safe)."""

    def __init__(
        self,
        store: ModelStore,
        name: str,
        cache: SessionCache | None = None,
        check_timeout_s: float = CHECK_TIMEOUT_S,
        backoff_s: float = BACKOFF_S,
        lease_ms: int | None = None,
    ):
        self.store = store
        self.name = name
        self.cache = cache or SessionCache()
        self.check_timeout_s = check_timeout_s
        self.backoff_s = backoff_s
        self._current: LoadedModel | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.registry_reachable = True
        # The store's setting unless told otherwise: the same value it writes and waits for.
        self.lease_ms = getattr(store, "pointer_lease_ms", 0) if lease_ms is None else lease_ms
        self._read_pointer = SharedRead(self._read_active_state, self._reuse_window)
        # version -> monotonic time before which a failed load is not retried
        self._failed_until: dict[int, float] = {}
        self._failed_reason: dict[int, str] = {}  # repeated during the back-off
        # What the worker reports to the fleet (api/fleet.py), and prepare-then-switch:
        self._count_lock = threading.Lock()
        self.requests = 0  # requests that resolved the active version
        self.stale_answers = 0
        self.staged_version: int | None = None  # as last read with the pointer
        self.prepare_errors: dict[int, str] = {}  # staged versions that failed to load here
        self.on_staged: Callable[[], None] | None = None  # wakes the heartbeat (api/fleet.py)
        # The canary as last read with the pointer (registry_bridge/canary.py), and the
        # window of answers its guardrails judge (a canary answer counts for its version).
        self.canary: dict[str, Any] | None = None
        self.window = Window(store.canary_rules.window_s)
        # Shadow traffic as last read with the pointer, and its queue (api/shadow.py).
        self.shadow: dict[str, Any] | None = None
        self._shadow_queue: ShadowQueue | None = None
        self._seen: Any = object()  # the pointer read last taken in (_take_sides)

    @property
    def serving_version(self) -> int | None:
        """The version this worker last served (None before the first)."""
        current = self._current
        return None if current is None else current.version

    def _outage(self, exc: BaseException) -> RegistryError:
        with self._lock:
            if self.registry_reachable:
                log.warning(
                    "registry database unreachable, serving %s stale: %s",
                    self._current and f"{self.name} v{self._current.version}",
                    first_line(exc),
                )
            self.registry_reachable = False
            self._retry_at = time.monotonic() + self.backoff_s
        if isinstance(exc, RegistryError) and exc.code == "REGISTRY_UNAVAILABLE":
            return exc
        return RegistryError(
            "REGISTRY_UNAVAILABLE",
            f"the registry database is unreachable and no version of {self.name!r} is loaded",
        )

    def active_version(self) -> int | None:
        """The registry's active version number (one read, short timeout).

        Raises:
            RegistryError: REGISTRY_UNAVAILABLE (also raised without I/O during back-off).
        """
        if time.monotonic() < self._retry_at:
            raise RegistryError(
                "REGISTRY_UNAVAILABLE", "the registry database was unreachable moments ago"
            )
        try:
            state = self._read_pointer()
        except (PyMongoError, RegistryError) as exc:
            if isinstance(exc, RegistryError) and exc.code != "REGISTRY_UNAVAILABLE":
                raise
            raise self._outage(exc) from None
        if not self.registry_reachable:
            log.info("registry database reachable again")
            self.registry_reachable = True
        if state is not self._seen:  # a new read: what it says beside the active version
            self._seen = state
            self._take_sides(state)
        return None if state is None else state.active_version

    def _take_sides(self, state: ActiveState | None) -> None:
        """Keep what a new pointer read says beside the active version: the staged version,
        the canary and the shadow (once per read, not per request)."""
        canary = None if state is None else state.canary
        if (canary or {}).get("version") != (self.canary or {}).get("version"):
            self.window.clear()  # another canary (or none): its figures start afresh
        self.canary = canary
        self.shadow = None if state is None else state.shadow
        staged = None if state is None else state.staged_version
        if staged != self.staged_version:
            self.staged_version = staged
            if staged is not None:
                self.report_soon()  # the heartbeat thread loads it, off the request path

    def resolves_now(self) -> bool:
        """Whether :meth:`resolve` would answer without I/O: the pointer's lease runs and its
        version is loaded, or the registry is in back-off (the loaded version answers, stale).
        The event loop answers such a request inline (api/front.py); others go to a thread."""
        if time.monotonic() < self._retry_at:
            return self._current is not None
        fresh, state = self._read_pointer.peek()
        if not fresh:
            return False
        version = None if state is None else state.active_version
        if version is not None and not self.cache.holds(self.name, version):
            return False
        canary = None if state is None else state.canary
        # A canary's share would load its version on the event loop: not before it is loaded.
        return canary is None or self.cache.holds(self.name, int(canary["version"]))

    def _reuse_window(self, state: ActiveState | None) -> float:
        return reuse_window_s(self.lease_ms, state.lease_ms) if state is not None else 0.0

    def _read_active_state(self) -> ActiveState | None:
        REGISTRY_READS.inc()
        with pymongo.timeout(self.check_timeout_s):
            return self.store.get_active_version(self.name)

    def resolve(self) -> Resolved:
        """The version to serve now (counted for the fleet report).

        Raises:
            RegistryError: NO_ACTIVE_MODEL when no version is active, REGISTRY_UNAVAILABLE
                when the database is down and nothing is loaded.
        """
        with self._count_lock:
            self.requests += 1
        resolved = self._resolve()
        if resolved.stale:
            with self._count_lock:
                self.stale_answers += 1
        return resolved

    def _resolve(self) -> Resolved:
        current = self._current
        try:
            version = self.active_version()
        except RegistryError:
            if current is None:
                raise RegistryError(
                    "REGISTRY_UNAVAILABLE",
                    f"the registry database is unreachable and no version "
                    f"of {self.name!r} is loaded",
                ) from None
            return Resolved(current, stale=True, reason="the registry database is unreachable")
        if version is None:
            raise RegistryError(
                "NO_ACTIVE_MODEL",
                f"no version of {self.name!r} is active: activate one with "
                f"POST /models/activate or `bridge activate`",
            )
        model = self.cache.peek(self.name, version)
        if model is None:
            try:
                if time.monotonic() < self._failed_until.get(version, 0.0):
                    # Do not re-read a broken artifact on every request.
                    raise RegistryError(
                        "CONFLICT",
                        self._failed_reason.get(
                            version, f"{self.name} v{version} failed to load moments ago"
                        ),
                    )
                model = self.cache.get_or_load(self.name, version, lambda: self._load(version))
            except (PyMongoError, RegistryError) as exc:
                if isinstance(exc, PyMongoError) or exc.code == "REGISTRY_UNAVAILABLE":
                    exc = self._outage(exc)
                else:
                    if time.monotonic() >= self._failed_until.get(version, 0.0):
                        # A real load failed (not the back-off's repeat): retry after backoff_s.
                        self._failed_until[version] = time.monotonic() + self.backoff_s
                        self._failed_reason[version] = exc.message
                    # The client did nothing wrong: nothing servable is a 503, not a 409.
                    exc = RegistryError(
                        "NO_ACTIVE_MODEL",
                        f"the active version {self.name} "
                        f"v{version} cannot be served: {exc.message}",
                    )
                if current is None:
                    raise exc from None
                # Keep answering with the version we have rather than failing the switch.
                log.error(
                    "cannot load %s v%s, still serving v%s: %s",
                    self.name,
                    version,
                    current.version,
                    exc,
                )
                return Resolved(current, stale=True, reason=exc.message)
        self._current = model
        routed = self.canary is not None or self.shadow is not None
        return Resolved(model, stale=False, router=self if routed else None)

    def route(self, resolved: Resolved, key: bytes | bytearray) -> Resolved:
        """``resolved``, or the canary's version for the requests whose ``key`` falls in its
        share (sticky: one key, one version). A canary that cannot be loaded is skipped (the
        active version answers) and reported by the heartbeat like a staged version."""
        canary = self.canary
        if canary is None or resolved.stale or resolved.canary:
            return resolved
        if not routes_to_canary(key, float(canary["percent"])):
            return resolved
        version = int(canary["version"])
        try:
            model = self.cache.get_or_load(self.name, version, lambda: self._load(version))
        except (PyMongoError, RegistryError) as exc:
            self.prepare_errors.setdefault(version, first_line(exc))
            return resolved
        return Resolved(model, stale=False, canary=True, router=self)

    def shadow_queue(self) -> ShadowQueue:
        """This name's shadow queue and scorer thread, started on first use."""
        queue = self._shadow_queue
        if queue is None:
            from api.shadow import ShadowQueue

            with self._lock:
                if self._shadow_queue is None:
                    self._shadow_queue = ShadowQueue(
                        self, self.store.shadow_queue_records, self.store.capture_retention_days
                    )
                queue = self._shadow_queue
        return queue

    def canary_report(self) -> dict[str, Any] | None:
        """What this worker routes to the canary, for ``bridge fleet``: its version and share,
        and both versions' figures over the window."""
        canary, current = self.canary, self._current
        if canary is None:
            return None
        now = time.monotonic()
        version = int(canary["version"])
        report = {"version": version, "percent": canary["percent"]}
        report["canary"] = self.window.figures(version, now).__dict__
        if current is not None:
            report["active"] = self.window.figures(current.version, now).__dict__
        return report

    def guard_canary(self, by: str) -> str | None:
        """Apply the canary's guardrails to this worker's window (the heartbeat's call):
        on a breach, end the canary for every worker; the breach, or None."""
        canary, current = self.canary, self._current
        if canary is None or current is None:
            return None
        now = time.monotonic()
        version = int(canary["version"])
        ours, theirs = self.window.figures(version, now), self.window.figures(current.version, now)
        why = breach(ours, theirs, self.store.canary_rules)
        if why is None:
            return None
        figures = {
            "canary": {"version": version, **ours.__dict__},
            "active": {"version": current.version, **theirs.__dict__},
        }
        log.warning("canary %s v%s breached its guardrail: %s", self.name, version, why)
        self.store.end_canary(
            self.name, by=by, reason=f"guardrail: {why}", version=version, figures=figures
        )
        self.canary = None
        return why

    def _load(self, version: int) -> LoadedModel:
        meta = self.store.get_model_version(self.name, version)
        data = self.store.artifacts.read(meta)  # sha256-checked there
        return model_from_version(meta, data)

    def load_version(self, version: int) -> LoadedModel:
        """Load (or reuse) one version, e.g. to warm it before it is activated."""
        return self.cache.get_or_load(self.name, version, lambda: self._load(version))

    def report_soon(self) -> None:
        """Wake the heartbeat thread (a staged version to load, or a load to report)."""
        if self.on_staged is not None:
            self.on_staged()

    def loaded_versions(self) -> list[int]:
        """The versions of this model loaded in this worker."""
        return self.cache.versions(self.name)

    def prepare(self, version: int) -> None:
        """Load a staged version ahead of the switch (bytes verified, session built, one
        warm-up prediction); a failure is kept in ``prepare_errors`` for the fleet report."""
        try:
            self.load_version(version)
        except RegistryError as exc:
            if exc.code == "REGISTRY_UNAVAILABLE":
                return  # not the version's fault: tried again at the next heartbeat
            self.prepare_errors[version] = exc.message
            log.error("cannot prepare %s v%s: %s", self.name, version, exc.message)

    def load_session(self, meta: ModelVersion) -> InferenceSession:
        """The activation's loader (``ModelStore.validate_model_version``): ``meta`` loaded
        into this worker's cache, so validating it builds no second session, and the
        heartbeat woken to report it loaded before the store stages it."""
        model = self.load_version(meta.version)
        self.report_soon()
        return model.session
