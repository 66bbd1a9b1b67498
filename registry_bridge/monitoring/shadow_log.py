"""The ``shadow_log`` collection: what a shadow version said of the requests it was copied,
beside what the active version answered, and ``bridge compare``'s report on it.

Shadow traffic (``bridge shadow NAME V --percent P``, registry_bridge/store.py) has each
API worker score a copy of P % of the requests with V after they are answered
(api/shadow.py). A worker writes what it scored as one columnar bucket per batch, like
``inference_log``: per record its request id and record number, both versions' labels,
the active version's request latency and the shadow's scoring time per record, and the
features (for the drift of the shadowed traffic).

The report: how many records were compared, the agreement rate, the disagreement
matrix (active label x shadow label), both latencies, the drift of the shadowed records
against the shadow version's training baseline, and, for records labelled through
``POST /feedback`` (registry_bridge/monitoring/feedback.py, the same labels), the live
accuracy of both versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from pymongo import ASCENDING

from registry_bridge.monitoring.drift import DEFAULT_SINCE, compare, parse_since
from registry_bridge.monitoring.inference_log import LiveSample

COLLECTION = "shadow_log"
FORMAT = 1


@dataclass(frozen=True)
class ShadowBatch:
    """One worker's batch of shadowed records of one name (one document)."""

    name: str
    active_version: int
    shadow_version: int
    features: tuple[str, ...]
    keys: list[str]  # "<request_id>#<record>", as feedback keys them
    active_labels: list[str]
    shadow_labels: list[str]
    active_ms: list[float]  # the request's latency, for each of its records
    shadow_ms: list[float]  # the shadow's scoring time per record of its batch
    matrix: np.ndarray  # records x features


def ensure_indexes(db: Any) -> None:
    """The report reads one name's batches since a time."""
    db[COLLECTION].create_index([("name", ASCENDING), ("at", ASCENDING)], name="name_at")


def write(db: Any, batch: ShadowBatch, at: datetime) -> None:
    """Store ``batch`` as one document (columns, not one document per record)."""
    db[COLLECTION].insert_one(
        {
            "format": FORMAT,
            "name": batch.name,
            "active_version": batch.active_version,
            "shadow_version": batch.shadow_version,
            "at": at,
            "count": len(batch.keys),
            "keys": batch.keys,
            "active_labels": batch.active_labels,
            "shadow_labels": batch.shadow_labels,
            "active_ms": [round(v, 3) for v in batch.active_ms],
            "shadow_ms": [round(v, 4) for v in batch.shadow_ms],
            "features": list(batch.features),
            "matrix": batch.matrix.astype(float).tolist(),
        }
    )


def purge(db: Any, older_than: datetime) -> int:
    """Remove batches written before ``older_than`` (capture's retention); how many."""
    return int(db[COLLECTION].delete_many({"at": {"$lt": older_than}}).deleted_count)


def read(db: Any, name: str, since: datetime) -> list[dict[str, Any]]:
    """The batches of ``name`` written since ``since``, oldest first."""
    return list(db[COLLECTION].find({"name": name, "at": {"$gte": since}}).sort("at", ASCENDING))


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
    docs: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    truth: Mapping[str, str],
    baseline: Mapping[str, Any] | None,
    thresholds: Any,
) -> dict[str, Any]:
    """``bridge compare``'s figures over ``docs`` (one shadow version's batches)."""
    keys: list[str] = []
    active: list[str] = []
    shadow: list[str] = []
    active_ms: list[float] = []
    shadow_ms: list[float] = []
    rows: list[list[float]] = []
    features: tuple[str, ...] = ()
    for doc in docs:
        keys += list(doc["keys"])
        active += list(doc["active_labels"])
        shadow += list(doc["shadow_labels"])
        active_ms += list(doc["active_ms"])
        shadow_ms += list(doc["shadow_ms"])
        rows += list(doc["matrix"])
        features = tuple(doc["features"])
    report = agreement(active, shadow, classes)
    report["latency"] = {"active": _percentiles(active_ms), "shadow": _percentiles(shadow_ms)}
    labelled = sum(1 for key in keys if key in truth)
    report["live_accuracy"] = {
        "labelled": labelled,
        "active": _accuracy(active, truth, keys),
        "shadow": _accuracy(shadow, truth, keys),
    }
    if baseline is None or not rows:
        report["drift"] = None
    else:
        sample = LiveSample(features, np.asarray(rows, dtype=float), shadow)
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
    by_version: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for doc in docs:
        by_version.setdefault((doc["active_version"], doc["shadow_version"]), []).append(doc)
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
