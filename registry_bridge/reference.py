"""Reference sets: the labelled rows a model name's versions are compared on.

The promotion gate (registry_bridge/promotion.py) scores the candidate and the active
version on the same patients: the name's reference set. It is kept like a version: its
bytes in a GridFS bucket of its own beside the models' (``<bucket>_reference``), checked
against their sha256 on every read; its document in ``reference_sets``, numbered per name
and never changed; the newest is the name's reference.

The bytes are a canonical CSV: the FEATURES in order, then ``label``, floats written by
``repr``. That is exactly the text pipelines.data fingerprints, so a reference set's
sha256 is the data set fingerprint of its rows (a run's ``data_fingerprint`` when the
reference is the whole table the run was trained on).

Only the store (registry_bridge/store.py) calls this module; it checks that a set fits
the name's versions before adding it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from conf.contract import FEATURES
from registry_bridge.artifacts import GridFSArtifacts
from registry_bridge.entities import ReferenceSet, current_user, utcnow
from registry_bridge.errors import RegistryError

COLLECTION = "reference_sets"
# The gate scores the set twice inside an activation: bounded so it stays a second at
# most (310 rows is the whole UCI data set).
MAX_ROWS = 100_000
HEADER = ",".join([*FEATURES, "label"])


@dataclass(frozen=True)
class ReferenceRows:
    """Labelled rows: ``features`` (rows x FEATURES, float64, FEATURES order) and ``labels``."""

    features: np.ndarray
    labels: list[str]

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.features.shape != (len(self.labels), len(FEATURES)):
            raise ValueError(
                f"expected {len(self.labels)} rows of {len(FEATURES)} features, "
                f"got shape {self.features.shape}"
            )


def canonical_csv(rows: ReferenceRows) -> bytes:
    """The stored bytes of ``rows`` (pipelines.data.fingerprint's text, byte for byte)."""
    lines = [HEADER]
    for values, label in zip(rows.features.tolist(), rows.labels, strict=True):
        lines.append(",".join(repr(float(v)) for v in values) + f",{label}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_canonical_csv(data: bytes, what: str) -> ReferenceRows:
    """The rows of stored bytes (written by :func:`canonical_csv`, sha256-checked on read).

    Raises:
        RegistryError: CONFLICT naming ``what`` when the bytes are not a reference CSV.
    """
    lines = data.decode("utf-8").splitlines()
    if not lines or lines[0] != HEADER:
        raise RegistryError("CONFLICT", f"{what}: the stored file is not a reference set CSV")
    width = len(FEATURES)
    try:
        cells = [line.split(",") for line in lines[1:]]
        features = np.array([[float(v) for v in row[:width]] for row in cells], dtype=np.float64)
        labels = [row[width] for row in cells]
    except (ValueError, IndexError):
        raise RegistryError(
            "CONFLICT", f"{what}: the stored file is not a reference set CSV"
        ) from None
    return ReferenceRows(features.reshape(len(labels), width), labels)


class ReferenceSets:
    """The ``reference_sets`` collection and its GridFS bucket (written by the store only)."""

    def __init__(self, db: Database, bucket: str, uri_label: str):
        self.collection = db[COLLECTION]
        self.artifacts = GridFSArtifacts(db, f"{bucket}_reference", uri_label)

    def ensure_indexes(self) -> None:
        """One document per (name, number)."""
        self.collection.create_index(
            [("name", ASCENDING), ("version", ASCENDING)], unique=True, name="name_version_unique"
        )

    def newest(self, name: str) -> ReferenceSet | None:
        """The name's reference (its newest set), or None."""
        doc = self.collection.find_one({"name": name}, sort=[("version", DESCENDING)])
        return ReferenceSet.from_document(doc) if doc else None

    def listed(self, name: str) -> list[ReferenceSet]:
        """Every set of ``name``, oldest first."""
        docs = self.collection.find({"name": name}).sort("version", ASCENDING)
        return [ReferenceSet.from_document(doc) for doc in docs]

    def read(self, reference: ReferenceSet) -> ReferenceRows:
        """The rows of ``reference``, its bytes checked against their sha256."""
        return parse_canonical_csv(self.artifacts.read(reference), reference.label)

    def add(self, name: str, rows: ReferenceRows, source: str, by: str | None) -> ReferenceSet:
        """Store ``rows`` as the next set of ``name``: upload, read back, then the document.

        A failure after the upload deletes the file, so nothing is half-added. Two adds at
        once get two numbers (the unique index makes the later one take the next).
        """
        data = canonical_csv(rows)
        counts = Counter(rows.labels)
        for _ in range(5):
            newest = self.newest(name)
            number = 1 if newest is None else newest.version + 1
            stored = self.artifacts.upload(
                name,
                number,
                data,
                {"kind": "reference"},
                filename=f"{name}-r{number}.csv",
                fmt="csv",
            )
            doc: dict[str, Any] = {
                "name": name,
                "version": number,
                "rows": len(rows.labels),
                "classes": sorted(counts),
                "class_counts": dict(sorted(counts.items())),
                "sha256": stored.sha256,
                "size_bytes": stored.size_bytes,
                "artifact_file_id": stored.file_id,
                "filename": stored.filename,
                "source": source,
                "created_at": utcnow(),
                "created_by": by or current_user(),
            }
            try:
                self.collection.insert_one(doc)
            except DuplicateKeyError:  # another add took this number: take the next
                self.artifacts.delete(stored.file_id, f"reference set {name} r{number}")
                continue
            except BaseException:
                self.artifacts.delete(stored.file_id, f"reference set {name} r{number}")
                raise
            return ReferenceSet.from_document(doc)
        raise RegistryError("CONFLICT", f"could not number a reference set for {name!r}; retry")

    def file_ids(self) -> set[str]:
        """The GridFS files the sets point to (``bridge gc`` keeps them)."""
        return {
            str(doc["artifact_file_id"])
            for doc in self.collection.find({}, {"artifact_file_id": 1})
        }
