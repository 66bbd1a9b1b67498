"""Model bytes in GridFS: upload, checked reads and downloads, deletion, orphan collection.

The one module that touches the bucket's files and chunks, used by the store (publish,
verify, delete, gc), the API (artifact download, loading a version) and the MLflow
artifact repository (``registry_bridge.mlflow_plugin``). Every byte read goes through
:meth:`GridFSArtifacts._stream_checked`, the one place a checksum is compared: a
mismatch is ``CONFLICT`` naming the version and both checksums, whoever reads.

Files are opened and deleted by ``_id`` only (the one lookup that behaves the same on
MongoDB and on the embedded server). The file's metadata is
``{name, version, run_id, sha256, format, metrics}``; no dates (the embedded server
cannot store them there; ``uploadDate`` is the creation time).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import gridfs
from bson import ObjectId
from bson.errors import InvalidId
from gridfs.errors import CorruptGridFile, NoFile
from pymongo.database import Database
from pymongo.errors import PyMongoError

from registry_bridge.errors import RegistryError, first_line, translate_driver_errors

log = logging.getLogger(__name__)

FORMAT = "onnx"
# Read and hash in pieces this size: a download never holds the whole file.
READ_CHUNK = 1024 * 1024
# A file younger than this may belong to a publish still in progress: gc leaves it alone.
ORPHAN_MIN_AGE_S = 600.0


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def artifact_filename(name: str, version: int) -> str:
    """The GridFS filename of a version: ``<name>-v<version>.onnx``."""
    return f"{name}-v{version}.{FORMAT}"


class ArtifactRef(Protocol):
    """What reading a version's bytes needs (a ``ModelVersion`` is one)."""

    @property
    def label(self) -> str: ...

    artifact_file_id: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class StoredFile:
    """A file just uploaded and read back intact."""

    file_id: ObjectId
    filename: str
    sha256: str
    size_bytes: int


