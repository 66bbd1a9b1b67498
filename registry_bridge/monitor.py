"""Drift of what a version is asked against what it learned from: baselines, statistics, plots.

A **baseline** is stored with each version (field ``baseline`` of its ``model_versions``
document): per feature of the training split its count, mean, std, min, max, 101
quantiles (enough for a KS test) and ten decile bins (for the PSI); and the predicted-class
mix on the test split. It holds summaries only, never a patient's row.

Captured records (api/capture.py) are kept in ``inference_log`` as **columnar buckets**:
one document per (name, version) of each batch a worker writes, holding columns rather
than a list of record dicts, so a bucket of 500 records is ~20 BSON elements plus one
request id per request (the embedded server's CPU goes per element; the per-record
layout cost it ~60 µs per record). Layout (``format`` 1; little-endian numpy bytes in
``bson.Binary``, read back with ``np.frombuffer`` only, never unpickled)::

    {name, version, at, last_at,          # BSON dates: first and last record (TTL: last_at)
     count,                               # records
     format: 1,
     features: [names], classes: [names], # the columns of x and of p
     label_names: [names],                # classes, then any other label seen
     sources: [names],                    # endpoint names ("predict", "batch"...)
     request_ids: [id per request],       # {"request_ids": id} finds a request
     t: <f8 per request (epoch seconds), latency_ms: <f4 per request (NaN: unknown),
     source: <u1 per request (index into sources),
     request: <i4 per record (index into request_ids, t, latency_ms, source),
     row: <i4 per record (its row in the request or upload),
     x: <f4 count × features (NaN: missing), p: <f4 count × classes (NaN: no prediction),
     y: <i2 per record (index into label_names; -1: no prediction)}

:func:`bucket` is the only writer, :func:`read_bucket` the only reader (a document that
is not such a bucket raises :class:`MalformedBucket`; the reports log and skip it).

The **drift report** compares the records captured in ``inference_log``
since a time with that baseline: per feature the KS statistic (scipy's one-sample test
against the baseline's CDF), the PSI over the baseline's bins, the share of missing and of
out-of-range values and the sample size; the predicted-class mix against the baseline's.
A feature drifts when its PSI or KS reaches ``monitor.psi_threshold`` /
``monitor.ks_threshold``. The CLI (``bridge monitor``) and the API
(``GET /models/<name>/monitoring``) both call :func:`drift_report`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from bson.binary import Binary

from conf.contract import FEATURES
from conf.settings import MonitorSettings, Settings
from registry_bridge.entities import ModelVersion
from registry_bridge.errors import RegistryError
from registry_bridge.scoring.schema import shown

log = logging.getLogger(__name__)

INFERENCE_LOG = "inference_log"
BASELINE_FIELD = "baseline"
QUANTILES = np.linspace(0.0, 1.0, 101)
PSI_BINS = 10
# An empty bin would make the PSI infinite: its share is floored at this.
PSI_FLOOR = 1e-4
# Live records read for one report (the newest first): bounds memory and time.
MAX_LIVE_RECORDS = 100_000
DEFAULT_SINCE = "24h"
# ASCII digits only (\d would take "٣h" as 3 h), and few of them: the value is bounded below.
_SINCE = re.compile(r"^\s*([0-9]{1,9}(?:\.[0-9]{1,6})?)\s*([smhdw])\s*$")
# Ten years: longer than any capture retention, and far from datetime's range (a window
# of 800000d used to overflow the window's start into a 500).
MAX_SINCE = timedelta(days=3650)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# --- baselines ------------------------------------------------------------------------


def feature_baseline(values: np.ndarray) -> dict[str, Any]:
    """Summary statistics of one feature's training values (finite values only)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite value to summarise")
    quantiles = np.quantile(values, QUANTILES)
    # Decile edges, repeated values merged (a feature with many equal values has fewer bins).
    inner = np.unique(quantiles[10:-1:10])
    counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(inner) + 1)
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
        "quantiles": [float(q) for q in quantiles],
        "bin_edges": [float(e) for e in inner],
        "bin_counts": [int(c) for c in counts],
    }


