"""``GET /fleet`` and each worker's heartbeat thread (the documents: registry_bridge/fleet.py).

The heartbeat runs off the request path, one daemon thread per API worker: every
``fleet.INTERVAL_S``, for every served name (so an idle name is reported too), it
refreshes the pointer (through the lease, so an idle worker still notices a staged
version), loads a staged version it does not have yet, and upserts that name's document.
A request that reads a staged mark wakes it at once, so under traffic a staged version
starts loading within one lease.
"""

from __future__ import annotations

import logging
import os
import threading

import pymongo
from flask import Blueprint, Response, jsonify, request

from api import registry
from api.active import ActiveModel
from api.exit_hooks import on_exit, time_left
from api.served import ActiveModels
from registry_bridge import fleet
from registry_bridge.entities import utcnow
from registry_bridge.errors import RegistryError, first_line
from registry_bridge.store import ModelStore

log = logging.getLogger(__name__)

bp = Blueprint("fleet", __name__)

# The longest a stopping worker waits to remove its document (pymongo's per-operation
# timeout, so a database that does not answer costs this, not its server selection).
FORGET_TIMEOUT_S = 1.0


@bp.get("/fleet")
def fleet_view() -> Response:
    """The workers serving ``?name=`` (default: this API's model) and whether they converged."""
    handle = registry()
    name = request.args.get("name") or handle.active.name
    return jsonify(fleet.summary(handle.store.db, name, handle.store.get_active_version(name)))


class Heartbeat:
    """One worker's reporter and background loader (a daemon thread)."""

    def __init__(self, store: ModelStore, models: ActiveModels, port: int | None):
        self.store = store
        self.models = models
        self.port = port
        self.host = fleet.this_host()
        self.pid = os.getpid()
        self.started_at = utcnow()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True)
        models.on_staged = self._wake.set
        for active in models.loaded():
            active.on_staged = self._wake.set

    def start(self) -> Heartbeat:
        """Start beating; the document is removed when the process exits normally."""
        self._thread.start()
        on_exit(self.stop, signal=self.signal_stop)
        return self

    def signal_stop(self) -> None:
        """Tell the thread to stop after its current beat (does not wait)."""
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        """Stop and remove this worker's document (best effort, within the worker's exit
        budget: a database that does not answer must not keep the worker from exiting)."""
        self.signal_stop()
        self._thread.join(timeout=time_left(5.0))
        left = time_left(FORGET_TIMEOUT_S)
        if left <= 0:
            return  # readers mark the document gone after GONE_AFTER_INTERVALS anyway
        try:
            with pymongo.timeout(left):
                fleet.forget(self.store.db, self.host, self.pid)
        except Exception as exc:  # the database may be gone at shutdown: it expires anyway
            log.debug("could not remove the heartbeat of %s: %s", self.pid, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the beat: a wake during it makes the next one at once
            try:
                self.beat()
            except Exception as exc:  # never let the thread die: the next beat retries
                log.warning("heartbeat failed: %s", first_line(exc))
            self._wake.wait(fleet.INTERVAL_S)

    def beat(self) -> None:
        """For every served name: refresh its pointer, load a staged version if needed,
        then report."""
        for name in self.models.names():
            self.models.find(name)  # a name registered since: its resolver, to report
        for active in self.models.loaded():
            self._beat(active)

    def _beat(self, active: ActiveModel) -> None:
        try:
            active.active_version()
        except RegistryError:
            pass  # reported as is; the request path marks its answers stale meanwhile
        # The canary's guardrails, judged on this worker's answers (registry_bridge/canary.py).
        try:
            active.guard_canary(by=f"guardrail on {self.host} pid {self.pid}")
        except RegistryError as exc:  # the database: judged again at the next beat
            log.warning("cannot end the canary of %s: %s", active.name, exc)
        canary = active.canary
        if (
            canary is not None
            and int(canary["version"]) not in active.loaded_versions()
            and int(canary["version"]) not in active.prepare_errors
        ):
            active.prepare(int(canary["version"]))  # off the request path, like a staged one
        staged = active.staged_version
        if (
            staged is not None
            and staged not in active.loaded_versions()
            and staged not in active.prepare_errors
        ):
            active.prepare(staged)
        fleet.report(
            self.store.db,
            fleet.heartbeat_document(
                self.host,
                self.pid,
                active.name,
                self.port,
                self.started_at,
                active.loaded_versions(),
                active.serving_version,
                active.requests,
                active.stale_answers,
                active.prepare_errors,
                canary=active.canary_report(),
            ),
        )
