"""What every API worker serves: one heartbeat document per worker and served model name
in ``serving_workers``.

Each API worker upserts its documents about every ``INTERVAL_S`` seconds from a
background thread (``api/fleet.py``), never from the request path. Readers (``bridge
fleet``, ``GET /fleet``, activation waiting for workers to load a staged version) call
:func:`list_workers`, which marks a document older than ``GONE_AFTER_INTERVALS``
intervals as gone and removes it. No TTL index: the embedded server has none, and a
TTL monitor runs only once a minute on MongoDB anyway.

``last_seen`` is the worker's wall-clock time (UTC); judging "gone" compares it with
the reader's clock, so machines sharing a registry need clocks within a second or so
(NTP), far less than the 6 s it takes to call a worker gone.

This module only reads the pointer's state as it is handed over: staging a version (the
``staged_version`` of ``registry_state``) is the store's (``ModelStore.stage_version``),
which owns that collection.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo.database import Database

from registry_bridge.entities import ActiveState, ModelVersion, json_safe, utcnow
from registry_bridge.errors import RegistryError

COLLECTION = "serving_workers"
INTERVAL_S = 2.0
GONE_AFTER_INTERVALS = 3
PREPARE_POLL_S = 0.05


def worker_id(host: str, pid: int) -> str:
    """How one worker process is named (``host:pid``)."""
    return f"{host}:{pid}"


def document_id(host: str, pid: int, model: str) -> str:
    """The document ``_id`` of one worker's report on one model name (a worker serves
    several names, each reported on its own)."""
    return f"{worker_id(host, pid)}:{model}"


def this_host() -> str:
    """The name this machine's workers report."""
    return socket.gethostname()


def report(db: Database, doc: Mapping[str, Any]) -> None:
    """Upsert one worker's heartbeat (the whole document, so dates stay BSON dates)."""
    db[COLLECTION].replace_one({"_id": doc["_id"]}, dict(doc), upsert=True)


def forget(db: Database, host: str, pid: int) -> None:
    """Remove one worker's documents (it is shutting down)."""
    db[COLLECTION].delete_many({"host": host, "pid": pid})


def _age_s(last_seen: Any, now: datetime) -> float:
    if not isinstance(last_seen, datetime):  # unreadable date: treat as long gone
        return float("inf")
    if last_seen.tzinfo is None:
        last_seen = last_seen.replace(tzinfo=now.tzinfo)
    return (now - last_seen).total_seconds()


def list_workers(
    db: Database,
    name: str | None = None,
    active: Mapping[str, int | None] | None = None,
    now: datetime | None = None,
    remove_gone: bool = True,
) -> list[dict[str, Any]]:
    """Every worker's last heartbeat (of model ``name``, or all), oldest first.

    Each entry gets ``gone`` (no heartbeat for ``GONE_AFTER_INTERVALS`` intervals),
    ``age_s`` and, when ``active`` maps its model to the active version, ``converged``
    (serving that version). Gone workers are listed once more, then removed.
    """
    now = now or utcnow()
    limit = INTERVAL_S * GONE_AFTER_INTERVALS
    query = {} if name is None else {"model": name}
    workers: list[dict[str, Any]] = []
    gone: list[tuple[str, Any]] = []
    for doc in db[COLLECTION].find(query):
        entry = {k: v for k, v in doc.items() if k != "_id"}
        age = _age_s(doc.get("last_seen"), now)
        entry["age_s"] = round(age, 1) if age != float("inf") else None
        entry["gone"] = age > limit
        if active is not None:
            wanted = active.get(str(doc.get("model")))
            entry["converged"] = wanted is not None and doc.get("serving_version") == wanted
        if entry["gone"]:
            gone.append((doc["_id"], doc.get("last_seen")))
        workers.append(entry)
    if remove_gone:
        for key, seen in gone:
            # Only that heartbeat: a worker that reported meanwhile keeps its document.
            db[COLLECTION].delete_one({"_id": key, "last_seen": seen})
    workers.sort(key=lambda w: (str(w.get("model")), str(w.get("host")), w.get("pid") or 0))
    return workers


def live(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workers not gone."""
    return [w for w in workers if not w["gone"]]


def to_json(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-safe copies (dates as ISO 8601 text)."""
    return [{k: json_safe(v) for k, v in w.items()} for w in workers]


def heartbeat_document(
    host: str,
    pid: int,
    model: str,
    port: int | None,
    started_at: datetime,
    loaded_versions: list[int],
    serving_version: int | None,
    requests: int,
    stale_answers: int,
    load_errors: Mapping[int, str] | None = None,
    canary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The document one worker reports (the contract of ``bridge fleet --json``)."""
    return {
        "_id": document_id(host, pid, model),
        "host": host,
        "pid": pid,
        "port": port,
        "model": model,
        "loaded_versions": sorted(loaded_versions),
        "serving_version": serving_version,
        "requests": requests,
        "stale_answers": stale_answers,
        "load_errors": [
            {"version": v, "reason": r} for v, r in sorted((load_errors or {}).items())
        ],
        "canary": None if canary is None else dict(canary),  # what it routes to a canary
        "started_at": started_at,
        "last_seen": utcnow(),
    }


def summary(db: Database, name: str, state: ActiveState | None) -> dict[str, Any]:
    """``GET /fleet``: ``{name, active_version, staged_version, live_workers, converged,
    workers}`` for one model whose pointer is ``state``, gone workers listed (and removed) too."""
    active = state.active_version if state else None
    workers = list_workers(db, name, {name: active})
    alive = live(workers)
    return {
        "name": name,
        "active_version": active,
        "staged_version": state.staged_version if state else None,
        "live_workers": len(alive),
        "converged": bool(alive) and all(w["converged"] for w in alive),
        "workers": to_json(workers),
    }


def wait_until_loaded(db: Database, target: ModelVersion, timeout_s: float) -> dict[str, Any]:
    """The waiting half of prepare-then-switch: once the store staged ``target``
    (``ModelStore.stage_version``), wait until every live worker of its model reports it
    loaded (or ``timeout_s`` passes); the report for the activation's answer.

    Workers see ``staged_version`` at their next pointer read and load it in the background
    (``api/fleet.py``).

    Raises:
        RegistryError: CONFLICT naming the worker and its reason when one cannot load it
            (the store then removes the stage mark: nothing switched).
    """
    name, version = target.name, target.version
    started = time.monotonic()
    waiting: list[str] = []
    workers: list[dict[str, Any]] = []
    while True:
        workers = live(list_workers(db, name, remove_gone=False))
        for worker in workers:
            for error in worker.get("load_errors") or []:
                if error.get("version") == version:
                    raise RegistryError(
                        "CONFLICT",
                        f"cannot activate {target.label}: worker {worker['host']}:"
                        f"{worker['pid']} could not load it: {error.get('reason')}",
                    )
        waiting = [
            worker_id(w["host"], w["pid"])
            for w in workers
            if version not in (w.get("loaded_versions") or [])
        ]
        if not waiting or time.monotonic() - started >= timeout_s:
            break
        time.sleep(PREPARE_POLL_S)
    return {
        "staged_version": version,
        "prepare_s": round(time.monotonic() - started, 3),
        "live_workers": len(workers),
        "loaded": len(workers) - len(waiting),
        "timed_out": bool(waiting),
        # These load it on demand, at their first request after the switch.
        "not_loaded": waiting,
    }