def build_baseline(
    train: Mapping[str, np.ndarray], test_predictions: Sequence[str], source: str
) -> dict[str, Any]:
    """The baseline of a version: training-split feature statistics, test-split class mix.

    Args:
        train: feature name -> its values on the training split, in the model's order.
        test_predictions: the model's predicted labels on the test split.
        source: where the statistics came from (said by ``bridge monitor``).
    """
    mix = Counter(str(label) for label in test_predictions)
    total = sum(mix.values()) or 1
    return {
        "features": {name: feature_baseline(values) for name, values in train.items()},
        "class_mix": {label: count / total for label, count in sorted(mix.items())},
        "test_rows": int(sum(mix.values())),
        "source": source,
        "created_at": datetime.now(UTC).isoformat(),
    }


def training_rows(dataset: Any, test_inputs: Sequence[Sequence[float]]) -> np.ndarray:
    """The data set's rows that are not in the test split (the training split).

    The run's model card holds the whole test split; the training split is the rest of
    the data set it was cut from, whatever seed cut it.

    Raises:
        ValueError: a test row is not in the data set (it is not the run's data).
    """
    table = dataset.features[list(FEATURES)].to_numpy(dtype=float)
    remaining = Counter(tuple(np.round(row, 6)) for row in np.asarray(test_inputs, dtype=float))
    expected = sum(remaining.values())
    keep = np.ones(len(table), dtype=bool)
    for i, row in enumerate(table):
        key = tuple(np.round(row, 6))
        if remaining.get(key):
            remaining[key] -= 1
            keep[i] = False
    if sum(remaining.values()):
        raise ValueError(
            f"{sum(remaining.values())} of the {expected} test rows are not in the data set"
        )
    return table[keep]


def baseline_from_card(
    settings: Settings, card: Mapping[str, Any], fingerprint: str | None, run_id: str
) -> dict[str, Any]:
    """A version's baseline from its run's model card and the data set it was trained on.

    Raises:
        RegistryError: NOT_FOUND when the configured data is not the run's (fingerprint
            differs) or cannot be read; the message says which.
    """
    from dataclasses import replace

    from pipelines.data import DataError, load_dataset

    # The run's variant, not the configured one: a 2C run reads the 2-class file.
    data = replace(settings.data, variant=card.get("variant") or settings.data.variant)
    try:
        dataset = load_dataset(data)
    except (DataError, OSError) as exc:
        raise RegistryError(
            "NOT_FOUND", f"run {run_id}: its training data cannot be read ({exc})"
        ) from None
    if fingerprint and dataset.fingerprint != fingerprint:
        raise RegistryError(
            "NOT_FOUND",
            f"run {run_id} was trained on data {fingerprint[:12]}…, the configured data "
            f"({dataset.source}) is {dataset.fingerprint[:12]}…; set VERTEBRAL_DATA to its file",
        )
    evaluation = card.get("evaluation") or {}
    try:
        train = training_rows(dataset, evaluation.get("inputs") or [])
    except ValueError as exc:
        raise RegistryError("NOT_FOUND", f"run {run_id}: {exc}") from None
    features = [c["name"] for c in card.get("input_schema") or []] or list(FEATURES)
    columns = {name: train[:, FEATURES.index(name)] for name in features}
    return build_baseline(columns, evaluation.get("labels") or [], f"run {run_id}")


def store_baseline(store: Any, version: ModelVersion, baseline: Mapping[str, Any]) -> None:
    """Keep ``baseline`` in the version's document."""
    store.versions.update_one(
        {"name": version.name, "version": version.version},
        {"$set": {BASELINE_FIELD: dict(baseline)}},
    )


def read_baseline(store: Any, name: str, version: int) -> dict[str, Any] | None:
    """The stored baseline of a version, or None."""
    doc = store.versions.find_one({"name": name, "version": int(version)}, {BASELINE_FIELD: 1})
    return (doc or {}).get(BASELINE_FIELD)


