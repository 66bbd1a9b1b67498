"""Drift: the records captured since a time against the version's training baseline.

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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from conf.settings import MonitorSettings, Settings
from registry_bridge.errors import RegistryError
from registry_bridge.monitoring.baselines import QUANTILES
from registry_bridge.monitoring.inference_log import (
    LiveSample,
    count_captured,
    read_live,
)
from registry_bridge.scoring.schema import shown
from registry_bridge.store import ModelStore

log = logging.getLogger(__name__)

# An empty bin would make the PSI infinite: its share is floored at this.
PSI_FLOOR = 1e-4
DEFAULT_SINCE = "24h"
# ASCII digits only (\d would take "٣h" as 3 h), and few of them: the value is bounded below.
_SINCE = re.compile(r"^\s*([0-9]{1,9}(?:\.[0-9]{1,6})?)\s*([smhdw])\s*$")
# Ten years: longer than any capture retention, and far from datetime's range (a window
# of 800000d used to overflow the window's start into a 500).
MAX_SINCE = timedelta(days=3650)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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


def drift_report(
    store: ModelStore,
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
    found = store.resolve_model_version(name, version, fallback="newest")
    until = now or datetime.now(UTC)
    start = until - window
    head = {
        "name": found.name,
        "version": found.version,
        "since": start.isoformat(),
        "until": until.isoformat(),
        "window": since,
    }
    baseline = store.get_baseline(found.name, found.version)
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
