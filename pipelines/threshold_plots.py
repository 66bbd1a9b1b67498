"""The figures of a binary model's decision threshold (matplotlib, headless).

Apart from the study's figures (pipelines.plots) because a candidate draws them while it
is logged, before any study result exists.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from pipelines.metrics import threshold_sweep  # noqa: E402

BINARY_PLOT_FILES: tuple[str, ...] = ("roc_threshold.png", "metrics_vs_threshold.png")


def roc_with_thresholds(
    positive: np.ndarray, scores: np.ndarray, threshold: float, title: str
) -> Figure:
    """The ROC curve with the threshold of each point on a second axis, the chosen one marked."""
    fpr, tpr, thresholds = roc_curve(positive, scores)
    thresholds = np.clip(thresholds, 0.0, 1.0)  # the first one is +inf ("nothing positive")
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.plot(fpr, tpr, color="tab:blue", label=f"ROC (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    said = scores >= threshold
    chosen_fpr = float(np.mean(said[~positive])) if (~positive).any() else 0.0
    chosen_tpr = float(np.mean(said[positive])) if positive.any() else 0.0
    ax.scatter(
        [chosen_fpr], [chosen_tpr], color="black", zorder=3, label=f"threshold {threshold:.3f}"
    )
    ax.set(
        title=title,
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (sensitivity)",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3)
    second = ax.twinx()
    second.plot(fpr, thresholds, color="tab:red", linestyle=":", label="threshold")
    second.set_ylabel("threshold on P(positive)", color="tab:red")
    second.set_ylim(0, 1.02)
    lines = ax.get_legend_handles_labels()
    extra = second.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def metrics_against_threshold(
    positive: np.ndarray, scores: np.ndarray, threshold: float, title: str
) -> Figure:
    """Sensitivity, specificity, precision, NPV, accuracy and F1 for every threshold."""
    grid = np.linspace(0.0, 1.0, 101)
    sweep = threshold_sweep(positive, scores, grid)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for name in ("sensitivity", "specificity", "precision", "npv", "accuracy", "f1"):
        ax.plot(grid, sweep[name], label=name if name != "npv" else "NPV")
    ax.axvline(threshold, color="black", linestyle="--", label=f"chosen {threshold:.3f}")
    ax.set(
        title=title,
        xlabel="threshold on P(positive)",
        ylabel="metric on these rows",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower center", ncol=4, fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def binary_figures(
    positive: np.ndarray, scores: np.ndarray, threshold: float, family: str
) -> dict[str, Figure]:
    """The two threshold figures of a binary model, keyed by their BINARY_PLOT_FILES name."""
    positive = np.asarray(positive, dtype=bool)
    where = f"test split ({family.replace('_', ' ')})"
    return {
        "roc_threshold.png": roc_with_thresholds(
            positive, scores, threshold, f"ROC with thresholds, {where}"
        ),
        "metrics_vs_threshold.png": metrics_against_threshold(
            positive, scores, threshold, f"Metrics against the threshold, {where}"
        ),
    }


def roc_comparison(positive: np.ndarray, models: dict[str, tuple[np.ndarray, float]]) -> Figure:
    """ROC curves of several models on the same rows, each at its threshold (a dot)."""
    positive = np.asarray(positive, dtype=bool)
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (scores, threshold) in models.items():
        fpr, tpr, _ = roc_curve(positive, scores)
        (line,) = ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        said = scores >= threshold
        ax.scatter([np.mean(said[~positive])], [np.mean(said[positive])], color=line.get_color())
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(
        title="The lab's model against ours, same test rows",
        xlabel="false positive rate",
        ylabel="true positive rate",
    )
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return fig