def attach_baseline(
    store: Any,
    settings: Settings,
    version: ModelVersion,
    card: Mapping[str, Any],
    fingerprint: str | None,
) -> dict[str, Any] | None:
    """Compute and store a just-published version's baseline; a failure is logged, not raised.

    A version without a baseline still serves; ``bridge monitor`` says it has none.
    """
    try:
        baseline = baseline_from_card(settings, card, fingerprint, version.run_id or "?")
        store_baseline(store, version, baseline)
        return baseline
    except Exception as exc:  # never fail a publish over monitoring
        log.warning("%s published without a baseline: %s", version.label, exc)
        return None


def backfill_baseline(store: Any, settings: Settings, version: ModelVersion) -> tuple[bool, str]:
    """Give an older version its baseline from its MLflow run.

    Returns:
        (stored now, a sentence saying what happened).

    Raises:
        RegistryError: NOT_FOUND naming why the version has no baseline and cannot get one.
    """
    if read_baseline(store, version.name, version.version) is not None:
        return False, f"{version.label} already has a baseline"
    if not version.run_id:
        raise RegistryError(
            "NOT_FOUND", f"{version.label} has no baseline and no MLflow run to compute one from"
        )
    import tempfile

    from registry_bridge import publish

    client = publish._client(settings)
    with tempfile.TemporaryDirectory(prefix="bridge-baseline-") as tmp:
        card = publish._read_card(client, settings, version.run_id, Path(tmp) / "card")
    baseline = baseline_from_card(settings, card, version.data_fingerprint, version.run_id)
    store_baseline(store, version, baseline)
    rows = next(iter(baseline["features"].values()))["count"]
    return (
        True,
        f"{version.label}: baseline stored from run {version.run_id} ({rows} training rows)",
    )


# --- live data ------------------------------------------------------------------------


def parse_since(text: str) -> timedelta:
    """``"24h"``, ``"30m"``, ``"7d"``… as a duration.

    Raises:
        RegistryError: INVALID_INPUT naming the value.
    """
    text = str(text)
    match = _SINCE.match(text) if len(text) <= 40 else None
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else 0.0
    if not 0 < seconds <= MAX_SINCE.total_seconds():
        raise RegistryError(
            "INVALID_INPUT",
            "since must be a positive duration up to 3650d such as 30m, 24h or 7d, "
            f"got {shown(text)!r}",
            [{"field": "since", "problem": "not a duration"}],
        )
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class LiveSample:
    """Captured records of one version: a feature matrix (NaN = missing) and the labels."""

    features: tuple[str, ...]
    matrix: np.ndarray
    labels: list[str]

    @property
    def size(self) -> int:
        return len(self.labels)


# --- captured records: the columnar buckets of inference_log ------------------------

BUCKET_FORMAT = 1


class Entry(NamedTuple):
    """One captured request as api/capture.py queues it (a tuple: cheap for a request to
    build, read by name here)."""

    t: float  # epoch seconds
    source: str  # the endpoint: "predict", "invocations", "batch"
    request_id: str
    latency_ms: float | None
    x: np.ndarray  # records × features
    labels: Sequence[str | None]  # None or "": no prediction
    p: np.ndarray  # records × classes, NaN: no prediction
    rows: Sequence[int] | np.ndarray | None  # the records' rows; None: 0..n-1


