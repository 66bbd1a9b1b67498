"""Captured records as dicts, for tests: build a bucket from them, read them back.

The API writes buckets from arrays (api/capture.py) and the reports read columns, so
only tests need the record-by-record form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from registry_bridge.monitoring.inference_log import (
    MAX_LIVE_RECORDS,
    Entry,
    bucket,
    buckets,
)


def records_bucket(name: str, version: int, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A bucket from records shaped as :func:`captured_records` gives them .

    Missing keys are missing values: ``features`` and ``classes`` are the union of the
    records' ones, in order of appearance.
    """
    features: dict[str, None] = {}
    classes: dict[str, None] = {}
    for r in records:
        features.update(dict.fromkeys(r.get("features") or {}))
        classes.update(dict.fromkeys(r.get("probabilities") or {}))
    entries: list[Entry] = []
    for r in records:
        values = r.get("features") or {}
        probabilities = r.get("probabilities") or {}
        latency = r.get("latency_ms")
        entries.append(
            Entry(
                r["at"].timestamp(),
                r.get("source") or "",
                r.get("request_id") or "",
                None if latency is None else float(latency),
                np.array([[_number(values.get(f)) for f in features]]),
                [r.get("label")],
                np.array([[_number(probabilities.get(c)) for c in classes]]),
                [int(r.get("row") or 0)],
            )
        )
    return bucket(name, version, list(features), list(classes), entries)


def captured_records(
    db: Any, name: str, version: int | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The captured records of ``name`` (one version, since a time), newest bucket first."""
    cutoff = since.timestamp() if since is not None else -np.inf
    found: list[dict[str, Any]] = []
    for b in buckets(db, name, version, since):
        found.extend(r for r, at in zip(b.records(), b.at.tolist(), strict=True) if at >= cutoff)
        if len(found) >= MAX_LIVE_RECORDS:
            break
    return found[:MAX_LIVE_RECORDS]


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")
