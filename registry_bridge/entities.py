"""Small entities the registry store returns instead of raw MongoDB documents.

Each has ``to_dict()`` giving JSON-safe values (ISO 8601 dates, ids as strings), which
is what ``bridge ... --json`` prints and what the API returns.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

USER_ENV = "REGISTRY_USER"


def current_user() -> str:
    """Who is acting: ``$REGISTRY_USER``, else the login name, else ``"unknown"``."""
    if os.environ.get(USER_ENV):
        return os.environ[USER_ENV]
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def utcnow() -> datetime:
    """Now, timezone-aware UTC, truncated to milliseconds as BSON stores it."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def json_safe(value: Any) -> Any:
    """``value`` with datetimes as ISO 8601 text and other non-JSON scalars (ObjectId) as text."""
    if isinstance(value, datetime):
        if value.tzinfo is None:  # pymongo without tz_aware gives naive UTC
            value = value.replace(tzinfo=UTC)
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class _Entity:
    """``to_dict``/``from_document`` shared by the dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        """The entity as JSON-safe values."""
        return {f.name: json_safe(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Any:
        """Build from a MongoDB document, ignoring keys the entity does not know (``_id``...)."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass(frozen=True, kw_only=True)
class _VersionDescription(_Entity):
    """What a version says about its model: known before publishing, kept in its document."""

    name: str
    run_id: str | None
    experiment_id: str | None
    source: str | None
    model_family: str | None
    params: dict[str, Any]
    metrics: dict[str, float]
    classes: list[str]
    input_schema: list[dict[str, Any]]
    data_fingerprint: str | None
    library_versions: dict[str, str]
    onnx_io: dict[str, str] = field(default_factory=dict)
    input_example: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None
    # Binary versions: the label is positive_class when P(positive_class) >= threshold
    # (registry_bridge.scoring.threshold); threshold_rule says how training chose it.
    threshold: float | None = None
    threshold_rule: str | None = None
    positive_class: str | None = None
    created_by: str = field(default_factory=current_user)


@dataclass(frozen=True, kw_only=True)
class ModelVersionDraft(_VersionDescription):
    """Everything about a version that is known before the store numbers and uploads it.

    ``publish.py`` builds it from an MLflow run; tests build it from any ONNX model.
    ``onnx_io`` names the graph's input and outputs (``input_name``, ``label_output``,
    ``probabilities_output``); ``input_example`` holds rows to re-score on activation:
    ``{"inputs": [[...]], "labels": [...], "probabilities": [[...]]}``.
    """


class _StoredBytes:
    """An entity whose bytes are a GridFS file: its id is kept as text."""

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Any:
        """Build from its document (file id as text)."""
        doc = dict(doc)
        doc["artifact_file_id"] = str(doc.get("artifact_file_id"))
        return super().from_document(doc)  # type: ignore[misc]


@dataclass(frozen=True, kw_only=True)
class ModelVersion(_StoredBytes, _VersionDescription):
    """One published version: the ``model_versions`` document of DESIGN.md."""

    version: int
    created_at: datetime
    format: str
    artifact_file_id: str
    sha256: str
    size_bytes: int
    status: str
    filename: str | None = None
    deleted_at: datetime | None = None
    deleted_by: str | None = None

    @property
    def label(self) -> str:
        """``name vN``, how messages name a version."""
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class ActiveState(_Entity):
    """The ``registry_state`` document of one model name: which version serves."""

    name: str
    active_version: int | None
    previous_version: int | None
    activated_at: datetime | None
    activated_by: str | None
    reason: str | None
    # How long workers may reuse a read of this document (ms); 0 when written without one.
    lease_ms: int = 0
    staged_version: int | None = None  # being loaded by the workers before the switch
    prepared: dict[str, Any] | None = None  # the activation's preparation report (not stored)
    gate: dict[str, Any] | None = None  # the promotion gate's report (kept in the log entry)
    # A canary running beside the active version: {version, percent, started_at, started_by}.
    canary: dict[str, Any] | None = None
    # A version scoring a copy of the requests after they are answered (same fields).
    shadow: dict[str, Any] | None = None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ActiveState:
        """Build from a ``registry_state`` document (``_id`` is the name)."""
        return cls(
            name=doc["_id"],
            active_version=doc.get("active_version"),
            previous_version=doc.get("previous_version"),
            activated_at=doc.get("activated_at"),
            activated_by=doc.get("activated_by"),
            reason=doc.get("reason"),
            lease_ms=int(doc.get("lease_ms") or 0),
            staged_version=doc.get("staged_version"),
            canary=doc.get("canary"),
            shadow=doc.get("shadow"),
        )


@dataclass(frozen=True)
class ActivationEvent(_Entity):
    """One ``activation_log`` entry (append-only); ``action``: activate, rollback, deactivate,
    canary-start, canary-abort (by hand or by a guardrail), canary-promote, shadow-start or
    shadow-stop."""

    name: str
    from_version: int | None
    to_version: int | None
    at: datetime
    by: str
    reason: str | None
    action: str
    # The promotion gate's report (registry_bridge/promotion.py), when it ran: forced or
    # not, the reference set, and each rule's values for both versions.
    gate: dict[str, Any] | None = None
    # A canary or shadow entry's figures: its share when started, a guardrail's figures
    # when a canary is aborted by one.
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class PublishResult(_Entity):
    """What publishing gave: the version and whether it was created now or already existed."""

    version: ModelVersion
    created: bool

    def to_dict(self) -> dict[str, Any]:
        """The version's fields plus ``created``."""
        return {**self.version.to_dict(), "created": self.created}


@dataclass(frozen=True)
class ReferenceSet(_StoredBytes, _Entity):
    """A labelled data set a model name's versions are compared on (registry_bridge/reference.py).

    Immutable and numbered per name like versions; the newest is the name's reference.
    ``sha256`` checks the stored bytes, a canonical CSV, and is also its fingerprint:
    pipelines.data's fingerprint of the same rows and labels (a run's ``data_fingerprint``
    when the reference set is the whole data set the run trained on).
    """

    name: str
    version: int
    rows: int
    classes: list[str]
    class_counts: dict[str, int]
    sha256: str
    size_bytes: int
    artifact_file_id: str
    filename: str
    source: str
    created_at: datetime
    created_by: str

    @property
    def label(self) -> str:
        """``reference set <name> r<version>``: how messages name it."""
        return f"reference set {self.name} r{self.version}"


@dataclass(frozen=True)
class VerificationReport(_Entity):
    """A version that passed ``verify``: its checksum matched and its example re-scored."""

    name: str
    version: int
    sha256: str
    size_bytes: int
    rows_scored: int
    max_probability_difference: float


@dataclass(frozen=True)
class CandidateRun(_Entity):
    """A candidate MLflow run (tag ``candidate=true``) as ``bridge runs`` lists it."""

    run_id: str
    experiment_id: str
    run_name: str | None
    model_family: str | None
    start_time: datetime | None
    metrics: dict[str, float]
    params: dict[str, str]
    onnx_model_uri: str | None
    published_versions: list[int] = field(default_factory=list)
    variant: str | None = None  # 3C or 2C (tag ``variant``)
    classes: list[str] = field(default_factory=list)  # tag ``classes``, comma-separated