def bucket(
    name: str,
    version: int,
    features: Sequence[str],
    classes: Sequence[str],
    entries: Sequence[Entry],
) -> dict[str, Any]:
    """The ``inference_log`` document holding the captured requests ``entries`` of one
    version, as columns (the layout is in the module docstring). The only writer of buckets.

    Raises:
        ValueError: an entry's arrays do not match its labels, the features or the classes.
    """
    width, depth = len(features), len(classes)
    counts = [len(e.labels) for e in entries]
    count = sum(counts)
    # One numpy call per column, not per request: the writer shares the API worker's cores.
    x = _stacked([e.x for e in entries], count, width, "features")
    p = _stacked([e.p for e in entries], count, depth, "classes")
    starts = np.cumsum(counts) - counts
    rows = np.arange(count, dtype="<i4") - np.repeat(starts, counts).astype("<i4")
    for entry, first, n in zip(entries, starts.tolist(), counts, strict=True):
        if entry.rows is not None:  # batch rows: their row in the upload
            rows[first : first + n] = entry.rows
    label_names = list(classes)
    codes: dict[str | None, int] = {c: i for i, c in enumerate(label_names)}
    codes[None] = codes[""] = -1
    y_codes = []
    for entry in entries:
        for label in entry.labels:
            code = codes.get(label)
            if code is None:  # a label the version does not list: kept all the same
                code = codes[label] = len(label_names)
                label_names.append(str(label))
            y_codes.append(code)
    sources: dict[str, int] = {}
    source = [sources.setdefault(e.source, len(sources)) for e in entries]
    if len(sources) > 255:
        raise ValueError("more than 255 sources in one bucket")
    t = np.array([e.t for e in entries], dtype="<f8")
    latency = np.array(
        [np.nan if e.latency_ms is None else e.latency_ms for e in entries], dtype="<f4"
    )
    return {
        "name": name,
        "version": int(version),
        "at": datetime.fromtimestamp(float(t.min()), UTC) if t.size else datetime.now(UTC),
        "last_at": datetime.fromtimestamp(float(t.max()), UTC) if t.size else datetime.now(UTC),
        "count": count,
        "format": BUCKET_FORMAT,
        "features": list(features),
        "classes": list(classes),
        "label_names": label_names,
        "sources": list(sources),
        "request_ids": [str(e.request_id) for e in entries],
        "t": Binary(t.tobytes()),
        "latency_ms": Binary(latency.tobytes()),
        "source": Binary(np.array(source, dtype="<u1").tobytes()),
        "request": Binary(np.repeat(np.arange(len(entries), dtype="<i4"), counts).tobytes()),
        "row": Binary(rows.tobytes()),
        "x": Binary(x.tobytes()),
        "p": Binary(p.tobytes()),
        "y": Binary(np.array(y_codes, dtype="<i2").tobytes()),
    }


def _stacked(parts: list[np.ndarray], count: int, width: int, what: str) -> np.ndarray:
    """The requests' ``count × width`` arrays as one little-endian float32 array."""
    if not parts:
        return np.empty((0, width), dtype="<f4")
    stacked = np.concatenate(parts, axis=0, dtype="<f4", casting="same_kind")
    if stacked.shape != (count, width):
        raise ValueError(f"records of shape {stacked.shape[1:]} for {width} {what}")
    return stacked


