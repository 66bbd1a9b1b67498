"""The webhook sender: claims due deliveries, POSTs them, records every attempt.

Any number of senders may run at once (a thread in each API worker, `bridge webhooks
deliver`): a delivery is claimed with one ``find_one_and_update`` that moves its ``due``
time a lease ahead and writes a fresh owner token, so two senders never hold it at once,
and a sender that dies holding it leaves it claimable again when the lease ends. The
attempt is recorded by a compare-and-set on that token (a whole-document replace, so the
attempt's date stays a date on every server).

An attempt connects to an address checked at that moment (registry_bridge/webhook_targets.py),
follows no redirect (a 3xx is a failure), is cut after ``connect_timeout_s +
read_timeout_s`` and reads at most 4 KB of the answer. A 2xx answer delivers; anything
else is retried after ``backoff_s * 2^(n-1)`` s (at most ``backoff_max_s``) until
``max_attempts``, then the delivery is ``failed``. The secret is read from the environment
variable the webhook names, at send time, and only used to sign.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import PyMongoError

from conf.settings import WebhookSettings
from registry_bridge import webhook_targets, webhooks
from registry_bridge.entities import utcnow
from registry_bridge.errors import first_line

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 4096  # read of a receiver's answer, kept (shortened) with the attempt
KEPT_ANSWER_CHARS = 200
USER_AGENT = "vertebral-registry-webhooks/1"
RECOVER_EVERY_S = 5.0  # how often a running sender relays events a crash left in an outbox
PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True)
class Attempt:
    """One POST: the answer's status code (None: no answer), or what went wrong."""

    status_code: int | None
    error: str | None
    ms: float
    answer: str = ""
    status: str = ""  # the delivery's status once the attempt is recorded

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signature(secret: str, body: bytes) -> str:
    """The ``X-Registry-Signature`` value: ``sha256=<hex HMAC-SHA256 of body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, headers: Mapping[str, str], settings: WebhookSettings) -> Attempt:
    """POST ``body`` to ``url`` once, to an address checked now; never raises."""
    started = time.monotonic()

    def done(code: int | None, error: str | None, answer: str = "") -> Attempt:
        return Attempt(code, error, round((time.monotonic() - started) * 1000, 1), answer)

    try:
        target = webhook_targets.resolve(url, settings.allow_private)
    except webhook_targets.TargetRefused as exc:
        return done(None, f"refused: {exc}")
    sock = None
    watchdog = None
    try:
        sock = _connect(target, settings.connect_timeout_s)
        # The whole exchange, however slowly the receiver trickles, ends by this deadline.
        watchdog = threading.Timer(
            settings.connect_timeout_s + settings.read_timeout_s, _cut, (sock,)
        )
        watchdog.daemon = True
        watchdog.start()
        sock.settimeout(settings.read_timeout_s)
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            context = ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=target.host)
            connection = http.client.HTTPSConnection(target.host, target.port, context=context)
        else:
            connection = http.client.HTTPConnection(target.host, target.port)
        connection.sock = sock  # already connected to the checked address: no new lookup
        connection.request("POST", target.path, body=body, headers=dict(headers))
        answer = connection.getresponse()
        text = answer.read(MAX_ANSWER_BYTES).decode("utf-8", "replace")[:KEPT_ANSWER_CHARS]
        if 200 <= answer.status < 300:
            return done(answer.status, None, text)
        return done(answer.status, f"HTTP {answer.status} {answer.reason}".strip(), text)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return done(None, failure(exc))
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if sock is not None:
            sock.close()


def failure(exc: BaseException) -> str:
    """Why an attempt failed, for its record and the log: the exception's class and first
    line (``TimeoutError: timed out``, ``RemoteDisconnected: Remote end closed ...``)."""
    name = type(exc).__name__
    text = first_line(exc)
    return name if text == name else f"{name}: {text}"


def _connect(target: webhook_targets.Target, timeout: float) -> socket.socket:
    last: OSError | None = None
    for address in target.addresses:
        try:
            return socket.create_connection((address, target.port), timeout=timeout)
        except OSError as exc:
            last = exc
    raise last or OSError(f"cannot connect to {target.host}")


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Sender:
    """Delivers due deliveries of one database; :meth:`start` runs it in a daemon thread."""

    def __init__(
        self, db: Database, settings: WebhookSettings, environ: Mapping[str, str] | None = None
    ):
        self.db = db
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        # The lease outlasts an attempt, so a live sender never loses its claim mid-send.
        self.lease_s = max(
            settings.lease_s, 2 * (settings.connect_timeout_s + settings.read_timeout_s)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recovered_at = float("-inf")
        self._pruned_at = time.monotonic()
        self._warned_unsignable: set[str] = set()

    # --- one delivery ---------------------------------------------------------------

    def claim(self) -> tuple[dict[str, Any], str] | None:
        """The oldest due delivery, claimed for a lease, and the claim's token; or None."""
        now = time.time()
        token = uuid.uuid4().hex
        found = self.db[webhooks.DELIVERIES].find_one_and_update(
            self._due(now),
            {"$set": {"due": now + self.lease_s, "lease_owner": token}},
            sort=[("due", 1)],
            return_document=ReturnDocument.AFTER,
        )
        return None if found is None else (found, token)

    def _due(self, now: float) -> dict[str, Any]:
        """The filter of the deliveries due at ``now`` that this sender can sign.

        A webhook whose secret variable is not set in this process is left to a sender that
        has it, without an attempt spent: a second API on the same database started without
        the variable (``make serve`` beside ``make demo``) used up the demo's attempts with
        "not set here" before, and the demo's receiver got its events late or never.
        """
        query: dict[str, Any] = {"status": webhooks.PENDING, "due": {"$lte": now}}
        unsignable = []
        for hook in self.db[webhooks.HOOKS].find({}, {"name": 1, "secret_env": 1}):
            variable = hook.get("secret_env")
            if variable and not self.environ.get(variable):
                unsignable.append(hook["_id"])
                if hook["_id"] not in self._warned_unsignable:  # once per sender and webhook
                    self._warned_unsignable.add(hook["_id"])
                    log.warning(
                        "webhook %s: its secret variable %s is not set in this process; its "
                        "deliveries are left to senders that have it",
                        hook.get("name"),
                        variable,
                    )
        if unsignable:
            query["webhook_id"] = {"$nin": unsignable}
        return query

    def attempt(self, delivery: Mapping[str, Any], token: str, final: bool = False) -> Attempt:
        """POST a claimed delivery once and record the attempt (``final``: no retry)."""
        hook = self.db[webhooks.HOOKS].find_one({"_id": delivery["webhook_id"]})
        if hook is None:
            result = Attempt(None, "the webhook was removed", 0.0)
            final = True
        else:
            result = self._send(delivery, hook)
        return replace(result, status=self._record(delivery, token, result, final))

    def _send(self, delivery: Mapping[str, Any], hook: Mapping[str, Any]) -> Attempt:
        body = delivery["body"].encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Registry-Event": delivery["event"],
            "X-Registry-Delivery": delivery["_id"],
        }
        secret_env = hook.get("secret_env")
        if secret_env:
            secret = self.environ.get(secret_env)
            if not secret:
                return Attempt(None, f"the secret variable {secret_env} is not set here", 0.0)
            headers["X-Registry-Signature"] = signature(secret, body)
        return post(hook["url"], body, headers, self.settings)

    def _record(self, delivery: Mapping[str, Any], token: str, result: Attempt, final: bool) -> str:
        count = int(delivery.get("attempt_count", 0)) + 1
        attempts = list(delivery.get("attempts") or [])
        attempts.append(
            {
                "at": utcnow(),
                "status_code": result.status_code,
                "error": result.error,
                "ms": result.ms,
                "answer": result.answer,
            }
        )
        record: dict[str, Any] = {
            **delivery,
            "attempt_count": count,
            "attempts": attempts,
            "lease_owner": None,
        }
        if result.delivered:
            record.update(status=webhooks.DELIVERED, finished_at=utcnow())
        elif final or count >= self.settings.max_attempts:
            record.update(status=webhooks.FAILED, finished_at=utcnow())
        else:
            wait = min(self.settings.backoff_max_s, self.settings.backoff_s * 2 ** (count - 1))
            record.update(status=webhooks.PENDING, due=time.time() + wait)
        kept = self.db[webhooks.DELIVERIES].find_one_and_replace(
            {"_id": delivery["_id"], "lease_owner": token}, record
        )
        outcome = result.error or result.status_code
        if kept is None:  # cannot happen while the lease outlasts an attempt
            log.warning("delivery %s: lease lost before recording (%s)", delivery["_id"], outcome)
        else:
            # A failure with its reason (status or exception, never the secret or the
            # signature) at WARNING, for whoever debugs the receiver; `bridge webhooks
            # deliveries --failed` lists it too.
            failed = not result.delivered
            then = ""
            if failed and record["status"] == webhooks.PENDING:
                then = "; retried in %.1f s" % (record["due"] - time.time())
            elif failed:
                then = "; given up"
            log.log(
                logging.WARNING if failed else logging.INFO,
                "webhook %s %s delivery %s attempt %d%s: %s (%s ms)%s",
                delivery["webhook"],
                delivery["event"],
                delivery["_id"],
                count,
                " failed" if failed else "",
                outcome,
                result.ms,
                then,
            )
        return str(record["status"])

    # --- the loop -------------------------------------------------------------------

    def deliver_due(self, limit: int = 1000) -> dict[str, int]:
        """Relay waiting outbox events, then attempt every due delivery once (up to
        ``limit``); counts of ``delivered``, ``retrying`` and ``failed`` attempts."""
        webhooks.relay_pending(self.db)
        counts = {"delivered": 0, "retrying": 0, "failed": 0}
        for _ in range(limit):
            claimed = self.claim()
            if claimed is None:
                break
            delivery, token = claimed
            status = self.attempt(delivery, token).status
            key = {webhooks.DELIVERED: "delivered", webhooks.FAILED: "failed"}.get(status)
            counts[key or "retrying"] += 1
        return counts

    def run(self) -> None:
        """Poll every ``poll_s`` (at once when this process creates deliveries) until
        :meth:`stop`; errors are logged, never raised."""
        while not self._stop.is_set():
            try:
                self._tick()
            except PyMongoError as exc:  # the database is away: the next tick retries
                log.warning("webhook sender: %s", first_line(exc))
            except Exception:
                log.exception("webhook sender failed a round")
            if webhooks.deliveries_created.wait(self.settings.poll_s):
                webhooks.deliveries_created.clear()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._recovered_at >= RECOVER_EVERY_S:
            webhooks.relay_pending(self.db)
            self._recovered_at = now
        if now - self._pruned_at >= PRUNE_EVERY_S:
            webhooks.prune(self.db, self.settings.retention_days)
            self._pruned_at = now
        deliveries = self.db[webhooks.DELIVERIES]
        # A read first: most polls find nothing due, and a read is cheaper than a claim.
        while not self._stop.is_set() and deliveries.find_one(self._due(time.time()), {"_id": 1}):
            claimed = self.claim()
            if claimed is None:
                return
            self.attempt(*claimed)

    def start(self) -> Sender:
        """Run :meth:`run` in a daemon thread (one per API worker)."""
        self._thread = threading.Thread(target=self.run, name="webhook-sender", daemon=True)
        self._thread.start()
        return self

    def signal_stop(self) -> None:
        """Tell the loop to stop after the attempt under way (does not wait)."""
        self._stop.set()
        webhooks.deliveries_created.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the loop, waiting up to ``timeout`` s; an attempt under way ends by its own
        deadline (or is re-sent by another sender once its lease ends)."""
        self.signal_stop()
        if self._thread is not None:
            self._thread.join(timeout)
