"""The model store: versions' metadata, numbering and activation state in collections.

Over 500 lines on purpose: it is the one owner of its collections and of the activation
protocol (issue 22), so every write of them is here; the pure rules live beside it
(lease.py, pointer_guard.py) and the bytes in artifacts.py.

The one store used by the ``bridge`` CLI and the API. Data model (DESIGN.md):

- GridFS bucket ``models`` (``registry.bucket``): the bytes, one file per version, handled
  by :class:`registry_bridge.artifacts.GridFSArtifacts` (``store.artifacts``), the one
  place a checksum is checked.
- ``model_versions``: one document per version, unique ``(name, version)``.
- ``registry_state``: ``_id = name``, the active pointer, changed by one atomic
  compare-and-set (``find_one_and_replace`` filtered on the expected active version).
- ``activation_log``: append-only audit of activations and rollbacks (with the promotion
  gate's report when it ran, registry_bridge/promotion.py).
- ``reference_sets`` and the GridFS bucket ``<bucket>_reference``: each name's labelled
  reference sets (registry_bridge/reference.py, written through this class only).
- ``counters``: ``_id = "model_versions:<name>"``, the last version number handed out
  (``$inc`` is atomic, so concurrent publishers never share a number).
- ``outbox``, a field of the version and pointer documents: each change's webhook event,
  written with the change itself, then relayed to ``webhook_deliveries``
  (registry_bridge/webhooks.py).

Used by the API (keep these signatures stable):
    ModelStore(client_or_db, settings) / ModelStore.from_settings(settings)
    get_active_version(name) -> ActiveState | None    one find_one by _id: cheap, per request
    get_model_version(name, version) -> ModelVersion   NOT_FOUND naming name and version
    search_model_versions(name=None) -> list[ModelVersion]
    list_active_states() -> dict[name, ActiveState]     for the ``active`` flag of GET /models
    artifacts.read(version) -> bytes                    sha256-verified, CONFLICT on mismatch
    set_active_version(name, version, by, reason, load, force) -> ActiveState   gated
    rollback(name, by, reason) -> ActiveState
    list_activation_log(name) -> list[ActivationEvent]
    delete_model_version(name, version, by) -> ModelVersion
    resolve_model_version(name, version, fallback) -> ModelVersion   the asked, else the active
Used by the CLI as well: publish_model_version, verify_model_version, download_artifact,
collect_orphan_files (read_artifact and download_artifact hand over to ``artifacts``).
Used by monitoring: set_baseline / get_baseline (the ``baseline`` field of a version).
Used by the CLI and publish: set_reference_set / get_reference_set / list_reference_sets.

Nothing outside this module and its own helpers (pointer_guard, lease, artifacts) writes
``model_versions``, ``registry_state`` or ``activation_log``: every change of the pointer is
one atomic update on a ready version, and only this class can promise it.

Every method raises :class:`RegistryError` only: driver errors are translated here
(unreachable server -> REGISTRY_UNAVAILABLE naming the masked URI).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pymongo import ASCENDING, DESCENDING, MongoClient, ReadPreference, ReturnDocument, WriteConcern
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from conf.contract import FEATURES, ContractError, check_model_name, parse_version
from conf.settings import ApiSettings, CanarySettings, GateRule, RegistrySettings, Settings
from registry_bridge import (
    database,
    fleet,
    lease,
    onnx_check,
    pointer_guard,
    promotion,
    webhooks,
)
from registry_bridge.artifacts import FORMAT, ORPHAN_MIN_AGE_S, GridFSArtifacts
from registry_bridge.artifacts import artifact_filename as artifact_filename  # the CLI's import
from registry_bridge.entities import (
    ActivationEvent,
    ActiveState,
    ModelVersion,
    ModelVersionDraft,
    PublishResult,
    ReferenceSet,
    VerificationReport,
    current_user,
    utcnow,
)
from registry_bridge.errors import RegistryError
from registry_bridge.errors import translate_driver_errors as _translated
from registry_bridge.mirror import AliasMove, Mirror
from registry_bridge.reference import MAX_ROWS, ReferenceRows, ReferenceSets

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

READY, DELETING, DELETED = pointer_guard.READY, pointer_guard.DELETING, pointer_guard.DELETED
VERSIONS, STATE, LOG, COUNTERS = "model_versions", "registry_state", "activation_log", "counters"
# An activation's reason is stored in the pointer document (read on every pointer read) and
# printed by `bridge history`: short, and printable (no line break, escape or bidi control).
REASON_MAX_CHARS = 500
# The field of a version document holding its training baseline (registry_bridge/monitoring).
BASELINE = "baseline"
# What resolve_model_version falls back to when no version is asked and none is active.
Fallback = Literal["newest", "none"]
# Builds the onnxruntime session a validation scores with (``validate_model_version``).
Loader = Callable[[ModelVersion], "InferenceSession"]


class ModelStore:
    """Published model versions, their bytes, the active pointer and its audit log."""

    def __init__(
        self,
        client_or_db: MongoClient | Database,
        settings: Settings | RegistrySettings | None = None,
        ensure_indexes: bool = True,
    ):
        """Bind to the registry database and create the indexes (idempotent).

        Args:
            client_or_db: a ``MongoClient`` (the database is ``registry.database``) or a
                ``Database``.
            settings: project settings or their ``registry`` section (default: defaults).
            ensure_indexes: create the indexes now (the API and CLI keep the default).
        """
        registry = (
            settings.registry
            if isinstance(settings, Settings)
            else (settings or RegistrySettings())
        )
        self.settings = registry
        # The lease this process writes with the pointer and waits for (registry_bridge/lease.py).
        api = settings.api if isinstance(settings, Settings) else ApiSettings()
        self.pointer_lease_ms = api.pointer_lease_ms
        self.prepare_timeout_s = api.prepare_timeout_s  # 0: switch without preparing
        # The promotion gate's rules (registry_bridge/promotion.py); empty: not gated.
        self.promotion_rules: tuple[GateRule, ...] = (
            settings.promotion.rules if isinstance(settings, Settings) else ()
        )
        # The canary's guardrails, applied by each API worker (registry_bridge/canary.py).
        self.canary_rules = settings.canary if isinstance(settings, Settings) else CanarySettings()
        # What an API worker's shadow queue holds at most (records), and how long its
        # comparisons are kept (capture's retention: they hold patients' measurements too).
        self.shadow_queue_records = (
            settings.shadow.queue_records if isinstance(settings, Settings) else 20_000
        )
        self.capture_retention_days = (
            settings.capture.retention_days if isinstance(settings, Settings) else 30.0
        )
        if isinstance(client_or_db, Database):
            self.db = client_or_db
        else:
            self.db = client_or_db[registry.database]
        self.uri_label = database.mask_uri(database.resolve_uri(registry, start=False))
        self._owned_client: MongoClient | None = None
        self.versions = self.db[VERSIONS]
        # The pointer's commit wait is only sound if an acknowledged write survives a failover
        # and reads see it: majority writes, reads from the primary (docs/api.md).
        self.state = self.db.get_collection(
            STATE, write_concern=WriteConcern("majority"), read_preference=ReadPreference.PRIMARY
        )
        self.log = self.db[LOG]
        self.counters = self.db[COUNTERS]
        # The bytes: every read of an artifact is sha256-checked there (and only there).
        self.artifacts = GridFSArtifacts(self.db, registry.bucket, self.uri_label)
        self.bucket = self.artifacts.bucket
        self.files = self.artifacts.files
        # Each name's labelled reference set, which the promotion gate scores versions on.
        self.references = ReferenceSets(self.db, registry.bucket, self.uri_label)
        # MLflow's Model Registry follows every change made here (None: mlflow.mirror off).
        self.mirror = Mirror.from_settings(settings) if isinstance(settings, Settings) else None
        if ensure_indexes:
            self.ensure_indexes()

    @classmethod
    def from_settings(cls, settings: Settings, ensure_indexes: bool = True) -> ModelStore:
        """Connect (starting the embedded server when ``MONGODB_URI`` is unset) and bind.

        ``ensure_indexes=False`` for a reader (the MLflow plugin): creating an index creates
        the database, which a read must never do.

        Raises:
            RegistryError: REGISTRY_UNAVAILABLE naming the masked URI.
        """
        client = database.connect(settings.registry)
        store = cls(client, settings, ensure_indexes=ensure_indexes)
        store._owned_client = client
        return store

    def close(self) -> None:
        """Close the client when this store opened it (``from_settings``)."""
        if self._owned_client is not None:
            self._owned_client.close()
            self._owned_client = None

    @_translated
    def ensure_indexes(self) -> None:
        """Create the registry's indexes; a no-op when they exist."""
        self.versions.create_index(
            [("name", ASCENDING), ("version", ASCENDING)], unique=True, name="name_version_unique"
        )
        self.versions.create_index([("name", ASCENDING), ("run_id", ASCENDING)], name="name_run_id")
        # One ready version per publish of a run (and threshold): two publishes of the same
        # run at once cannot both insert. Deliberate re-publishes (--new-version) carry no key;
        # a tombstone gives its key up, so a deleted run can be published again.
        self.versions.create_index(
            [("name", ASCENDING), ("publish_key", ASCENDING)],
            unique=True,
            name="name_publish_key_unique",
            partialFilterExpression={"publish_key": {"$exists": True}},
        )
        self.log.create_index([("name", ASCENDING), ("at", ASCENDING)], name="name_at")
        self.references.ensure_indexes()
        webhooks.ensure_indexes(self.db)

    # --- reading ---------------------------------------------------------------------

    @_translated
    def get_active_version(self, name: str) -> ActiveState | None:
        """The active pointer of ``name``, or None when no version is active (one read by _id)."""
        doc = self.state.find_one({"_id": checked_name(name)})
        if doc is None or doc.get("active_version") is None:
            return None
        return ActiveState.from_document(doc)

    @_translated
    def list_active_states(self) -> dict[str, ActiveState]:
        """Every model name with an active version, mapped to its state."""
        return {
            doc["_id"]: ActiveState.from_document(doc)
            for doc in self.state.find({})
            if doc.get("active_version") is not None
        }

    @_translated
    def get_model_version(self, name: str, version: int) -> ModelVersion:
        """One published (not deleted) version.

        Raises:
            RegistryError: NOT_FOUND naming ``name`` and ``version``.
        """
        name, version = checked_name(name), checked_version(version)
        doc = self.versions.find_one({"name": name, "version": version})
        if doc is None or doc.get("status") != READY:
            known = self._ready_numbers(name)
            hint = (
                f"; published versions: {', '.join(map(str, known))}"
                if known
                else f"; no version of {name!r} is published"
            )
            state = " was deleted" if doc is not None else " not found"
            raise RegistryError(
                "NOT_FOUND", f"model version name={name!r} version={version}{state}{hint}"
            )
        return ModelVersion.from_document(doc)

    @_translated
    def search_model_versions(
        self, name: str | None = None, include_deleted: bool = False
    ) -> list[ModelVersion]:
        """Versions sorted by name then version; deleted ones only on request."""
        query: dict[str, Any] = {} if name is None else {"name": checked_name(name)}
        if not include_deleted:
            query["status"] = READY
        docs = self.versions.find(query).sort([("name", ASCENDING), ("version", ASCENDING)])
        return [ModelVersion.from_document(doc) for doc in docs]

    @_translated
    def find_published(self, name: str, run_id: str) -> ModelVersion | None:
        """The newest ready version of ``name`` published from MLflow run ``run_id``, if any."""
        doc = self.versions.find_one(
            {"name": checked_name(name), "run_id": run_id, "status": READY},
            sort=[("version", DESCENDING)],
        )
        return ModelVersion.from_document(doc) if doc else None

    @_translated
    def published_versions_by_run(self, run_ids: Iterable[str]) -> dict[str, list[int]]:
        """For each run id, the ready versions (any name) published from it."""
        found: dict[str, list[int]] = {}
        docs = self.versions.find(
            {"run_id": {"$in": list(run_ids)}, "status": READY}, {"run_id": 1, "version": 1}
        )
        for doc in docs:
            found.setdefault(doc["run_id"], []).append(doc["version"])
        return {run: sorted(versions) for run, versions in found.items()}

    def read_artifact(self, version: ModelVersion) -> bytes:
        """The ONNX bytes of ``version``, sha256-checked (``GridFSArtifacts.read``).

        Raises:
            RegistryError: NOT_FOUND when the file is missing, CONFLICT on checksum mismatch.
        """
        return self.artifacts.read(version)

    def download_artifact(self, version: ModelVersion, destination: Path) -> Path:
        """Write the ONNX bytes to ``destination``, checked while writing (``artifacts.download``).

        Raises:
            RegistryError: CONFLICT on checksum mismatch, INVALID_INPUT when the path is unwritable.
        """
        return self.artifacts.download(version, destination)

    @_translated
    def verify_model_version(self, name: str, version: int) -> VerificationReport:
        """Check a version's checksum and re-score its input example.

        Raises:
            RegistryError: NOT_FOUND for an unknown version, CONFLICT naming what failed.
        """
        return self.validate_model_version(self.get_model_version(name, version))

    @_translated
    def list_activation_log(self, name: str) -> list[ActivationEvent]:
        """Every activation and rollback of ``name``, oldest first."""
        docs = self.log.find({"name": checked_name(name)}).sort(
            [("at", ASCENDING), ("_id", ASCENDING)]
        )
        return [ActivationEvent.from_document(doc) for doc in docs]

    @_translated
    def resolve_model_version(
        self, name: str, version: int | str | None = None, fallback: Fallback = "none"
    ) -> ModelVersion:
        """The asked version, else the active one, else (``fallback="newest"``) the newest.

        Scoring (Spark) keeps ``"none"``: with nothing active it refuses rather than score a
        whole dataset with a version nobody chose. Monitoring passes ``"newest"``: a report
        on the newest version is still worth showing.

        Raises:
            RegistryError: NOT_FOUND for an unknown version, or (``"newest"``) when ``name``
                has no version; NO_ACTIVE_MODEL (``"none"``) when none is active.
        """
        if version is not None:
            return self.get_model_version(name, checked_version(version))
        state = self.get_active_version(name)
        if state is not None:
            return self.get_model_version(name, state.active_version)
        if fallback == "none":
            raise RegistryError(
                "NO_ACTIVE_MODEL", f"model {name!r} has no active version; give a version"
            )
        versions = self.search_model_versions(name)
        if not versions:
            raise RegistryError("NOT_FOUND", f"no version of {name!r} is published")
        return versions[-1]

    @_translated
    def get_baseline(self, name: str, version: int) -> dict[str, Any] | None:
        """The training baseline kept with a version (registry_bridge/monitoring), or None."""
        doc = self.versions.find_one({"name": name, "version": int(version)}, {BASELINE: 1})
        return (doc or {}).get(BASELINE)

    @_translated
    def set_baseline(self, version: ModelVersion, baseline: Mapping[str, Any]) -> None:
        """Keep ``baseline`` with ``version`` (replacing any it had)."""
        self.versions.update_one(
            {"name": version.name, "version": version.version},
            {"$set": {BASELINE: dict(baseline)}},
        )

    # --- publishing ------------------------------------------------------------------

    @_translated
    def publish_model_version(
        self,
        draft: ModelVersionDraft,
        artifact: bytes,
        new_version: bool = False,
        publish_key: str | None = None,
    ) -> PublishResult:
        """Store ``artifact`` as the next version of ``draft.name``; visible only once verified.

        Re-publishing a run already published returns its version (``created=False``)
        unless ``new_version``. Order: number -> upload -> re-read and check sha256 ->
        insert the version document; any failure after the upload deletes the file.
        The document carries ``publish_key`` (default: the run id; none with ``new_version``)
        under a unique index, so of two publishes of one run at once only one inserts.

        Raises:
            RegistryError: INVALID_INPUT for an empty artifact, CONFLICT when the stored
                bytes differ from those sent or a concurrent publish of the same run won
                (naming its version), REGISTRY_UNAVAILABLE on database failure.
        """
        checked_name(draft.name)  # the one rule for names, before a number is spent on it
        if not artifact:  # before a number is spent on it
            raise RegistryError("INVALID_INPUT", f"{draft.name}: the artifact is empty")
        key = None if new_version or not draft.run_id else (publish_key or draft.run_id)
        if key is not None:
            existing = self._published_under(draft.name, key)
            if existing is None and publish_key is None:  # published before keys existed
                existing = self.find_published(draft.name, str(draft.run_id))
            if existing is not None:
                return PublishResult(existing, created=False)
        self._check_same_kind(draft)
        version = self._next_version(draft.name)
        stored = self.artifacts.upload(
            draft.name,
            version,
            artifact,
            {"run_id": draft.run_id, "metrics": dict(draft.metrics)},
        )
        # The webhook event goes in with the version: one write, so a crash cannot lose it.
        event = webhooks.new_event(
            "publish",
            draft.name,
            None,
            version,
            draft.created_by,
            None,
            {"run_id": draft.run_id, "sha256": stored.sha256},
        )
        document = {
            **asdict(draft),
            "version": version,
            "created_at": utcnow(),
            "format": FORMAT,
            "artifact_file_id": stored.file_id,
            "filename": stored.filename,
            "sha256": stored.sha256,
            "size_bytes": stored.size_bytes,
            "status": READY,
            **({} if key is None else {"publish_key": key}),
            webhooks.OUTBOX: [event],
        }
        try:
            self._insert_version(document)
        except BaseException:
            self.artifacts.delete(stored.file_id, f"{draft.name} v{version}")
            raise
        log.info(
            "published %s v%s (run %s, file %s, sha256 %s)",
            draft.name,
            version,
            draft.run_id,
            stored.file_id,
            stored.sha256,
        )
        webhooks.relay(self.db, VERSIONS, document["_id"], [event])
        self.update_mirror(draft.name, "publish")
        return PublishResult(self.get_model_version(draft.name, version), created=True)

    def _check_same_kind(self, draft: ModelVersionDraft) -> None:
        """Refuse a draft whose classes, features or variant differ from the name's versions.

        Clients of a name rely on its labels and inputs: a 2-class version activated (or
        rolled back to) under a 3-class name would change what every client gets back.
        """
        doc = self.versions.find_one(
            {"name": draft.name, "status": READY},
            {"version": 1, "classes": 1, "input_schema": 1, "variant": 1},
            sort=[("version", DESCENDING)],
        )
        if doc is None:
            return
        kind = _model_kind(doc.get("classes"), doc.get("input_schema"), doc.get("variant"))
        new = _model_kind(draft.classes, draft.input_schema, draft.variant)
        differs = [
            field
            for field in ("classes", "features", "variant")
            if kind[field] != new[field] and None not in (kind[field], new[field])
        ]
        if differs:
            what = "; ".join(f"{f} {_shown(new[f])} (not {_shown(kind[f])})" for f in differs)
            other = f"{draft.name}-{new['variant'].lower()}" if new["variant"] else "NAME"
            raise RegistryError(
                "CONFLICT",
                f"run {draft.run_id} does not fit {draft.name!r} (as its v{doc['version']}): "
                f"{what}; publish it under its own name, e.g. --name {other}",
            )

    def _published_under(self, name: str, key: str) -> ModelVersion | None:
        doc = self.versions.find_one({"name": name, "publish_key": key, "status": READY})
        return ModelVersion.from_document(doc) if doc else None

    def _insert_version(self, doc: dict[str, Any]) -> None:
        try:
            self.versions.insert_one(doc)
        except DuplicateKeyError:
            winner = doc.get("publish_key") and self._published_under(
                doc["name"], doc["publish_key"]
            )
            if winner:
                raise RegistryError(
                    "CONFLICT",
                    f"run {doc['run_id']} is already published as {winner.label} (by a publish "
                    "that ran at the same time); nothing published",
                ) from None
            raise RegistryError(
                "CONFLICT",
                f"{doc['name']} v{doc['version']} already exists "
                "(was the counters collection edited?); nothing published",
            ) from None

    def _next_version(self, name: str) -> int:
        """The next number for ``name``: atomic ``$inc``, never below an existing version."""
        key = {"_id": f"{VERSIONS}:{name}"}
        for _ in range(5):
            try:
                doc = self.counters.find_one_and_update(
                    key, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:  # two first publishes upserting at once: retry the $inc
                continue
            if doc is None:  # cannot happen with upsert + AFTER; keeps the retry honest
                continue
            number = int(doc["seq"])
            highest = self.versions.find_one(
                {"name": name}, {"version": 1}, sort=[("version", DESCENDING)]
            )
            if highest is None or highest["version"] < number:
                return number
            # The counter lags the versions (restored from a backup, dropped): catch up.
            self.counters.update_one(key, {"$max": {"seq": int(highest["version"])}})
        raise RegistryError("CONFLICT", f"could not allocate a version number for {name!r}; retry")

    # --- reference sets --------------------------------------------------------------

    @_translated
    def get_reference_set(self, name: str) -> ReferenceSet | None:
        """The name's reference set (its newest), or None."""
        return self.references.newest(checked_name(name))

    @_translated
    def list_reference_sets(self, name: str) -> list[ReferenceSet]:
        """Every reference set of ``name``, oldest first (the newest is the one used)."""
        return self.references.listed(checked_name(name))

    @_translated
    def read_reference_set(self, reference: ReferenceSet) -> ReferenceRows:
        """The labelled rows of ``reference``, checked against their sha256."""
        return self.references.read(reference)

    @_translated
    def set_reference_set(
        self, name: str, rows: ReferenceRows, source: str, by: str | None = None
    ) -> ReferenceSet:
        """Make ``rows`` the reference set of ``name`` (a new set: a stored one never changes).

        Raises:
            RegistryError: NOT_FOUND when ``name`` has no version; INVALID_INPUT when the rows
                are too many, or their classes are not exactly the name's versions' classes.
        """
        name = checked_name(name)
        newest = self.versions.find_one(
            {"name": name, "status": READY},
            {"version": 1, "classes": 1, "input_schema": 1},
            sort=[("version", DESCENDING)],
        )
        if newest is None:
            raise RegistryError(
                "NOT_FOUND", f"{name!r} has no published version to take a reference set for"
            )
        if not 0 < len(rows.labels) <= MAX_ROWS:
            raise RegistryError(
                "INVALID_INPUT",
                f"a reference set holds 1 to {MAX_ROWS} rows, this one has {len(rows.labels)}",
            )
        kind = _model_kind(newest.get("classes"), newest.get("input_schema"), None)
        if kind["features"] is not None and kind["features"] != list(FEATURES):
            raise RegistryError(
                "INVALID_INPUT",
                f"{name} v{newest['version']} takes the columns {_shown(kind['features'])}, "
                f"a reference set has {_shown(list(FEATURES))}",
            )
        classes, found = set(kind["classes"] or []), set(rows.labels)
        if found != classes:
            raise RegistryError(
                "INVALID_INPUT",
                f"the reference set's classes ({', '.join(sorted(found))}) are not those of "
                f"{name} v{newest['version']} ({', '.join(sorted(classes))}); every class must "
                "appear and no other",
            )
        reference = self.references.add(name, rows, source, by)
        log.info(
            "reference set %s r%s: %s rows from %s", name, reference.version, reference.rows, source
        )
        return reference

    # --- canary ----------------------------------------------------------------------

    # A canary (registry_bridge/canary.py) and shadow traffic (registry_bridge/shadow.py)
    # are one mechanism: a second version attached to the pointer document with a share of
    # the requests, read by every worker with the pointer, written and acknowledged here.
    @_translated
    def start_canary(
        self,
        name: str,
        version: int,
        percent: float,
        by: str | None = None,
        reason: str | None = None,
    ) -> ActiveState:
        """Send ``percent`` % of the requests of ``name`` to ``version`` (registry_bridge/
        canary.py), once its bytes and example check out; acknowledged after the lease.

        Raises:
            RegistryError: INVALID_INPUT for a share outside (0, 100); NOT_FOUND for an unknown
                version; CONFLICT when nothing is active, the version is the active one, it
                does not validate, or the pointer changed meanwhile.
        """
        return self._attach("canary", name, version, percent, by, reason)

    @_translated
    def start_shadow(
        self,
        name: str,
        version: int,
        percent: float,
        by: str | None = None,
        reason: str | None = None,
    ) -> ActiveState:
        """Have ``version`` score a copy of ``percent`` % of the requests of ``name`` after
        they are answered (registry_bridge/shadow.py); acknowledged after the lease.

        Raises:
            RegistryError: as :meth:`start_canary`; a share may be 100.
        """
        return self._attach("shadow", name, version, percent, by, reason)

    @_translated
    def end_canary(
        self,
        name: str,
        by: str | None = None,
        reason: str | None = None,
        version: int | None = None,
        figures: Mapping[str, Any] | None = None,
    ) -> ActiveState | None:
        """End the canary of ``name`` (``version``: only if that one still runs), logged as
        ``canary-abort`` with ``figures`` (a guardrail's); acknowledged after the lease.
        None when there was nothing to end (``version`` given: another worker ended it).

        Raises:
            RegistryError: CONFLICT when no canary runs and ``version`` was not given.
        """
        return self._detach("canary", "canary-abort", name, by, reason, version, figures)

    @_translated
    def end_shadow(
        self, name: str, by: str | None = None, reason: str | None = None
    ) -> ActiveState | None:
        """Stop the shadow traffic of ``name``, logged as ``shadow-stop``.

        Raises:
            RegistryError: CONFLICT when no shadow runs.
        """
        return self._detach("shadow", "shadow-stop", name, by, reason, None, None)

    def _update_pointer(
        self,
        name: str,
        match: Mapping[str, Any],
        update: dict[str, Any],
        event: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Apply ``update`` to ``name``'s pointer where it still ``match``es, with ``event``
        in its outbox in the same write; the pointer after, or None when it did not match.

        The outbox is written whole (see :func:`_waiting`), so the filter also holds the
        token read with it: a move in between, whose events this write would drop, makes
        it match nothing.
        """
        held = self.state.find_one({"_id": name}) or {}
        update = {
            **update,
            "$set": {**update.get("$set", {}), webhooks.OUTBOX: [*_waiting(held), event]},
        }
        return self.state.find_one_and_update(
            {"_id": name, **match, pointer_guard.TOKEN: held.get(pointer_guard.TOKEN)},
            update,
            return_document=ReturnDocument.AFTER,
        )

    def _attach(
        self,
        kind: str,
        name: str,
        version: int,
        percent: float,
        by: str | None,
        reason: str | None,
    ) -> ActiveState:
        """Attach ``version`` to the pointer as its ``kind`` with a share of the requests
        (a canary's below 100 %: at 100 % it would be an activation; a shadow's up to 100 %)."""
        below, most = (
            ("below 100", percent < 100) if kind == "canary" else ("at most 100", percent <= 100)
        )
        if not (0 < percent and most):
            raise RegistryError(
                "INVALID_INPUT",
                f"percent must be above 0 and {below}, got {percent:g}",
                [{"field": "percent", "problem": "out of range"}],
            )
        reason = checked_reason(reason)
        target = self.get_model_version(name, version)
        current = self.get_active_version(name)
        if current is None or current.active_version is None:
            raise RegistryError(
                "CONFLICT", f"{name!r} has no active version for a {kind} to run beside"
            )
        if current.active_version == target.version:
            raise RegistryError("CONFLICT", f"{target.label} is the active version already")
        self.validate_model_version(target, refusing=f"cannot start a {kind} of {target.label}")
        by = by or current_user()
        side = {
            "version": target.version,
            "percent": float(percent),
            # Text, not a date: the embedded server stores $set dates as text anyway.
            "started_at": utcnow().isoformat(),
            "started_by": by,
        }
        action = f"{kind}-start"
        event = webhooks.new_event(
            kind,
            name,
            current.active_version,
            target.version,
            by,
            reason,
            {"action": action, "percent": float(percent)},
        )
        moved = self._update_pointer(
            name, {"active_version": current.active_version}, {"$set": {kind: side}}, event
        )
        acknowledged_at = time.monotonic()
        if moved is None:
            raise RegistryError(
                "CONFLICT",
                f"the active version of {name!r} changed while the {kind} started; "
                "nothing changed, retry",
            )
        if not pointer_guard.activation_stands(
            self.versions.find_one({"name": name, "version": target.version}, {"status": 1})
        ):  # a deletion marked it meanwhile (pointer_guard.py): take it back
            self.state.update_one(
                {"_id": name, f"{kind}.version": target.version},
                {"$unset": {kind: ""}, "$pull": {webhooks.OUTBOX: {"id": event["id"]}}},
            )
            raise RegistryError("CONFLICT", f"{target.label} is being deleted; no {kind} started")
        self._log_side(
            name,
            action,
            current.active_version,
            target.version,
            by,
            reason,
            {"percent": float(percent)},
        )
        lease.wait_after(
            acknowledged_at, lease.commit_wait_ms(self.pointer_lease_ms, current.lease_ms)
        )
        webhooks.relay(self.db, STATE, name, [event])
        return ActiveState.from_document(moved)

    def _detach(
        self,
        kind: str,
        action: str,
        name: str,
        by: str | None,
        reason: str | None,
        version: int | None,
        figures: Mapping[str, Any] | None,
    ) -> ActiveState | None:
        """Remove the pointer's ``kind`` (only ``version``'s, when given)."""
        reason = checked_reason(reason)
        current = self.get_active_version(name)
        running = (getattr(current, kind) or {}) if current is not None else {}
        wanted = version if version is not None else running.get("version")
        by = by or current_user()
        ended = None
        if wanted is not None:
            event = webhooks.new_event(
                kind,
                name,
                wanted,
                current.active_version if current is not None else None,
                by,
                reason,
                {"action": action, **({"figures": dict(figures)} if figures else {})},
            )
            ended = self._update_pointer(
                name, {f"{kind}.version": wanted}, {"$unset": {kind: ""}}, event
            )
        acknowledged_at = time.monotonic()
        if ended is None:
            if version is not None:
                return None
            raise RegistryError("CONFLICT", f"no {kind} of {name!r} is running")
        self._log_side(
            name, action, wanted, ended.get("active_version"), by, reason, dict(figures or {})
        )
        lease.wait_after(
            acknowledged_at,
            lease.commit_wait_ms(self.pointer_lease_ms, int(ended.get("lease_ms") or 0)),
        )
        webhooks.relay(self.db, STATE, name, [event])
        return ActiveState.from_document(ended)

    def promote_canary(
        self,
        name: str,
        by: str | None = None,
        reason: str | None = None,
        load: Loader | None = None,
        force: bool = False,
    ) -> ActiveState:
        """Activate the canary's version through the promotion gate (the switch ends the
        canary); logged as ``canary-promote``.

        Raises:
            RegistryError: CONFLICT when no canary runs, or as :meth:`set_active_version`.
        """
        current = self.get_active_version(checked_name(name))
        if current is None or not current.canary:
            raise RegistryError("CONFLICT", f"no canary of {name!r} is running to promote")
        return self.set_active_version(
            name,
            int(current.canary["version"]),
            by=by,
            reason=reason,
            load=load,
            force=force,
            action="canary-promote",
        )

    def _log_side(
        self,
        name: str,
        action: str,
        from_version: int | None,
        to_version: int | None,
        by: str,
        reason: str | None,
        details: dict[str, Any],
    ) -> None:
        self.log.insert_one(
            {
                "name": name,
                "from_version": from_version,
                "to_version": to_version,
                "at": utcnow(),
                "by": by,
                "reason": reason,
                "action": action,
                "details": details,
            }
        )
        log.info("%s %s: v%s -> v%s by %s", action, name, from_version, to_version, by)

    # --- activation ------------------------------------------------------------------

    @_translated
    def set_active_version(
        self,
        name: str,
        version: int,
        by: str | None = None,
        reason: str | None = None,
        load: Loader | None = None,
        force: bool = False,
        action: str = "activate",
    ) -> ActiveState:
        """Make ``version`` the one served, after checking its bytes and its example, and
        passing the promotion gate against the active version (registry_bridge/promotion.py).

        The pointer moves with one compare-and-set on the state read before validating,
        so a concurrent change is refused rather than overwritten. Activating the active
        version changes nothing and logs nothing. ``force`` (with a ``reason``) activates
        a version the gate refuses; the audit entry says so, with each rule's values.

        Raises:
            RegistryError: NOT_FOUND for an unknown version; CONFLICT when its checksum
                does not match, it does not predict its example, the gate refuses it, or
                the state changed meanwhile; INVALID_INPUT for ``force`` without a reason.

        ``load`` builds the session the validation scores with (default: one from the
        checked bytes, :meth:`validate_model_version`); the API passes its worker's loader,
        so the version is loaded once, into the cache it then serves from.
        """
        reason = checked_reason(reason)
        if force and not reason:
            raise RegistryError(
                "INVALID_INPUT",
                "reason: a forced activation needs a reason (--reason TEXT), kept in the audit log",
                [{"field": "reason", "problem": "required with force"}],
            )
        target = self.get_model_version(name, version)
        current = self.get_active_version(name)
        if current is not None and current.active_version == target.version:
            # It may have been written by an activation still in its commit wait.
            lease.wait_after(time.monotonic(), lease.commit_wait_ms(0, current.lease_ms))
            return current
        sessions: dict[int, Any] = {}

        def session_of(v: ModelVersion) -> Any:  # one session per version in this activation
            if v.version not in sessions:
                sessions[v.version] = (
                    load(v)
                    if load is not None
                    else onnx_check.load_session(self.read_artifact(v), v.label)
                )
            return sessions[v.version]

        self.validate_model_version(
            target, refusing=f"cannot activate {target.label}", load=session_of
        )
        gate = self._gate(name, current, target, session_of, force)
        return self._prepare_and_move(name, current, target, by, reason, action, gate)

    def _gate(
        self,
        name: str,
        current: ActiveState | None,
        target: ModelVersion,
        session_of: Callable[[ModelVersion], Any],
        force: bool,
    ) -> dict[str, Any] | None:
        """The gate's report for the audit entry (None: no rules, or nothing active).

        Raises:
            RegistryError: CONFLICT listing each failed rule, unless ``force``.
        """
        if not self.promotion_rules or current is None or current.active_version is None:
            return None
        active = self.get_model_version(name, current.active_version)
        found = self.references.newest(name)
        reference = None if found is None else (found, self.references.read(found))
        report = promotion.run_gate(
            self.promotion_rules, target, active, reference, session_of, forced=force
        )
        if not report.passed and not force:
            raise report.refusal(target.label)
        log.info(
            "promotion gate %s %s v%s against v%s in %.3f s",
            "passed" if report.passed else "forced past",
            name,
            target.version,
            active.version,
            report.seconds,
        )
        return report.to_dict()

    @_translated
    def rollback(self, name: str, by: str | None = None, reason: str | None = None) -> ActiveState:
        """Return to the version active before the current one (a second rollback undoes it).

        Raises:
            RegistryError: CONFLICT when nothing is active, there is no previous version,
                or the previous version was deleted or no longer validates.
        """
        reason = checked_reason(reason)
        current = self.get_active_version(name)
        if current is None:
            raise RegistryError("CONFLICT", f"cannot roll back {name!r}: no version is active")
        if current.previous_version is None:
            raise RegistryError(
                "CONFLICT",
                f"cannot roll back {name!r}: v{current.active_version} "
                "is the first version activated, there is no previous one",
            )
        try:
            target = self.get_model_version(name, current.previous_version)
        except RegistryError as exc:
            raise RegistryError(
                "CONFLICT",
                f"cannot roll back {name!r} to v{current.previous_version}: {exc.message}",
            ) from None
        self.validate_model_version(target, refusing=f"cannot roll back to {target.label}")
        return self._prepare_and_move(name, current, target, by, reason, "rollback")

    def _prepare_and_move(
        self,
        name: str,
        current: ActiveState | None,
        target: ModelVersion,
        by: str | None,
        reason: str | None,
        action: str,
        gate: dict[str, Any] | None = None,
    ) -> ActiveState:
        """Stage ``target`` until the live workers loaded it (registry_bridge/fleet.py),
        then move the pointer; the answer carries the preparation's and the gate's reports."""
        prepared = None
        if current is not None and self.prepare_timeout_s > 0:
            self.stage_version(name, target.version, expected=current.active_version)
            try:
                prepared = fleet.wait_until_loaded(self.db, target, self.prepare_timeout_s)
            except RegistryError:  # a worker cannot load it: nothing switches
                self.unstage_version(name, target.version)
                raise
        # MLflow's side is brought up to date before the switch too, which then moves its alias.
        alias = (
            None if self.mirror is None else self.mirror.before_switch(self, name, target.version)
        )
        flipping = time.monotonic()
        state = self._move_pointer(name, current, target.version, by, reason, action, alias, gate)
        if prepared is not None:
            # The pointer write, the MLflow alias and the commit wait: the switch proper.
            prepared["switch_s"] = round(time.monotonic() - flipping, 3)
        return replace(state, prepared=prepared, gate=gate)

    @_translated
    def stage_version(self, name: str, version: int, expected: int | None) -> None:
        """Mark ``version`` staged in the pointer whose active version is ``expected``: the
        workers load it before the switch (prepare-then-switch, registry_bridge/fleet.py).

        No mark is written when the active version is no longer ``expected``: the switch's
        compare-and-set then refuses. The switch's write replaces the whole pointer, mark
        included; a refused activation calls :meth:`unstage_version`.
        """
        self.state.update_one(
            {"_id": name, "active_version": expected}, {"$set": {"staged_version": version}}
        )

    @_translated
    def unstage_version(self, name: str, version: int) -> None:
        """Remove the stage mark of ``version`` (an activation refused while preparing)."""
        self.state.update_one(
            {"_id": name, "staged_version": version}, {"$unset": {"staged_version": ""}}
        )

    def _move_pointer(
        self,
        name: str,
        current: ActiveState | None,
        to_version: int,
        by: str | None,
        reason: str | None,
        action: str,
        alias: AliasMove | None,
        gate: dict[str, Any] | None = None,
    ) -> ActiveState:
        by = by or current_user()
        now = utcnow()
        from_version = current.active_version if current else None
        # A canary's promotion is an activation to whoever listens to activations.
        kind, details = (
            ("activate", {"action": action}) if action == "canary-promote" else (action, None)
        )
        outbox = [webhooks.new_event(kind, name, from_version, to_version, by, reason, details)]
        # The whole (small) document is replaced rather than $set: dates then stay BSON
        # dates on every server (the embedded one stores $set dates as text).
        new_state = {
            "_id": name,
            "active_version": to_version,
            "previous_version": from_version,
            "activated_at": now,
            "activated_by": by,
            "reason": reason,
            "lease_ms": self.pointer_lease_ms,
            pointer_guard.TOKEN: uuid.uuid4().hex,  # lets this move be undone, and only it
            webhooks.OUTBOX: outbox,
        }
        replaced: dict[str, Any] | None
        if current is None:
            try:
                self.state.insert_one(new_state)
                replaced = {}
            except DuplicateKeyError:  # another activation created the state first
                replaced = None
        else:
            # Events of earlier moves still waiting in the pointer (their writer died before
            # relaying them) are carried into the new one; the token in the filter makes sure
            # no move came in between, whose events this replace would drop.
            held = self.state.find_one({"_id": name}) or {}
            outbox[:0] = _waiting(held)
            replaced = self.state.find_one_and_replace(
                {
                    "_id": name,
                    "active_version": from_version,
                    pointer_guard.TOKEN: held.get(pointer_guard.TOKEN),
                },
                new_state,
                return_document=ReturnDocument.BEFORE,
            )
        acknowledged_at = time.monotonic()
        if replaced is None:
            now_active = self.get_active_version(name)
            raise RegistryError(
                "CONFLICT",
                f"the active version of {name!r} changed while this {action} ran "
                f"(expected v{from_version}, "
                f"now v{now_active.active_version if now_active else None}); "
                "nothing changed, retry",
            )
        # A deletion may have marked the target since it was validated (registry_bridge/
        # pointer_guard.py): read its status after the move, and undo the move unless ready.
        self._keep_only_if_ready(name, to_version, new_state, replaced, action)
        self.log.insert_one(
            {
                "name": name,
                "from_version": from_version,
                "to_version": to_version,
                "at": now,
                "by": by,
                "reason": reason,
                "action": action,
                **({"gate": gate} if gate is not None else {}),
            }
        )
        log.info("%s %s: v%s -> v%s by %s", action, name, from_version, to_version, by)
        if alias is not None:
            alias.apply(action)  # inside the commit wait, which counts from the write
        # Commit wait: reads that began before the write expire before we acknowledge.
        wait_ms = lease.commit_wait_ms(self.pointer_lease_ms, int(replaced.get("lease_ms") or 0))
        lease.wait_after(acknowledged_at, wait_ms)
        # After the commit wait: a receiver that asks the API then gets the new version.
        webhooks.relay(self.db, STATE, name, outbox)
        return ActiveState.from_document(new_state)

    def _keep_only_if_ready(
        self,
        name: str,
        version: int,
        written: dict[str, Any],
        replaced: dict[str, Any],
        action: str,
    ) -> None:
        """Undo the pointer move to ``version`` when it is no longer ready (CONFLICT)."""
        found = self.versions.find_one({"name": name, "version": version}, {"status": 1})
        if pointer_guard.activation_stands(found):
            return
        mine = {"_id": name, pointer_guard.TOKEN: written[pointer_guard.TOKEN]}
        if replaced:
            self.state.find_one_and_replace(mine, pointer_guard.restored_state(replaced))
        else:  # this activation created the pointer document
            self.state.delete_one(mine)
        status = {DELETING: "being deleted", DELETED: "deleted"}.get(
            str(found.get("status")) if found else "", "removed"
        )
        log.warning("%s of %s v%s undone: the version is %s", action, name, version, status)
        raise RegistryError(
            "CONFLICT",
            f"cannot {'roll back to' if action == 'rollback' else action} {name} v{version}: "
            f"it was {status} while the {action} ran; nothing changed",
        )

    def validate_model_version(
        self, version: ModelVersion, refusing: str | None = None, load: Loader | None = None
    ) -> VerificationReport:
        """The check before a switch (and ``bridge verify``): the version's bytes match their
        sha256, load in onnxruntime and give its input example's recorded predictions.

        Args:
            refusing: prefix of the CONFLICT raised instead of the failure (``"cannot
                activate <label>"``); None raises the failure itself.
            load: builds the session to score with from the version (its bytes read through
                the store, so checked); default: a session of its own. The API passes one
                that loads into its worker's cache, to load the version once.

        Raises:
            RegistryError: CONFLICT (or NOT_FOUND for a missing file, without ``refusing``)
                naming what failed; REGISTRY_UNAVAILABLE as it is, with or without
                ``refusing``: an outage says nothing about the version.
        """
        what = version.label
        try:
            if load is None:
                session = onnx_check.load_session(self.read_artifact(version), what)
            else:
                session = load(version)
            inputs = version.input_example.get("inputs") or []
            if not inputs:
                raise RegistryError("CONFLICT", f"{what}: no input example to score")
            scores = onnx_check.score(session, inputs, version.onnx_io, what)
            worst = onnx_check.compare(version.input_example, scores, version.classes, what)
        except RegistryError as exc:
            if refusing is None or exc.code == "REGISTRY_UNAVAILABLE":
                raise
            detail = exc.message.removeprefix(f"{what}: ")
            raise RegistryError("CONFLICT", f"{refusing}: {detail}") from None
        return VerificationReport(
            version.name,
            version.version,
            version.sha256,
            version.size_bytes,
            len(version.input_example["inputs"]),
            worst,
        )

    # --- deleting --------------------------------------------------------------------

    @_translated
    def delete_model_version(self, name: str, version: int, by: str | None = None) -> ModelVersion:
        """Remove a version's file and mark its document deleted; the active or staged version
        is refused, also when an activation races this deletion (registry_bridge/pointer_guard.py).

        The document stays as a tombstone (status "deleted") so the number is never reused
        and the audit log keeps its meaning; it no longer appears in lists or lookups. A
        deletion interrupted after its mark (status "deleting") is finished by running it again.

        Raises:
            RegistryError: NOT_FOUND for an unknown version, CONFLICT for the active one.
        """
        marked = self._mark_deleting(name, version)
        by = by or current_user()
        event = webhooks.new_event("delete", name, marked["version"], None, by, None)
        tombstone = {
            **marked,
            "status": DELETED,
            "deleted_at": utcnow(),
            "deleted_by": by,
            webhooks.OUTBOX: [*(marked.get(webhooks.OUTBOX) or []), event],
        }
        tombstone.pop("publish_key", None)  # the run may be published again
        changed = self.versions.find_one_and_replace(
            {"_id": marked["_id"], "status": DELETING},
            tombstone,
            return_document=ReturnDocument.AFTER,
        )
        target = ModelVersion.from_document(marked)
        if changed is None:
            raise RegistryError("NOT_FOUND", f"{target.label} was deleted meanwhile")
        self.artifacts.delete(target.artifact_file_id, target.label)
        log.info("deleted %s (file %s)", target.label, target.artifact_file_id)
        webhooks.relay(self.db, VERSIONS, marked["_id"], tombstone[webhooks.OUTBOX])
        self.update_mirror(name, "delete")
        return ModelVersion.from_document(changed)

    @_translated
    def unpublish_model_version(self, name: str, version: int) -> None:
        """Remove a version completely (document and file): undoes a publish whose follow-up failed.

        Unlike :meth:`delete_model_version` no tombstone is kept. Refuses the active version.
        """
        marked = self._mark_deleting(name, version)
        target = ModelVersion.from_document(marked)
        self.versions.delete_one({"_id": marked["_id"], "status": DELETING})
        self.artifacts.delete(target.artifact_file_id, target.label)
        log.info("unpublished %s", target.label)
        # Its publish event may have gone out already: say the version is gone.
        webhooks.emit(
            self.db,
            webhooks.new_event("delete", name, version, None, None, "publish undone"),
        )
        self.update_mirror(name, "unpublish")

    def _mark_deleting(self, name: str, version: int) -> dict[str, Any]:
        """Mark a ready version ``deleting``, then refuse (and unmark) it when the pointer holds
        it: the deletion's half of registry_bridge/pointer_guard.py. The marked document."""
        name, version = checked_name(name), checked_version(version)
        found = self.versions.find_one({"name": name, "version": version})
        if found is None or found.get("status") not in (READY, DELETING):
            self.get_model_version(name, version)  # NOT_FOUND naming what is published
        assert found is not None
        label = f"{name} v{version}"
        self._refuse_if_held(name, version, label)  # before marking: the common case, no undo
        if found["status"] == READY:
            marked = self.versions.find_one_and_update(
                {"_id": found["_id"], "status": READY},
                {"$set": {"status": DELETING}},
                return_document=ReturnDocument.AFTER,
            )
            if marked is None:
                raise RegistryError("NOT_FOUND", f"{label} was deleted meanwhile")
        else:  # an interrupted deletion, finished now
            marked = found
        try:
            self._refuse_if_held(name, version, label)
        except RegistryError:
            self.versions.update_one(
                {"_id": found["_id"], "status": DELETING}, {"$set": {"status": READY}}
            )
            raise
        return marked

    def _refuse_if_held(self, name: str, version: int, label: str) -> None:
        state = self.state.find_one({"_id": name})
        held = pointer_guard.holder(state, version)
        if held == "active":
            raise RegistryError(
                "CONFLICT",
                f"{label} is the active version of {name!r}; activate another version first",
            )
        if held == "staged":
            raise RegistryError(
                "CONFLICT",
                f"{label} is being activated (staged while the API workers load it); "
                "retry once the activation ends",
            )
        if held == "canary":
            raise RegistryError(
                "CONFLICT",
                f"{label} answers a canary share of {name!r}; end it first "
                f"(`bridge canary {name} --abort`)",
            )
        if held == "shadow":
            raise RegistryError(
                "CONFLICT",
                f"{label} scores the shadow traffic of {name!r}; stop it first "
                f"(`bridge shadow {name} --off`)",
            )

    @_translated
    def collect_orphan_files(
        self, dry_run: bool = False, min_age_s: float = ORPHAN_MIN_AGE_S
    ) -> list[dict[str, Any]]:
        """Files no ready (or being deleted) version points to (a crashed publish or delete);
        removed unless dry_run.

        Files younger than ``min_age_s`` (by their ObjectId's time) are spared: they may
        belong to a publish that has not inserted its version document yet.
        """
        # A "deleting" version may still go back to ready (an activation won): keep its file.
        referenced = {
            str(doc["artifact_file_id"])
            for doc in self.versions.find(
                {"status": {"$in": [READY, DELETING]}}, {"artifact_file_id": 1}
            )
        }
        found = self.artifacts.collect_orphans(referenced, dry_run=dry_run, min_age_s=min_age_s)
        return found + self.references.artifacts.collect_orphans(
            self.references.file_ids(), dry_run=dry_run, min_age_s=min_age_s
        )

    # --- helpers ---------------------------------------------------------------------

    def update_mirror(self, name: str, action: str) -> None:
        """Bring MLflow's side of ``name`` up to date; never fails the registry change."""
        if self.mirror is not None:
            self.mirror.after_change(self, name, action)

    def _ready_numbers(self, name: str) -> list[int]:
        return [
            doc["version"]
            for doc in self.versions.find({"name": name, "status": READY}, {"version": 1}).sort(
                "version", ASCENDING
            )
        ]


def _waiting(pointer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The events still waiting in a pointer document's outbox, to write back with a new one.

    The whole list is written with ``$set``, never ``$push``: the embedded server stores a
    document given to ``$push`` as its JSON text (docs/embedded-mongo.md), which no sender
    can read back as an event.
    """
    return webhooks.events_in(pointer.get(webhooks.OUTBOX))


def _model_kind(classes: Any, input_schema: Any, variant: Any) -> dict[str, Any]:
    """What clients of a name rely on: its classes, feature names (in order) and variant."""
    return {
        "classes": [str(c) for c in classes] if classes else None,
        "features": [str(f.get("name")) for f in input_schema] if input_schema else None,
        "variant": variant or None,
    }


def _shown(value: Any) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def checked_name(name: Any) -> str:
    """``name`` when it follows the run contract's name rule; INVALID_INPUT naming it otherwise."""
    try:
        return check_model_name(name)
    except ContractError as exc:
        raise RegistryError.refusing(exc) from None


def checked_version(version: Any) -> int:
    """A version number by the run contract's rule; INVALID_INPUT naming the field otherwise."""
    try:
        return parse_version(version)
    except ContractError as exc:
        raise RegistryError.refusing(exc) from None


def checked_reason(reason: Any) -> str | None:
    """An activation's ``reason``: at most REASON_MAX_CHARS printable characters (or None).

    Line breaks, escape sequences (ESC, OSC/BEL), other control and format characters
    (U+202E and the other bidirectional controls) would forge rows or retitle the terminal
    where ``bridge history`` prints it. Refused, not cleaned: the log keeps what was given.

    Raises:
        RegistryError: INVALID_INPUT naming the field ``reason`` and the problem.
    """
    if reason is None:
        return None
    problem = None
    if not isinstance(reason, str):
        problem = "must be text"
    elif len(reason) > REASON_MAX_CHARS:
        problem = f"is {len(reason)} characters long; at most {REASON_MAX_CHARS}"
    else:
        bad = next(((i, c) for i, c in enumerate(reason) if not c.isprintable()), None)
        if bad is not None:
            position, char = bad
            problem = (
                f"holds the non-printable character U+{ord(char):04X} at position {position} "
                "(line breaks, control, escape and bidirectional characters are refused)"
            )
    if problem is None:
        return reason
    raise RegistryError(
        "INVALID_INPUT", f"reason {problem}", [{"field": "reason", "problem": problem}]
    )