def records_bucket(name: str, version: int, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A bucket from records shaped as :func:`captured_records` gives them (tests, imports).

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


class MalformedBucket(ValueError):
    """An ``inference_log`` document that is not a readable bucket."""


@dataclass(frozen=True)
class Bucket:
    """One bucket read back: per record its time, features, label, probabilities and the
    request it came from (columns, never a record dict)."""

    name: str
    version: int
    features: tuple[str, ...]
    classes: tuple[str, ...]
    at: np.ndarray  # float64 epoch seconds, per record
    x: np.ndarray  # float32 records × features, NaN = missing
    p: np.ndarray  # float32 records × classes, NaN = no prediction
    labels: list[str | None]  # None = no prediction
    rows: np.ndarray  # the record's row in its request or upload
    request: np.ndarray  # per record: its index into request_ids, sources, latency_ms
    request_ids: list[str]
    sources: list[str]  # per request
    latency_ms: np.ndarray  # float32 per request, NaN = unknown

    @property
    def count(self) -> int:
        return len(self.labels)

    def column(self, feature: str) -> np.ndarray:
        """One feature's values as float64 (all NaN when the bucket does not hold it)."""
        if feature in self.features:
            return self.x[:, self.features.index(feature)].astype(float)
        return np.full(self.count, np.nan)

    def records(self) -> Iterator[dict[str, Any]]:
        """The records as dicts (what an operator or a test reads; reports use columns)."""
        features, classes = self.features, self.classes
        for i in range(self.count):
            j = int(self.request[i])
            latency = float(self.latency_ms[j])
            label = self.labels[i]
            values, probabilities = self.x[i].tolist(), self.p[i].tolist()
            yield {
                "name": self.name,
                "version": self.version,
                "at": datetime.fromtimestamp(float(self.at[i]), UTC),
                "source": self.sources[j],
                "request_id": self.request_ids[j],
                "row": int(self.rows[i]),
                "features": {f: _finite(v) for f, v in zip(features, values, strict=True)},
                "label": label,
                "probabilities": (
                    {c: _finite(v) for c, v in zip(classes, probabilities, strict=True)}
                    if label is not None
                    else None
                ),
                "latency_ms": latency if np.isfinite(latency) else None,
            }


def read_bucket(doc: Mapping[str, Any]) -> Bucket:
    """A stored bucket's columns (``np.frombuffer`` of its bytes, never unpickled).

    Raises:
        MalformedBucket: not a bucket of this format, or its columns do not fit together.
    """
    try:
        return _read_bucket(doc)
    except MalformedBucket:
        raise
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise MalformedBucket(f"{type(exc).__name__}: {exc}") from None


def _read_bucket(doc: Mapping[str, Any]) -> Bucket:
    if doc.get("format") != BUCKET_FORMAT:
        raise MalformedBucket(
            f"format {doc.get('format')!r}, not {BUCKET_FORMAT}"
            + (" (a per-record bucket of an older release)" if "records" in doc else "")
        )
    count = int(doc["count"])
    features = _names(doc, "features")
    classes = _names(doc, "classes")
    label_names = _names(doc, "label_names")
    source_names = _names(doc, "sources")
    request_ids = _names(doc, "request_ids")
    requests = len(request_ids)
    t = _binary(doc, "t", "<f8", requests)
    latency = _binary(doc, "latency_ms", "<f4", requests)
    source = _binary(doc, "source", "<u1", requests)
    request = _binary(doc, "request", "<i4", count)
    y = _binary(doc, "y", "<i2", count)
    if count < 0 or (count and not requests):
        raise MalformedBucket(f"count {count} with {requests} request(s)")
    if request.size and (request.min() < 0 or request.max() >= requests):
        raise MalformedBucket("a record points to no request")
    if source.size and source.max() >= len(source_names):
        raise MalformedBucket("a request has no source name")
    if y.size and (y.min() < -1 or y.max() >= len(label_names)):
        raise MalformedBucket("a record's label is not among label_names")
    names: list[str | None] = [*label_names, None]  # code -1: the last, no prediction
    return Bucket(
        name=str(doc["name"]),
        version=int(doc["version"]),
        features=features,
        classes=classes,
        at=t[request],
        x=_binary(doc, "x", "<f4", count * len(features)).reshape(count, len(features)),
        p=_binary(doc, "p", "<f4", count * len(classes)).reshape(count, len(classes)),
        labels=[names[code] for code in y.tolist()],
        rows=_binary(doc, "row", "<i4", count),
        request=request,
        request_ids=list(request_ids),
        sources=[source_names[code] for code in source.tolist()],
        latency_ms=latency,
    )


def _names(doc: Mapping[str, Any], field: str) -> tuple[str, ...]:
    value = doc[field]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedBucket(f"{field} is not a list of strings")
    return tuple(value)


def _binary(doc: Mapping[str, Any], field: str, dtype: str, size: int) -> np.ndarray:
    value = doc[field]
    if not isinstance(value, bytes):  # bson.Binary is bytes; anything else is refused
        raise MalformedBucket(f"{field} is not binary")
    if len(value) != size * np.dtype(dtype).itemsize:
        raise MalformedBucket(f"{field} holds {len(value)} bytes, not {size} × {dtype}")
    return np.frombuffer(value, dtype=dtype)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def buckets(
    db: Any, name: str, version: int | None = None, since: datetime | None = None
) -> Iterator[Bucket]:
    """The readable buckets of ``name`` (one version, with records since a time), newest
    first; a malformed one is logged and skipped, never failing a report."""
    query: dict[str, Any] = {"name": name}
    if version is not None:
        query["version"] = int(version)
    if since is not None:
        query["last_at"] = {"$gte": since}
    for doc in db[INFERENCE_LOG].find(query).sort("last_at", -1):
        try:
            yield read_bucket(doc)
        except MalformedBucket as exc:
            log.warning("%s document %s skipped: %s", INFERENCE_LOG, doc.get("_id"), exc)


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


def read_live(
    db: Any, name: str, version: int, features: Sequence[str], since: datetime
) -> LiveSample:
    """The version's captured records since ``since`` (the newest MAX_LIVE_RECORDS)."""
    cutoff = since.timestamp()
    parts: list[np.ndarray] = []
    labels: list[str] = []
    for b in buckets(db, name, version, since):
        keep = b.at >= cutoff
        columns = [b.column(f)[keep] for f in features]
        parts.append(np.stack(columns, axis=1) if columns else np.empty((int(keep.sum()), 0)))
        kept = keep.tolist()
        labels.extend(label or "" for label, k in zip(b.labels, kept, strict=True) if k)
        if len(labels) >= MAX_LIVE_RECORDS:
            break
    matrix = np.concatenate(parts) if parts else np.empty((0, len(features)))
    return LiveSample(tuple(features), matrix[:MAX_LIVE_RECORDS], labels[:MAX_LIVE_RECORDS])


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


# --- statistics -----------------------------------------------------------------------


def baseline_cdf(feature: Mapping[str, Any]) -> Any:
    """The baseline's CDF, interpolated between its quantiles (0 below min, 1 above max)."""
    xs = np.asarray(feature["quantiles"], dtype=float)
    # Equal quantiles (an atom): keep the highest probability at that value.
    xs, last = np.unique(xs[::-1], return_index=True)
    ps = QUANTILES[::-1][last]

    def cdf(x: np.ndarray) -> np.ndarray:
        return np.interp(x, xs, ps, left=0.0, right=1.0)

    return cdf


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=float), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_shares(feature: Mapping[str, Any], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(baseline shares, live shares) over the baseline's bins (outer bins open-ended)."""
    edges = np.asarray(feature["bin_edges"], dtype=float)
    base = np.asarray(feature["bin_counts"], dtype=float)
    live = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(base))
    return base / max(base.sum(), 1.0), live / max(live.sum(), 1)


