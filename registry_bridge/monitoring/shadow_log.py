"""The ``shadow_log`` collection: what a shadow version said of the requests it was copied,
beside what the active version answered, and ``bridge compare``'s report on it.

Shadow traffic (``bridge shadow NAME V --percent P``, registry_bridge/store.py) has each
API worker score a copy of P % of the requests with V after they are answered
(api/shadow.py). A worker writes what it scored as one columnar bucket per batch, like
``inference_log``: per request its id, record count and latency (the active version's
answer); per record both versions' labels and the features (for the drift of the
shadowed traffic); and the shadow's scoring time per record of the batch.

The report: how many records were compared, the agreement rate, the disagreement
matrix (active label x shadow label), both latencies, the drift of the shadowed records
against the shadow version's training baseline, and, for records labelled through
``POST /feedback`` (registry_bridge/monitoring/feedback.py, the same labels), the live
accuracy of both versions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from bson import Binary
from pymongo import ASCENDING

from registry_bridge.monitoring.drift import DEFAULT_SINCE, compare, parse_since
from registry_bridge.monitoring.inference_log import LiveSample

log = logging.getLogger(__name__)

COLLECTION = "shadow_log"
FORMAT = 2


@dataclass(frozen=True)
class ShadowBatch:
    """One worker's batch of shadowed requests of one name (one document), as columns.

    Per request: its id, how many records it had and the active version's latency; per
    record: both versions' labels (codes into ``classes``) and the features. Binary
    columns, like ``inference_log``'s: encoding lists of numbers cost the worker a quarter
    of its throughput at 100 % shadow (bench.promotion, 2026-12-07).
    """

    name: str
    active_version: int
    shadow_version: int
    features: tuple[str, ...]
    classes: tuple[str, ...]
    request_ids: list[str]
    counts: np.ndarray  # records per request (int32)
    active_ms: np.ndarray  # the request's latency (float32), per request
    active_codes: np.ndarray  # per record (int16; -1: a label not among classes)
    shadow_codes: np.ndarray  # per record (int16)
    shadow_ms: float  # the shadow's scoring time per record of this batch
    matrix: np.ndarray  # records x features (float32)

    def keys(self) -> list[str]:
        """``<request_id>#<record>`` of each record, as feedback keys them."""
        return [
            f"{rid}#{i}"
            for rid, n in zip(self.request_ids, self.counts.tolist(), strict=True)
            for i in range(n)
        ]


