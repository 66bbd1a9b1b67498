"""Webhooks: who hears of registry changes (``webhooks``), and the outbox of their events
(``webhook_deliveries``). The sender is ``registry_bridge/webhook_sender.py``.

No lost event. A change and its event are one write: the store puts the event in the
``outbox`` list of the very document the change writes (the version document a publish
inserts, the tombstone a deletion writes, the pointer an activation or rollback replaces).
Right after the change the store *relays* it: one delivery per subscribed webhook is
inserted into ``webhook_deliveries`` (unique per event and webhook, so relaying twice
inserts nothing) and the event is pulled from the list. A process that dies between the
change and the relay leaves the event in the document, where every sender finds it
(:func:`relay_pending`) and relays it; an activation carries the pointer's unrelayed
events over into the pointer it writes. Events that change no registry document (drift,
a test) are written straight to the deliveries (:func:`emit`).

Delivery is at least once: a sender killed after the receiver got the POST but before
it recorded the answer leaves it to be sent again; receivers drop a repeated
``X-Registry-Delivery``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from conf.settings import WebhookSettings
from registry_bridge import webhook_targets
from registry_bridge.entities import current_user, json_safe, utcnow
from registry_bridge.errors import RegistryError
from registry_bridge.errors import translate_driver_errors as _translated

log = logging.getLogger(__name__)

HOOKS, DELIVERIES = "webhooks", "webhook_deliveries"
OUTBOX = "outbox"  # the field of a changed document holding its unrelayed events
# canary and shadow fire once those features exist (issue 25 accepts them now).
EVENTS = ("publish", "activate", "rollback", "delete", "canary", "shadow", "drift")
TEST_EVENT = "test"  # `bridge webhooks test`: sent whatever the webhook subscribes
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# The documents a change writes its events into (collection names of the store).
CHANGED_COLLECTIONS = ("model_versions", "registry_state")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_LISTED = 1000

# Set whenever deliveries are created in this process: a sender thread here wakes at once.
deliveries_created = threading.Event()


def new_event(
    kind: str,
    name: str,
    from_version: int | None,
    to_version: int | None,
    actor: str | None,
    reason: str | None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An event as it waits in an outbox: the payload of its deliveries, less their ids."""
    now = utcnow()
    return {
        "id": uuid.uuid4().hex,
        "event": kind,
        "model": name,
        "from_version": from_version,
        "to_version": to_version,
        "actor": actor or current_user(),
        "reason": reason,
        # Text, not a date: it goes into the body as is, and a date inside a list is not
        # kept as a date by every server (docs/embedded-mongo.md).
        "time": now.isoformat().replace("+00:00", "Z"),
        **({"details": json_safe(dict(details))} if details else {}),
    }


def body_of(event: Mapping[str, Any], delivery_id: str) -> str:
    """The JSON body POSTed for ``event`` in delivery ``delivery_id`` (signed as these bytes)."""
    payload = {"delivery_id": delivery_id, "event_id": event["id"]}
    payload.update({k: v for k, v in event.items() if k != "id"})
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


# --- the webhooks -------------------------------------------------------------------


def ensure_indexes(db: Database) -> None:
    """The webhooks' indexes (idempotent): unique names, one delivery per event and webhook."""
    db[HOOKS].create_index("name", unique=True, name="name_unique")
    db[DELIVERIES].create_index(
        [("event_id", ASCENDING), ("webhook_id", ASCENDING)],
        unique=True,
        name="event_webhook_unique",
    )
    db[DELIVERIES].create_index([("status", ASCENDING), ("due", ASCENDING)], name="status_due")
    db[DELIVERIES].create_index("created_at", name="created_at")


def parse_events(text: str) -> list[str]:
    """``publish,activate`` -> the event names, checked (``all``: every one).

    Raises:
        RegistryError: INVALID_INPUT naming the unknown names and the known ones.
    """
    names = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if names == ["all"]:
        return list(EVENTS)
    unknown = [n for n in names if n not in EVENTS]
    if unknown or not names:
        raise RegistryError(
            "INVALID_INPUT",
            f"unknown event {', '.join(map(repr, unknown))}" if unknown else "no event given",
            [{"field": "events", "problem": f"expected some of {', '.join(EVENTS)}"}],
        )
    return list(dict.fromkeys(names))