def feature_drift(
    name: str, feature: Mapping[str, Any], column: np.ndarray, thresholds: MonitorSettings
) -> dict[str, Any]:
    """One feature's drift figures (``drift`` is None when the sample is too small)."""
    present = column[np.isfinite(column)]
    n = int(column.size)
    result: dict[str, Any] = {
        "name": name,
        "sample_size": int(present.size),
        "missing_share": float(1 - present.size / n) if n else 0.0,
        "out_of_range_share": (
            float(np.mean((present < feature["min"]) | (present > feature["max"])))
            if present.size
            else 0.0
        ),
        "baseline_mean": feature["mean"],
        "live_mean": float(present.mean()) if present.size else None,
        "ks": None,
        "ks_pvalue": None,
        "psi": None,
        # drift is always true or false (DESIGN.md); judged says whether there were enough
        "drift": False,
        "judged": bool(present.size >= thresholds.min_samples),
    }
    if present.size == 0:
        return result
    # Imported here: scipy.stats is ~60 MB of every API worker's memory otherwise, for a
    # report that runs now and then.
    from scipy import stats

    test = stats.kstest(present, baseline_cdf(feature))
    expected, actual = bin_shares(feature, present)
    result.update(ks=float(test.statistic), ks_pvalue=float(test.pvalue), psi=psi(expected, actual))
    result["drift"] = result["judged"] and bool(
        result["ks"] >= thresholds.ks_threshold or result["psi"] >= thresholds.psi_threshold
    )
    return result


def class_mix_drift(
    baseline_mix: Mapping[str, float], labels: Sequence[str], thresholds: MonitorSettings
) -> dict[str, Any]:
    """Predicted-class shares live against the baseline's, with their PSI (rows without a
    prediction, a batch row with a bad cell, are left out)."""
    counts = Counter(label for label in labels if label)
    total = sum(counts.values())
    classes = sorted(set(baseline_mix) | set(counts))
    live = {c: (counts.get(c, 0) / total if total else 0.0) for c in classes}
    value = psi(
        np.array([baseline_mix.get(c, 0.0) for c in classes]),
        np.array([live[c] for c in classes]),
    )
    return {
        "baseline": {c: float(baseline_mix.get(c, 0.0)) for c in classes},
        "live": live,
        "psi": value if total else None,
        "drift": bool(total >= thresholds.min_samples and value >= thresholds.psi_threshold),
        "judged": total >= thresholds.min_samples,
    }