def encode_labels(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Labels as int16 codes into ``classes`` (-1 for one not among them)."""
    index = {c: i for i, c in enumerate(classes)}
    return np.fromiter(
        (index.get(str(label), -1) for label in labels), dtype=np.int16, count=len(labels)
    )


def ensure_indexes(db: Any) -> None:
    """The report reads one name's batches since a time."""
    db[COLLECTION].create_index([("name", ASCENDING), ("at", ASCENDING)], name="name_at")


def write(db: Any, batch: ShadowBatch, at: datetime) -> None:
    """Store ``batch`` as one document of binary columns."""
    db[COLLECTION].insert_one(
        {
            "format": FORMAT,
            "name": batch.name,
            "active_version": batch.active_version,
            "shadow_version": batch.shadow_version,
            "at": at,
            "count": int(batch.counts.sum()),
            "features": list(batch.features),
            "classes": list(batch.classes),
            "request_ids": batch.request_ids,
            "counts": Binary(batch.counts.astype("<i4").tobytes()),
            "active_ms": Binary(batch.active_ms.astype("<f4").tobytes()),
            "active_codes": Binary(batch.active_codes.astype("<i2").tobytes()),
            "shadow_codes": Binary(batch.shadow_codes.astype("<i2").tobytes()),
            "shadow_ms": float(batch.shadow_ms),
            "matrix": Binary(np.ascontiguousarray(batch.matrix, dtype="<f4").tobytes()),
        }
    )


def decode(doc: Mapping[str, Any]) -> ShadowBatch:
    """A stored document back as a batch.

    Raises:
        ValueError: the document is not this format or its columns disagree.
    """
    if doc.get("format") != FORMAT:
        raise ValueError(f"format {doc.get('format')!r}, not {FORMAT}")
    counts = np.frombuffer(doc["counts"], dtype="<i4")
    total = int(counts.sum())
    features = tuple(doc["features"])
    batch = ShadowBatch(
        name=doc["name"],
        active_version=int(doc["active_version"]),
        shadow_version=int(doc["shadow_version"]),
        features=features,
        classes=tuple(doc["classes"]),
        request_ids=list(doc["request_ids"]),
        counts=counts,
        active_ms=np.frombuffer(doc["active_ms"], dtype="<f4"),
        active_codes=np.frombuffer(doc["active_codes"], dtype="<i2"),
        shadow_codes=np.frombuffer(doc["shadow_codes"], dtype="<i2"),
        shadow_ms=float(doc["shadow_ms"]),
        matrix=np.frombuffer(doc["matrix"], dtype="<f4").reshape(total, len(features)),
    )
    if (
        len(batch.request_ids) != len(counts)
        or len(batch.active_ms) != len(counts)
        or len(batch.active_codes) != total
        or len(batch.shadow_codes) != total
    ):
        raise ValueError("its columns do not have matching lengths")
    return batch


def purge(db: Any, older_than: datetime) -> int:
    """Remove batches written before ``older_than`` (capture's retention); how many."""
    return int(db[COLLECTION].delete_many({"at": {"$lt": older_than}}).deleted_count)


def read(db: Any, name: str, since: datetime) -> list[ShadowBatch]:
    """The batches of ``name`` written since ``since``, oldest first (malformed ones skipped)."""
    batches = []
    for doc in db[COLLECTION].find({"name": name, "at": {"$gte": since}}).sort("at", ASCENDING):
        try:
            batches.append(decode(doc))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s document %s skipped: %s", COLLECTION, doc.get("_id"), exc)
    return batches


def agreement(
    active: Sequence[str], shadow: Sequence[str], classes: Sequence[str]
) -> dict[str, Any]:
    """The share of records both versions labelled alike, and the matrix of their labels
    (rows: the active version's label, columns: the shadow's, in ``classes`` order)."""
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for a, s in zip(active, shadow, strict=True):
        if a in index and s in index:
            matrix[index[a], index[s]] += 1
    compared = int(matrix.sum())
    return {
        "compared": compared,
        "agreement": float(np.trace(matrix) / compared) if compared else None,
        "matrix": {"classes": list(classes), "counts": matrix.tolist()},
    }


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    array = np.asarray(values, dtype=float)
    return {"p50_ms": float(np.percentile(array, 50)), "p99_ms": float(np.percentile(array, 99))}


def _accuracy(labels: Sequence[str], truth: Mapping[str, str], keys: Sequence[str]) -> Any:
    pairs = [(label, truth[key]) for key, label in zip(keys, labels, strict=True) if key in truth]
    if not pairs:
        return None
    return sum(label == true for label, true in pairs) / len(pairs)


def comparison(
    batches: Sequence[ShadowBatch],
    classes: Sequence[str],
    truth: Mapping[str, str],
    baseline: Mapping[str, Any] | None,
    thresholds: Any,
) -> dict[str, Any]:
    """``bridge compare``'s figures over ``batches`` (one shadow version's)."""
    keys: list[str] = []
    active: list[str] = []
    shadow: list[str] = []
    active_ms: list[float] = []
    shadow_ms: list[float] = []
    matrices = []
    features: tuple[str, ...] = ()
    for batch in batches:
        names = [*batch.classes, ""]  # code -1: a label not among the classes
        keys += batch.keys()
        active += [names[c] for c in batch.active_codes.tolist()]
        shadow += [names[c] for c in batch.shadow_codes.tolist()]
        active_ms += np.repeat(batch.active_ms, batch.counts).tolist()
        shadow_ms += [batch.shadow_ms] * int(batch.counts.sum())
        matrices.append(batch.matrix)
        features = batch.features
    report = agreement(active, shadow, classes)
    report["latency"] = {"active": _percentiles(active_ms), "shadow": _percentiles(shadow_ms)}
    labelled = sum(1 for key in keys if key in truth)
    report["live_accuracy"] = {
        "labelled": labelled,
        "active": _accuracy(active, truth, keys),
        "shadow": _accuracy(shadow, truth, keys),
    }
    if baseline is None or not matrices:
        report["drift"] = None
    else:
        sample = LiveSample(features, np.concatenate(matrices).astype(float), shadow)
        report["drift"] = compare(baseline, sample, thresholds)
    return report


def compare_report(
    store: Any, settings: Any, name: str, since: str = DEFAULT_SINCE, now: datetime | None = None
) -> dict[str, Any]:
    """What ``bridge compare`` (and the console) show: per shadow version seen in the window,
    its comparison with the active version's answers.

    Raises:
        RegistryError: INVALID_INPUT for ``since``.
    """
    from registry_bridge.monitoring.feedback import labels_by_key

    until = now or datetime.now(UTC)
    start = until - parse_since(since)
    docs = read(store.db, name, start)
    state = store.get_active_version(name)
    head = {
        "name": name,
        "since": start.isoformat(),
        "until": until.isoformat(),
        "window": since,
        "running": None if state is None else state.shadow,
    }
    by_version: dict[tuple[int, int], list[ShadowBatch]] = {}
    for batch in docs:
        by_version.setdefault((batch.active_version, batch.shadow_version), []).append(batch)
    truth = labels_by_key(store.db, name, start - timedelta(days=1)) if docs else {}
    pairs = []
    for (active_version, shadow_version), group in sorted(by_version.items()):
        version = store.get_model_version(name, shadow_version)
        pairs.append(
            {
                "active_version": active_version,
                "shadow_version": shadow_version,
                **comparison(
                    group,
                    version.classes,
                    truth,
                    store.get_baseline(name, shadow_version),
                    settings.monitor,
                ),
            }
        )
    compared = sum(p["compared"] for p in pairs)
    agreed = sum((p["agreement"] or 0) * p["compared"] for p in pairs)
    return {
        **head,
        "compared": compared,
        "agreement": agreed / compared if compared else None,
        "matrix": pairs[-1]["matrix"] if pairs else None,
        "pairs": pairs,
    }