class GridFSArtifacts:
    """The GridFS bucket of model artifacts; every method raises RegistryError only."""

    def __init__(self, db: Database, bucket: str, uri_label: str):
        """Bind to ``bucket`` of ``db``; ``uri_label`` (password masked) names the server."""
        self.db = db
        self.bucket_name = bucket
        self.uri_label = uri_label
        self.bucket = gridfs.GridFSBucket(db, bucket_name=bucket)
        self.files = db[f"{bucket}.files"]
        self.chunks = db[f"{bucket}.chunks"]

    # --- writing ---------------------------------------------------------------------

    @translate_driver_errors
    def upload(
        self,
        name: str,
        version: int,
        data: bytes,
        metadata: Mapping[str, Any],
        filename: str | None = None,
        fmt: str = FORMAT,
    ) -> StoredFile:
        """Upload ``data`` as version ``version`` of ``name``, then read it back and check it.

        ``metadata`` completes the file's metadata (``run_id``, ``metrics``); name, version,
        sha256 and format are set here. When the bytes read back differ the file is deleted.
        ``filename`` defaults to the model artifact's (:func:`artifact_filename`).

        Raises:
            RegistryError: INVALID_INPUT for empty data, CONFLICT when GridFS returns other bytes.
        """
        what = f"{name} v{version}"
        if not data:
            raise RegistryError("INVALID_INPUT", f"{name}: the artifact is empty")
        checksum = sha256_hex(data)
        filename = filename or artifact_filename(name, version)
        full = {
            **metadata,
            "name": name,
            "version": version,
            "sha256": checksum,
            "format": fmt,
        }
        file_id = self.bucket.upload_from_stream(filename, data, metadata=full)
        try:
            self._stream_checked(
                file_id,
                checksum,
                len(data),
                what,
                when="after upload: GridFS returned different bytes than were uploaded,",
            )
        except BaseException:
            self.delete(file_id, what)
            raise
        return StoredFile(file_id, filename, checksum, len(data))

    def delete(self, file_id: ObjectId | str, what: str) -> None:
        """Delete a file by _id; a failure is logged (``bridge gc`` retries), never raised."""
        try:
            self.bucket.delete(ObjectId(file_id))
        except (NoFile, InvalidId):
            pass
        except PyMongoError as exc:
            log.warning(
                "could not delete GridFS file %s of %s (run `bridge gc`): %s",
                file_id,
                what,
                first_line(exc),
            )

    # --- reading ---------------------------------------------------------------------

    @translate_driver_errors
    def read(self, ref: ArtifactRef) -> bytes:
        """The bytes of ``ref``, checked against its recorded sha256 and size.

        Raises:
            RegistryError: NOT_FOUND when the file is missing; CONFLICT naming the version,
                the expected and the actual checksums when the bytes changed.
        """
        parts: list[bytes] = []
        self._stream_checked(
            ref.artifact_file_id, ref.sha256, ref.size_bytes, ref.label, sink=parts.append
        )
        return b"".join(parts)

    @translate_driver_errors
    def download(self, ref: ArtifactRef, destination: Path) -> Path:
        """Write the bytes of ``ref`` to ``destination``, hashing while writing.

        The file appears (atomically, by rename) only when the checksum matched; nothing
        is left behind otherwise.

        Raises:
            RegistryError: CONFLICT on checksum mismatch, INVALID_INPUT when unwritable.
        """
        destination = Path(destination)
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
                self._stream_checked(
                    ref.artifact_file_id,
                    ref.sha256,
                    ref.size_bytes,
                    ref.label,
                    sink=handle.write,
                    when=" while downloading; nothing written:",
                )
            os.replace(partial, destination)
        except OSError as exc:
            raise RegistryError(
                "INVALID_INPUT", f"cannot write {destination}: {exc.strerror or exc}"
            ) from None
        finally:
            partial.unlink(missing_ok=True)
        return destination

    def _stream_checked(
        self,
        file_id: ObjectId | str,
        sha256: str,
        size_bytes: int,
        what: str,
        sink: Callable[[bytes], Any] | None = None,
        when: str = ",",
    ) -> None:
        """Read a file piece by piece into ``sink``, then compare sha256 and size: THE check."""
        stream = self._open(file_id, what)
        digest = hashlib.sha256()
        size = 0
        try:
            for piece in iter(lambda: stream.read(READ_CHUNK), b""):
                digest.update(piece)
                size += len(piece)
                if sink is not None:
                    sink(piece)
        except CorruptGridFile as exc:
            # Chunks missing mid-read: the file was deleted meanwhile (a version being
            # deleted) or is damaged. The bytes are gone, the database is not down.
            raise RegistryError(
                "NOT_FOUND",
                f"{what}: artifact file {file_id} lost its chunks while being read "
                f"({first_line(exc)})",
            ) from None
        actual = digest.hexdigest()
        if actual != sha256 or size != size_bytes:
            raise RegistryError(
                "CONFLICT",
                f"{what}: checksum mismatch{when} the artifact in GridFS has sha256 "
                f"{actual} ({size} bytes) but {sha256} ({size_bytes} bytes) is recorded",
            )

    def _open(self, file_id: ObjectId | str, what: str) -> Any:
        try:
            return self.bucket.open_download_stream(ObjectId(file_id))
        except (NoFile, InvalidId, TypeError):
            raise RegistryError(
                "NOT_FOUND",
                f"{what}: artifact file {file_id} is missing from GridFS bucket "
                f"{self.bucket_name!r}",
            ) from None

    # --- garbage collection ----------------------------------------------------------

    @translate_driver_errors
    def collect_orphans(
        self, referenced: set[str], dry_run: bool = False, min_age_s: float = ORPHAN_MIN_AGE_S
    ) -> list[dict[str, Any]]:
        """Files whose id is not in ``referenced``, and chunks with no file; removed unless dry_run.

        Anything younger than ``min_age_s`` (by its ObjectId's time) is spared: it may
        belong to a publish that has not inserted its version document yet.
        """
        cutoff = datetime.now(UTC).timestamp() - min_age_s
        orphans: list[dict[str, Any]] = []
        for listed in self.files.find({}, {"_id": 1}):
            # Re-read by _id: listing is the one query that may stray outside this database.
            doc = self.files.find_one({"_id": listed["_id"]}, {"filename": 1, "length": 1})
            if doc is None or str(doc["_id"]) in referenced or not _older(doc["_id"], cutoff):
                continue
            orphans.append(
                {
                    "file_id": str(doc["_id"]),
                    "filename": doc.get("filename"),
                    "length": doc.get("length"),
                }
            )
            if not dry_run:
                self.delete(doc["_id"], doc.get("filename") or str(doc["_id"]))
        return orphans + self._collect_orphan_chunks(dry_run, cutoff)

    def _collect_orphan_chunks(self, dry_run: bool, cutoff: float) -> list[dict[str, Any]]:
        """Chunks whose files document never came: GridFS writes it last, so an upload
        killed in between leaves them (the embedded server cannot list such chunks)."""
        found: list[dict[str, Any]] = []
        for files_id in {doc.get("files_id") for doc in self.chunks.find({}, {"files_id": 1})}:
            if not _older(files_id, cutoff):
                continue
            if self.files.find_one({"_id": files_id}, {"_id": 1}) is not None:
                continue  # a file (kept or removed above through GridFS)
            size = sum(
                len(c.get("data") or b"")
                for c in self.chunks.find({"files_id": files_id}, {"data": 1})
            )
            found.append(
                {
                    "file_id": str(files_id),
                    "filename": "(chunks of an unfinished upload)",
                    "length": size,
                }
            )
            if not dry_run:
                self.chunks.delete_many({"files_id": files_id})
        return found


def _older(file_id: Any, cutoff: float) -> bool:
    """True for an ObjectId created before ``cutoff`` (seconds since the epoch)."""
    return isinstance(file_id, ObjectId) and file_id.generation_time.timestamp() <= cutoff