def compare(
    baseline: Mapping[str, Any], sample: LiveSample, thresholds: MonitorSettings
) -> dict[str, Any]:
    """Per-feature drift and the class mix of ``sample`` against ``baseline``."""
    features = [
        feature_drift(name, baseline["features"][name], sample.matrix[:, i], thresholds)
        for i, name in enumerate(sample.features)
        if name in baseline["features"]
    ]
    mix = class_mix_drift(baseline.get("class_mix") or {}, sample.labels, thresholds)
    drifted = [f["name"] for f in features if f["drift"]]
    if sample.size < thresholds.min_samples:
        status = "insufficient_data"
    elif drifted or mix["drift"]:
        status = "drift"
    else:
        status = "ok"
    return {
        "sample_size": sample.size,
        "status": status,
        "drift": status == "drift",
        "drifted_features": drifted,
        "features": features,
        "class_mix": mix,
        "thresholds": {
            "psi": thresholds.psi_threshold,
            "ks": thresholds.ks_threshold,
            "min_samples": thresholds.min_samples,
        },
    }


# --- the report -----------------------------------------------------------------------


def resolve_version(store: Any, name: str, version: int | str | None) -> ModelVersion:
    """The asked version, else the active one, else the newest.

    Raises:
        RegistryError: NOT_FOUND when ``name`` has no version.
    """
    if version is not None:
        return store.get_model_version(name, version)
    state = store.get_active_version(name)
    if state is not None:
        return store.get_model_version(name, state.active_version)
    versions = store.search_model_versions(name)
    if not versions:
        raise RegistryError("NOT_FOUND", f"no version of {name!r} is published")
    return versions[-1]


def drift_report(
    store: Any,
    settings: Settings,
    name: str,
    version: int | str | None = None,
    since: str = DEFAULT_SINCE,
    now: datetime | None = None,
) -> dict[str, Any]:
    """What ``bridge monitor`` and ``GET /models/<name>/monitoring`` answer.

    ``status`` is ``drift``, ``ok``, ``insufficient_data`` or ``no_baseline``.

    Raises:
        RegistryError: NOT_FOUND for an unknown name or version, INVALID_INPUT for ``since``.
    """
    window = parse_since(since)
    found = resolve_version(store, name, version)
    until = now or datetime.now(UTC)
    start = until - window
    head = {
        "name": found.name,
        "version": found.version,
        "since": start.isoformat(),
        "until": until.isoformat(),
        "window": since,
    }
    baseline = read_baseline(store, found.name, found.version)
    if baseline is None:
        return {
            **head,
            "status": "no_baseline",
            "drift": False,
            "message": f"{found.label} has no baseline; `bridge verify {found.name} "
            f"{found.version} --baseline` computes it from its MLflow run",
            "sample_size": count_captured(store.db, found.name, found.version, start),
            "features": [],
        }
    features = [c["name"] for c in found.input_schema]
    sample = read_live(store.db, found.name, found.version, features, start)
    return {
        **head,
        "baseline_source": baseline.get("source"),
        **compare(baseline, sample, settings.monitor),
    }


def newest_capture(db: Any, name: str, version: int) -> Any:
    """The id of the version's newest captured bucket (None: none): a report or plot
    computed when this was newest still describes the data."""
    doc = db[INFERENCE_LOG].find_one(
        {"name": name, "version": int(version)}, {"_id": 1}, sort=[("last_at", -1), ("_id", -1)]
    )
    return None if doc is None else doc["_id"]


