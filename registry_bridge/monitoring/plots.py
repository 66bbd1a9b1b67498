"""Drift plots: each feature's live histogram over its baseline's (matplotlib, PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from registry_bridge.entities import ModelVersion
from registry_bridge.errors import RegistryError
from registry_bridge.monitoring.drift import DEFAULT_SINCE, bin_shares, parse_since
from registry_bridge.monitoring.inference_log import LiveSample, read_live
from registry_bridge.store import ModelStore


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
    store: ModelStore, name: str, version: int | str, features: Sequence[str] | None, since: str
) -> tuple[ModelVersion, dict[str, Any], LiveSample]:
    found = store.resolve_model_version(name, version)
    baseline = store.get_baseline(found.name, found.version)
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
    store: ModelStore, name: str, version: int | str, feature: str, since: str = DEFAULT_SINCE
) -> bytes:
    """The PNG of one feature of one version (what the console shows).

    Raises:
        RegistryError: NOT_FOUND for an unknown feature or a version without a baseline.
    """
    found, known, sample = _plot_inputs(store, name, version, [feature], since)
    return plot_feature(known[feature], sample.matrix[:, 0], f"{feature} ({found.label})")


def write_plots(
    store: ModelStore, name: str, version: int | str, directory: Path, since: str = DEFAULT_SINCE
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