@_translated
def add_webhook(
    db: Database,
    settings: WebhookSettings,
    url: str,
    events: Sequence[str],
    name: str | None = None,
    secret_env: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Register a webhook; its URL is checked (and resolved) now and before every send.

    Only the *name* of the secret's environment variable is stored; it must be set here
    (the senders read it from their own environment when they sign).

    Raises:
        RegistryError: INVALID_INPUT for a bad URL, event, name or variable, a refused
            target, or too many webhooks; CONFLICT for a name in use.
    """
    events = parse_events(",".join(events))
    try:
        target = webhook_targets.resolve(url, settings.allow_private)
    except webhook_targets.TargetRefused as exc:
        raise RegistryError("INVALID_INPUT", f"refused {_short(url)}: {exc}") from None
    if name is None:  # the host, as a name: hooks.example.org (an IPv6 host's colons go)
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", target.host).strip("-._")[:64] or "webhook"
    if not _NAME.fullmatch(name):
        raise RegistryError(
            "INVALID_INPUT",
            f"webhook name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    if secret_env is not None:
        if not _ENV_NAME.fullmatch(secret_env):
            raise RegistryError(
                "INVALID_INPUT", f"--secret-env {secret_env!r} is not an environment variable name"
            )
        if not (os.environ if environ is None else environ).get(secret_env):
            raise RegistryError(
                "INVALID_INPUT",
                f"the environment variable {secret_env} is not set (or empty): export the "
                "secret in it, here and where deliveries are sent (the API, bridge webhooks "
                "deliver)",
            )
    if db[HOOKS].count_documents({}) >= settings.max_webhooks:
        raise RegistryError(
            "INVALID_INPUT",
            f"there are already {settings.max_webhooks} webhooks (webhooks.max_webhooks); "
            "remove one first",
        )
    hook = {
        "_id": uuid.uuid4().hex,
        "name": name,
        "url": url,
        "events": list(events),
        "secret_env": secret_env,
        "created_at": utcnow(),
        "created_by": current_user(),
    }
    try:
        db[HOOKS].insert_one(hook)
    except DuplicateKeyError:
        raise RegistryError(
            "CONFLICT", f"a webhook named {name!r} exists; remove it or give --name"
        ) from None
    log.info("webhook %s added: %s for %s", name, target.host, ",".join(events))
    return hook


@_translated
def list_webhooks(db: Database) -> list[dict[str, Any]]:
    """Every webhook, by name."""
    return list(db[HOOKS].find({}).sort("name", ASCENDING).limit(MAX_LISTED))


@_translated
def remove_webhook(db: Database, name: str) -> dict[str, Any]:
    """Remove a webhook; its pending deliveries are marked failed when a sender claims them.

    Raises:
        RegistryError: NOT_FOUND naming it and the webhooks there are.
    """
    found = db[HOOKS].find_one_and_delete({"name": name})
    if found is None:
        known = [h["name"] for h in list_webhooks(db)]
        raise RegistryError(
            "NOT_FOUND",
            f"no webhook named {name!r}"
            + (f"; webhooks: {', '.join(known)}" if known else "; none is registered"),
        )
    return found


@_translated
def get_webhook(db: Database, name: str) -> dict[str, Any]:
    """One webhook by name (NOT_FOUND otherwise)."""
    found = db[HOOKS].find_one({"name": name})
    if found is None:
        raise RegistryError("NOT_FOUND", f"no webhook named {name!r}")
    return found


# --- the outbox ---------------------------------------------------------------------


def relay(db: Database, collection: str, doc_id: Any, events: Iterable[Mapping[str, Any]]) -> int:
    """Turn ``events`` (in the outbox of ``collection``'s document ``doc_id``) into
    deliveries, then pull them from the document. Never raises: an event left in the
    outbox is relayed by the next sender's :func:`relay_pending`.

    Returns:
        The deliveries created.
    """
    created = 0
    try:
        events = events_in(events)
        if not events:
            return 0
        for event in events:
            created += _deliveries_for(db, event)
        db[collection].update_one(
            {"_id": doc_id}, {"$pull": {OUTBOX: {"id": {"$in": [e["id"] for e in events]}}}}
        )
    except Exception as exc:  # the change is made: never fail it for its announcement
        log.warning("events left in the outbox of %s %s: %s", collection, doc_id, exc)
    return created


def events_in(outbox: Iterable[Any] | None) -> list[dict[str, Any]]:
    """The events of an outbox list. Only documents are events: an element of another type
    (the embedded server stores a document given to ``$push`` as its JSON text) must not
    block the others."""
    return [dict(e) for e in outbox or () if isinstance(e, Mapping)]


def relay_pending(db: Database) -> int:
    """Relay every event still waiting in a changed document (a crash after the change).

    Returns:
        The deliveries created.
    """
    created = 0
    for collection in CHANGED_COLLECTIONS:
        waiting = db[collection].find(
            {OUTBOX: {"$elemMatch": {"id": {"$exists": True}}}}, {OUTBOX: 1}
        )
        for doc in waiting:
            created += relay(db, collection, doc["_id"], doc.get(OUTBOX) or [])
    return created


def emit(db: Database, event: Mapping[str, Any]) -> int:
    """Write the deliveries of an event that changes no registry document (drift).

    Returns:
        The deliveries created (0 when no webhook subscribes to it).
    """
    try:
        return _deliveries_for(db, event)
    except PyMongoError as exc:
        log.warning("%s event of %s not sent: %s", event["event"], event["model"], exc)
        return 0


def _deliveries_for(db: Database, event: Mapping[str, Any]) -> int:
    hooks = db[HOOKS].find({"events": event["event"]}, {"name": 1})
    created = 0
    for hook in hooks:
        if _insert_delivery(db, event, hook):
            created += 1
    if created:
        deliveries_created.set()
    return created


def _insert_delivery(
    db: Database, event: Mapping[str, Any], hook: Mapping[str, Any], **overrides: Any
) -> dict[str, Any] | None:
    delivery_id = uuid.uuid4().hex
    doc = {
        "_id": delivery_id,
        "event_id": event["id"],
        "webhook_id": hook["_id"],
        "webhook": hook["name"],
        "event": event["event"],
        "model": event.get("model"),
        "body": body_of(event, delivery_id),
        "status": PENDING,
        "due": time.time(),  # epoch seconds: claims compare numbers on every server
        "lease_owner": None,
        "attempt_count": 0,
        "attempts": [],
        "created_at": utcnow(),
        **overrides,
    }
    try:
        db[DELIVERIES].insert_one(doc)
    except DuplicateKeyError:  # relayed before (a crash after the insert, before the pull)
        return None
    return doc


def ping_delivery(db: Database, hook: Mapping[str, Any], owner: str, lease_s: float) -> dict:
    """A ``test`` delivery to ``hook``, inserted already claimed by ``owner`` (no other
    sender takes it), to be attempted once by the caller."""
    event = new_event(TEST_EVENT, "", None, None, None, "bridge webhooks test")
    event["model"] = None
    doc = _insert_delivery(db, event, hook, due=time.time() + lease_s, lease_owner=owner)
    assert doc is not None  # a fresh event id cannot collide
    return doc


@_translated
def list_deliveries(
    db: Database, failed: bool = False, webhook: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The newest deliveries first; ``failed``: those given up and those whose last attempt
    failed (still retrying)."""
    query: dict[str, Any] = {}
    if webhook is not None:
        query["webhook"] = webhook
    if failed:
        query["$or"] = [{"status": FAILED}, {"status": PENDING, "attempt_count": {"$gt": 0}}]
    docs = db[DELIVERIES].find(query, {"body": 0}).sort("created_at", DESCENDING).limit(limit)
    return list(docs)


def prune(db: Database, retention_days: float) -> int:
    """Remove finished deliveries older than ``retention_days``; the number removed."""
    cutoff = utcnow() - timedelta(days=retention_days)
    done = db[DELIVERIES].delete_many(
        {"created_at": {"$lt": cutoff}, "status": {"$in": [DELIVERED, FAILED]}}
    )
    return int(done.deleted_count)


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