def count_captured(
    db: Any, name: str, version: int | None = None, since: datetime | None = None
) -> int:
    """Captured records of ``name`` (one version, since a time, when given)."""
    query: dict[str, Any] = {"name": name}
    if version is not None:
        query["version"] = int(version)
    if since is not None:
        query["last_at"] = {"$gte": since}
    total = 0
    for doc in db[INFERENCE_LOG].find(query, {"count": 1, "at": 1}):
        at, count = doc.get("at"), doc.get("count")
        if isinstance(count, int) and isinstance(at, datetime) and (since is None or at >= since):
            total += count
            continue
        # A bucket across the start of the window (or not a bucket): read its records.
        try:
            whole = read_bucket(db[INFERENCE_LOG].find_one({"_id": doc["_id"]}) or {})
        except MalformedBucket as exc:
            log.warning("%s document %s skipped: %s", INFERENCE_LOG, doc["_id"], exc)
            continue
        cutoff = since.timestamp() if since is not None else -np.inf
        total += int(np.count_nonzero(whole.at >= cutoff))
    return total


# --- plots ----------------------------------------------------------------------------


def plot_feature(feature: Mapping[str, Any], values: np.ndarray, title: str) -> bytes:
    """PNG of the baseline's histogram against the live one, over the baseline's bins."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # headless
    from matplotlib.figure import Figure

    values = values[np.isfinite(values)]
    edges = np.asarray(feature["bin_edges"], dtype=float)
    low = min(feature["min"], float(values.min()) if values.size else feature["min"])
    high = max(feature["max"], float(values.max()) if values.size else feature["max"])
    full = np.concatenate([[low], edges, [high if high > edges[-1] else edges[-1] + 1e-9]])
    widths = np.maximum(np.diff(full), 1e-9)
    base_share, live_share = bin_shares(feature, values)
    figure = Figure(figsize=(5, 3), dpi=90)
    axes = figure.subplots()
    axes.stairs(base_share / widths, full, fill=True, alpha=0.4, label="training baseline")
    if values.size:
        axes.stairs(
            live_share / widths, full, linewidth=2, label=f"live (n={values.size})", color="C3"
        )
    # The middle 98 % of both samples: one far outlier would squeeze the rest to a line.
    quantiles = feature["quantiles"]
    left = min(quantiles[1], float(np.quantile(values, 0.01)) if values.size else quantiles[1])
    right = max(quantiles[99], float(np.quantile(values, 0.99)) if values.size else quantiles[99])
    if right > left:
        margin = 0.05 * (right - left)
        axes.set_xlim(left - margin, right + margin)
    axes.set_title(title, fontsize=10)
    axes.set_ylabel("density")
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _plot_inputs(
    store: Any, name: str, version: int | str, features: Sequence[str] | None, since: str
) -> tuple[ModelVersion, dict[str, Any], LiveSample]:
    found = store.get_model_version(name, version)
    baseline = read_baseline(store, found.name, found.version)
    known = (baseline or {}).get("features", {})
    wanted = list(features) if features is not None else list(known)
    unknown = [f for f in wanted if f not in known]
    if baseline is None or unknown:
        raise RegistryError(
            "NOT_FOUND",
            f"{found.label} has no baseline"
            + (f" for feature {', '.join(unknown)}" if baseline is not None else ""),
            [{"field": "feature", "problem": "unknown or no baseline"}],
        )
    start = datetime.now(UTC) - parse_since(since)
    return found, known, read_live(store.db, found.name, found.version, wanted, start)


def feature_plot(
    store: Any, name: str, version: int | str, feature: str, since: str = DEFAULT_SINCE
) -> bytes:
    """The PNG of one feature of one version (what the console shows).

    Raises:
        RegistryError: NOT_FOUND for an unknown feature or a version without a baseline.
    """
    found, known, sample = _plot_inputs(store, name, version, [feature], since)
    return plot_feature(known[feature], sample.matrix[:, 0], f"{feature} ({found.label})")


def write_plots(
    store: Any, name: str, version: int | str, directory: Path, since: str = DEFAULT_SINCE
) -> list[Path]:
    """One PNG per feature of a version with a baseline, in ``directory``; returns the paths."""
    found, known, sample = _plot_inputs(store, name, version, None, since)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, feature in enumerate(sample.features):
        path = directory / f"drift-{found.name}-v{found.version}-{feature}.png"
        path.write_bytes(
            plot_feature(known[feature], sample.matrix[:, i], f"{feature} ({found.label})")
        )
        paths.append(path)
    return paths
