"""Baselines: what a version learned from, kept with the version for drift reports.

A **baseline** is stored with each version (field ``baseline`` of its ``model_versions``
document): per feature of the training split its count, mean, std, min, max, 101
quantiles (enough for a KS test) and ten decile bins (for the PSI); and the predicted-class
mix on the test split. It holds summaries only, never a patient's row. The store keeps
and reads it (``ModelStore.set_baseline``/``get_baseline``); this module computes it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from conf.contract import FEATURES
from conf.settings import Settings
from registry_bridge.entities import ModelVersion
from registry_bridge.errors import RegistryError
from registry_bridge.store import ModelStore

log = logging.getLogger(__name__)

QUANTILES = np.linspace(0.0, 1.0, 101)


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


def attach_baseline(
    store: ModelStore,
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
        store.set_baseline(version, baseline)
        return baseline
    except Exception as exc:  # never fail a publish over monitoring
        log.warning("%s published without a baseline: %s", version.label, exc)
        return None


def backfill_baseline(
    store: ModelStore, settings: Settings, version: ModelVersion
) -> tuple[bool, str]:
    """Give an older version its baseline from its MLflow run.

    Returns:
        (stored now, a sentence saying what happened).

    Raises:
        RegistryError: NOT_FOUND naming why the version has no baseline and cannot get one.
    """
    if store.get_baseline(version.name, version.version) is not None:
        return False, f"{version.label} already has a baseline"
    if not version.run_id:
        raise RegistryError(
            "NOT_FOUND", f"{version.label} has no baseline and no MLflow run to compute one from"
        )
    import tempfile

    from registry_bridge import runs

    client = runs.tracking_client(settings)
    with tempfile.TemporaryDirectory(prefix="bridge-baseline-") as tmp:
        card = runs.read_card(client, settings, version.run_id, Path(tmp) / "card")
    baseline = baseline_from_card(settings, card, version.data_fingerprint, version.run_id)
    store.set_baseline(version, baseline)
    rows = next(iter(baseline["features"].values()))["count"]
    return (
        True,
        f"{version.label}: baseline stored from run {version.run_id} ({rows} training rows)",
    )
