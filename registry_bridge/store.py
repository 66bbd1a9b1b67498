"""The model store: ONNX bytes in GridFS, their metadata and activation state in collections.

The one store used by the ``bridge`` CLI and the API. Data model (DESIGN.md):

- GridFS bucket ``models`` (``registry.bucket``): one file per version, named
  ``<name>-v<version>.onnx``, metadata ``{name, version, run_id, sha256, format, metrics}``
  (no dates: the embedded server cannot store them there); read and deleted by ``_id`` only.
- ``model_versions``: one document per version, unique ``(name, version)``.
- ``registry_state``: ``_id = name``, the active pointer, changed by one atomic
  compare-and-set (``find_one_and_replace`` filtered on the expected active version).
- ``activation_log``: append-only audit of activations and rollbacks.
- ``counters``: ``_id = "model_versions:<name>"``, the last version number handed out
  (``$inc`` is atomic, so concurrent publishers never share a number).

Used by the API (keep these signatures stable):
    ModelStore(client_or_db, settings) / ModelStore.from_settings(settings)
    get_active_version(name) -> ActiveState | None    one find_one by _id: cheap, per request
    get_model_version(name, version) -> ModelVersion   NOT_FOUND naming name and version
    search_model_versions(name=None) -> list[ModelVersion]
    list_active_states() -> dict[name, ActiveState]     for the ``active`` flag of GET /models
    read_artifact(version) -> bytes                     sha256-verified, CONFLICT on mismatch
    set_active_version(name, version, by, reason) -> ActiveState
    rollback(name, by, reason) -> ActiveState
    list_activation_log(name) -> list[ActivationEvent]
    delete_model_version(name, version, by) -> ModelVersion
Used by the CLI as well: publish_model_version, verify_model_version, download_artifact,
collect_orphan_files.

Every method raises :class:`RegistryError` only: driver errors are translated here
(unreachable server -> REGISTRY_UNAVAILABLE naming the masked URI).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import gridfs
from bson import ObjectId
from bson.errors import InvalidId
from gridfs.errors import NoFile
from pymongo import ASCENDING, DESCENDING, MongoClient, ReadPreference, ReturnDocument, WriteConcern
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from conf.contract import ContractError, parse_version
from conf.settings import ApiSettings, RegistrySettings, Settings
from registry_bridge import database, lease, onnx_check
from registry_bridge.entities import (
    ActivationEvent,
    ActiveState,
    ModelVersion,
    ModelVersionDraft,
    PublishResult,
    VerificationReport,
    current_user,
    utcnow,
)
from registry_bridge.errors import RegistryError

log = logging.getLogger(__name__)

FORMAT = "onnx"
READY, DELETED = "ready", "deleted"
VERSIONS, STATE, LOG, COUNTERS = "model_versions", "registry_state", "activation_log", "counters"
# A file younger than this may belong to a publish still in progress: gc leaves it alone.
ORPHAN_MIN_AGE_S = 600.0

T = TypeVar("T")


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    """Turn driver errors escaping a store method into one RegistryError naming the server."""

    @functools.wraps(method)
    def wrapper(self: ModelStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except ConnectionFailure as exc:
            raise RegistryError(
                "REGISTRY_UNAVAILABLE",
                f"cannot reach the registry database at {self.uri_label}: {_first_line(exc)}",
            ) from None
        except PyMongoError as exc:
            raise RegistryError(
                "REGISTRY_UNAVAILABLE",
                f"the registry database at "
                f"{self.uri_label} refused {method.__name__}: "
                f"{_first_line(exc)}",
            ) from None

    return wrapper


def _first_line(exc: BaseException) -> str:
    # pymongo appends timeouts and a topology dump; the first clause is what helps.
    return str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0].splitlines()[0]


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def artifact_filename(name: str, version: int) -> str:
    """The GridFS filename of a version: ``<name>-v<version>.onnx``."""
    return f"{name}-v{version}.{FORMAT}"


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
        self.bucket = gridfs.GridFSBucket(self.db, bucket_name=registry.bucket)
        self.files = self.db[f"{registry.bucket}.files"]
        if ensure_indexes:
            self.ensure_indexes()

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore:
        """Connect (starting the embedded server when ``MONGODB_URI`` is unset) and bind.

        Raises:
            RegistryError: REGISTRY_UNAVAILABLE naming the masked URI.
        """
        client = database.connect(settings.registry)
        store = cls(client, settings)
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
        self.log.create_index([("name", ASCENDING), ("at", ASCENDING)], name="name_at")

    # --- reading ---------------------------------------------------------------------

    @_translated
    def get_active_version(self, name: str) -> ActiveState | None:
        """The active pointer of ``name``, or None when no version is active (one read by _id)."""
        doc = self.state.find_one({"_id": name})
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
        version = _version_number(version)
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
        query: dict[str, Any] = {} if name is None else {"name": name}
        if not include_deleted:
            query["status"] = READY
        docs = self.versions.find(query).sort([("name", ASCENDING), ("version", ASCENDING)])
        return [ModelVersion.from_document(doc) for doc in docs]

    @_translated
    def find_published(self, name: str, run_id: str) -> ModelVersion | None:
        """The newest ready version of ``name`` published from MLflow run ``run_id``, if any."""
        doc = self.versions.find_one(
            {"name": name, "run_id": run_id, "status": READY}, sort=[("version", DESCENDING)]
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

    @_translated
    def read_artifact(self, version: ModelVersion) -> bytes:
        """The ONNX bytes of ``version``, checked against its recorded sha256.

        Raises:
            RegistryError: NOT_FOUND when the GridFS file is missing; CONFLICT naming the
                expected and actual checksums when the bytes changed.
        """
        data = self._open(version).read()
        actual = sha256_hex(data)
        if actual != version.sha256 or len(data) != version.size_bytes:
            raise RegistryError(
                "CONFLICT",
                f"{version.label}: checksum mismatch, the artifact in GridFS has "
                f"sha256 {actual} ({len(data)} bytes) but the version records "
                f"{version.sha256} ({version.size_bytes} bytes)",
            )
        return data

    @_translated
    def download_artifact(self, version: ModelVersion, destination: Path) -> Path:
        """Write the ONNX bytes to ``destination``, hashing while writing; nothing left on mismatch.

        Raises:
            RegistryError: CONFLICT on checksum mismatch, INVALID_INPUT when the path is unwritable.
        """
        destination = Path(destination)
        digest = hashlib.sha256()
        size = 0
        stream = self._open(version)
        try:
            handle = tempfile.NamedTemporaryFile(
                dir=destination.parent or Path("."), prefix=f".{destination.name}.", delete=False
            )
        except OSError as exc:
            raise RegistryError(
                "INVALID_INPUT", f"cannot write {destination}: {exc.strerror or exc}"
            ) from None
        partial = Path(handle.name)
        try:
            with handle:
                for chunk in iter(lambda: stream.read(1024 * 1024), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != version.sha256 or size != version.size_bytes:
                raise RegistryError(
                    "CONFLICT",
                    f"{version.label}: checksum mismatch while downloading, got "
                    f"sha256 {digest.hexdigest()} ({size} bytes), the version records "
                    f"{version.sha256} ({version.size_bytes} bytes); nothing written",
                )
            os.replace(partial, destination)
        except OSError as exc:
            raise RegistryError(
                "INVALID_INPUT", f"cannot write {destination}: {exc.strerror or exc}"
            ) from None
        finally:
            partial.unlink(missing_ok=True)
        return destination

    @_translated
    def verify_model_version(self, name: str, version: int) -> VerificationReport:
        """Check a version's checksum and re-score its input example.

        Raises:
            RegistryError: NOT_FOUND for an unknown version, CONFLICT naming what failed.
        """
        return self._validate(self.get_model_version(name, version))

    @_translated
    def list_activation_log(self, name: str) -> list[ActivationEvent]:
        """Every activation and rollback of ``name``, oldest first."""
        docs = self.log.find({"name": name}).sort([("at", ASCENDING), ("_id", ASCENDING)])
        return [ActivationEvent.from_document(doc) for doc in docs]

    # --- publishing ------------------------------------------------------------------

    @_translated
    def publish_model_version(
        self, draft: ModelVersionDraft, artifact: bytes, new_version: bool = False
    ) -> PublishResult:
        """Store ``artifact`` as the next version of ``draft.name``; visible only once verified.

        Re-publishing a run already published returns its version (``created=False``)
        unless ``new_version``. Order: number -> upload -> re-read and check sha256 ->
        insert the version document; any failure after the upload deletes the file.

        Raises:
            RegistryError: INVALID_INPUT for an empty artifact, CONFLICT when the stored
                bytes differ from those sent, REGISTRY_UNAVAILABLE on database failure.
        """
        if not artifact:
            raise RegistryError("INVALID_INPUT", f"{draft.name}: the artifact is empty")
        if draft.run_id and not new_version:
            existing = self.find_published(draft.name, draft.run_id)
            if existing is not None:
                return PublishResult(existing, created=False)
        version = self._next_version(draft.name)
        checksum = sha256_hex(artifact)
        metadata = {
            "name": draft.name,
            "version": version,
            "run_id": draft.run_id,
            "sha256": checksum,
            "format": FORMAT,
            "metrics": dict(draft.metrics),
        }
        filename = artifact_filename(draft.name, version)
        file_id: ObjectId | None = None
        try:
            file_id = self.bucket.upload_from_stream(filename, artifact, metadata=metadata)
            stored = self.bucket.open_download_stream(file_id).read()
            if sha256_hex(stored) != checksum:
                raise RegistryError(
                    "CONFLICT",
                    f"{draft.name} v{version}: GridFS returned different bytes than "
                    f"were uploaded (sha256 {sha256_hex(stored)} instead of {checksum})",
                )
            doc = {
                **asdict(draft),
                "version": version,
                "created_at": utcnow(),
                "format": FORMAT,
                "artifact_file_id": file_id,
                "filename": filename,
                "sha256": checksum,
                "size_bytes": len(artifact),
                "status": READY,
            }
            self._insert_version(doc)
        except BaseException:
            if file_id is not None:
                self._delete_file(file_id, f"{draft.name} v{version}")
            raise
        log.info(
            "published %s v%s (run %s, file %s, sha256 %s)",
            draft.name,
            version,
            draft.run_id,
            file_id,
            checksum,
        )
        return PublishResult(self.get_model_version(draft.name, version), created=True)

    def _insert_version(self, doc: dict[str, Any]) -> None:
        try:
            self.versions.insert_one(doc)
        except DuplicateKeyError:
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
            number = int(doc["seq"])
            highest = self.versions.find_one(
                {"name": name}, {"version": 1}, sort=[("version", DESCENDING)]
            )
            if highest is None or highest["version"] < number:
                return number
            # The counter lags the versions (restored from a backup, dropped): catch up.
            self.counters.update_one(key, {"$max": {"seq": int(highest["version"])}})
        raise RegistryError("CONFLICT", f"could not allocate a version number for {name!r}; retry")

    # --- activation ------------------------------------------------------------------

    @_translated
    def set_active_version(
        self,
        name: str,
        version: int,
        by: str | None = None,
        reason: str | None = None,
        check: Callable[[ModelVersion], Any] | None = None,
    ) -> ActiveState:
        """Make ``version`` the one served, after checking its bytes and its example.

        The pointer moves with one compare-and-set on the state read before validating,
        so a concurrent change is refused rather than overwritten. Activating the active
        version changes nothing and logs nothing.

        Raises:
            RegistryError: NOT_FOUND for an unknown version; CONFLICT when its checksum
                does not match, it does not predict its example, or the state changed meanwhile.

        ``check`` replaces the validation (raising CONFLICT the same way): the API passes
        one that loads the version into its own session cache, so it is loaded once.
        """
        target = self.get_model_version(name, version)
        current = self.get_active_version(name)
        if current is not None and current.active_version == target.version:
            # It may have been written by an activation still in its commit wait.
            lease.wait_after(time.monotonic(), lease.commit_wait_ms(0, current.lease_ms))
            return current
        if check is None:
            self._validate(target, refusing=f"cannot activate {target.label}")
        else:
            check(target)
        return self._move_pointer(name, current, target.version, by, reason, "activate")

    @_translated
    def rollback(self, name: str, by: str | None = None, reason: str | None = None) -> ActiveState:
        """Return to the version active before the current one (a second rollback undoes it).

        Raises:
            RegistryError: CONFLICT when nothing is active, there is no previous version,
                or the previous version was deleted or no longer validates.
        """
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
        self._validate(target, refusing=f"cannot roll back to {target.label}")
        return self._move_pointer(name, current, target.version, by, reason, "rollback")

    def _move_pointer(
        self,
        name: str,
        current: ActiveState | None,
        to_version: int,
        by: str | None,
        reason: str | None,
        action: str,
    ) -> ActiveState:
        by = by or current_user()
        now = utcnow()
        from_version = current.active_version if current else None
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
        }
        replaced: dict[str, Any] | None
        if current is None:
            try:
                self.state.insert_one(new_state)
                replaced = {}
            except DuplicateKeyError:  # another activation created the state first
                replaced = None
        else:
            replaced = self.state.find_one_and_replace(
                {"_id": name, "active_version": from_version},
                new_state,
                return_document=ReturnDocument.BEFORE,
            )
        acknowledged_at = time.monotonic()
        if replaced is None:
            now_active = self.get_active_version(name)
            raise RegistryError(
                "CONFLICT",
                f"the active version of {name!r} changed while this {action} ran "
                f"(expected v{from_version}, now v{now_active.active_version if now_active else None});"
                " nothing changed, retry",
            )
        self.log.insert_one(
            {
                "name": name,
                "from_version": from_version,
                "to_version": to_version,
                "at": now,
                "by": by,
                "reason": reason,
                "action": action,
            }
        )
        log.info("%s %s: v%s -> v%s by %s", action, name, from_version, to_version, by)
        # Commit wait: reads that began before the write expire before we acknowledge.
        wait_ms = lease.commit_wait_ms(self.pointer_lease_ms, int(replaced.get("lease_ms") or 0))
        lease.wait_after(acknowledged_at, wait_ms)
        return ActiveState.from_document(new_state)

    def _validate(self, version: ModelVersion, refusing: str | None = None) -> VerificationReport:
        """Checksum, then load and re-score the input example; CONFLICT with ``refusing`` prefix."""
        try:
            artifact = self.read_artifact(version)
            worst = onnx_check.check_predictions(
                artifact, version.input_example, version.onnx_io, version.classes, version.label
            )
        except RegistryError as exc:
            if refusing is None:
                raise
            detail = exc.message.removeprefix(f"{version.label}: ")
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
        """Remove a version's file and mark its document deleted; the active version is refused.

        The document stays as a tombstone (status "deleted") so the number is never reused
        and the audit log keeps its meaning; it no longer appears in lists or lookups.

        Raises:
            RegistryError: NOT_FOUND for an unknown version, CONFLICT for the active one.
        """
        target = self.get_model_version(name, version)
        self._refuse_if_active(target)
        original = self.versions.find_one({"name": name, "version": target.version})
        tombstone = {
            **original,
            "status": DELETED,
            "deleted_at": utcnow(),
            "deleted_by": by or current_user(),
        }
        changed = self.versions.find_one_and_replace(
            {"_id": original["_id"], "status": READY},
            tombstone,
            return_document=ReturnDocument.AFTER,
        )
        if changed is None:
            raise RegistryError(
                "NOT_FOUND",
                f"model version name={name!r} version={target.version} was deleted meanwhile",
            )
        try:
            # An activation validated before our status change may have landed meanwhile.
            self._refuse_if_active(target)
        except RegistryError:
            self.versions.replace_one({"_id": original["_id"]}, original)
            raise
        self._delete_file(ObjectId(target.artifact_file_id), target.label)
        log.info("deleted %s (file %s)", target.label, target.artifact_file_id)
        return ModelVersion.from_document(changed)

    @_translated
    def unpublish_model_version(self, name: str, version: int) -> None:
        """Remove a version completely (document and file): undoes a publish whose follow-up failed.

        Unlike :meth:`delete_model_version` no tombstone is kept. Refuses the active version.
        """
        target = self.get_model_version(name, version)
        self._refuse_if_active(target)
        self.versions.delete_one({"name": name, "version": target.version})
        self._delete_file(ObjectId(target.artifact_file_id), target.label)
        log.info("unpublished %s", target.label)

    def _refuse_if_active(self, version: ModelVersion) -> None:
        state = self.get_active_version(version.name)
        if state is not None and state.active_version == version.version:
            raise RegistryError(
                "CONFLICT",
                f"{version.label} is the active version of "
                f"{version.name!r}; activate another version first",
            )

    @_translated
    def collect_orphan_files(
        self, dry_run: bool = False, min_age_s: float = ORPHAN_MIN_AGE_S
    ) -> list[dict[str, Any]]:
        """GridFS files no ready version points to (a crashed publish or delete); removed unless dry_run.

        Files younger than ``min_age_s`` (by their ObjectId's time) are spared: they may
        belong to a publish that has not inserted its version document yet.
        """
        referenced = {
            str(doc["artifact_file_id"])
            for doc in self.versions.find({"status": READY}, {"artifact_file_id": 1})
        }
        cutoff = datetime.now(UTC).timestamp() - min_age_s
        orphans: list[dict[str, Any]] = []
        for listed in self.files.find({}, {"_id": 1}):
            # Re-read by _id: listing is the one query that may stray outside this database.
            doc = self.files.find_one({"_id": listed["_id"]}, {"filename": 1, "length": 1})
            if doc is None or str(doc["_id"]) in referenced:
                continue
            if (
                not isinstance(doc["_id"], ObjectId)
                or doc["_id"].generation_time.timestamp() > cutoff
            ):
                continue
            orphans.append(
                {
                    "file_id": str(doc["_id"]),
                    "filename": doc.get("filename"),
                    "length": doc.get("length"),
                }
            )
            if not dry_run:
                self._delete_file(doc["_id"], doc.get("filename") or str(doc["_id"]))
        orphans += self._collect_orphan_chunks(dry_run, cutoff)
        return orphans

    def _collect_orphan_chunks(self, dry_run: bool, cutoff: float) -> list[dict[str, Any]]:
        """Chunks whose files document never came: GridFS writes it last, so an upload
        killed in between leaves them (the embedded server cannot list such chunks)."""
        chunks = self.db[f"{self.settings.bucket}.chunks"]
        found: list[dict[str, Any]] = []
        for files_id in {doc.get("files_id") for doc in chunks.find({}, {"files_id": 1})}:
            if not isinstance(files_id, ObjectId) or files_id.generation_time.timestamp() > cutoff:
                continue
            if self.files.find_one({"_id": files_id}, {"_id": 1}) is not None:
                continue  # a file (kept or removed above through GridFS)
            size = sum(
                len(c.get("data") or b"") for c in chunks.find({"files_id": files_id}, {"data": 1})
            )
            found.append(
                {
                    "file_id": str(files_id),
                    "filename": "(chunks of an unfinished upload)",
                    "length": size,
                }
            )
            if not dry_run:
                chunks.delete_many({"files_id": files_id})
        return found

    # --- helpers ---------------------------------------------------------------------

    def _open(self, version: ModelVersion) -> Any:
        try:
            return self.bucket.open_download_stream(ObjectId(version.artifact_file_id))
        except (NoFile, InvalidId):
            raise RegistryError(
                "NOT_FOUND",
                f"{version.label}: artifact file "
                f"{version.artifact_file_id} is missing from GridFS bucket "
                f"{self.settings.bucket!r}",
            ) from None

    def _delete_file(self, file_id: ObjectId, what: str) -> None:
        """Delete a GridFS file by _id; a failure is logged (``bridge gc`` retries), not raised."""
        try:
            self.bucket.delete(file_id)
        except NoFile:
            pass
        except PyMongoError as exc:
            log.warning(
                "could not delete GridFS file %s of %s (run `bridge gc`): %s",
                file_id,
                what,
                _first_line(exc),
            )

    def _ready_numbers(self, name: str) -> list[int]:
        return [
            doc["version"]
            for doc in self.versions.find({"name": name, "status": READY}, {"version": 1}).sort(
                "version", ASCENDING
            )
        ]


def _version_number(version: Any) -> int:
    """A version number by the run contract's rule; INVALID_INPUT naming the field otherwise."""
    try:
        return parse_version(version)
    except ContractError as exc:
        raise RegistryError.refusing(exc) from None
