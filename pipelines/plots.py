"""The study's figures (matplotlib, headless): one PNG each, written to a directory.

Each function takes what it draws and returns a Figure; :func:`write_plots` draws them
all for a finished study. The figures are for people comparing models, so every one
has a title, labelled axes and a legend where there is more than one series.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.inspection import permutation_importance  # noqa: E402
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    auc,
    average_precision_score,  # noqa: E402
    precision_recall_curve,
    roc_curve,
)

from conf.contract import FAMILIES, FEATURES, cv_mean_key, cv_std_key  # noqa: E402
from pipelines.families import get_family  # noqa: E402
from pipelines.threshold_plots import binary_figures  # noqa: E402

if TYPE_CHECKING:
    from pipelines.results import StudyResult

log = logging.getLogger(__name__)

PLOT_FILES: tuple[str, ...] = (
    "optimization_history.png",
    "hyperparameter_importances.png",
    "best_score_by_family.png",
    "confusion_matrix.png",
    "roc_curves.png",
    "precision_recall_curves.png",
    "calibration_curves.png",
    "permutation_importance.png",
    "feature_distributions.png",
)

# A binary winner's figures besides PLOT_FILES: the course lab's threshold views.


def _family_colour(family: str) -> str | None:
    # Matplotlib's cycle by the family's position: stable across plots, no table to extend.
    return f"C{FAMILIES.index(family) % 10}" if family in FAMILIES else None


def _label(name: str) -> str:
    return name.replace("_", " ")


def optimization_history(result: StudyResult) -> Figure:
    """Each trial's CV score by family, pruned trials crossed, and the best so far."""
    fig, ax = plt.subplots(figsize=(9, 5))
    best_so_far: list[float] = []
    for family in dict.fromkeys(t.family for t in result.trials):
        scored = [
            (t.state, t.number, t.score)
            for t in result.trials
            if t.family == family and t.score is not None
        ]
        complete = [(number, score) for state, number, score in scored if state == "complete"]
        pruned = [(number, score) for state, number, score in scored if state == "pruned"]
        colour = _family_colour(family)
        ax.scatter(
            [number for number, _ in complete],
            [score for _, score in complete],
            color=colour,
            label=_label(family),
            s=36,
        )
        if pruned:
            ax.scatter(
                [number for number, _ in pruned],
                [score for _, score in pruned],
                color=colour,
                marker="x",
                s=36,
            )
    running = -np.inf
    numbers = []
    for trial in sorted(result.trials, key=lambda t: t.number):
        if trial.state == "complete" and trial.score is not None:
            running = max(running, trial.score)
        if np.isfinite(running):
            numbers.append(trial.number)
            best_so_far.append(running)
    ax.step(numbers, best_so_far, where="post", color="black", label="best so far")
    ax.scatter([], [], color="grey", marker="x", label="pruned (last fold mean)")
    ax.set(
        title=f"Optimisation history ({len(result.trials)} trials)",
        xlabel="trial",
        ylabel=f"CV {_label(result.objective)} (mean)",
    )
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def hyperparameter_importances(result: StudyResult, seed: int) -> Figure:
    """fANOVA importance of each family's hyperparameters, from that family's trials."""
    families = [c.family for c in result.candidates]
    columns = min(3, len(families))
    rows = -(-len(families) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(families) :]:
        ax.set_visible(False)
    for ax, family in zip(axes.flat, families, strict=False):
        spec = get_family(family)
        names = [f"{spec.prefix}_{p.name}" for p in spec.params]
        complete = [
            t
            for t in result.study.trials
            if t.state == optuna.trial.TrialState.COMPLETE
            and t.params.get("model_family") == family
        ]
        importances: dict[str, float] = {}
        if len(complete) >= 3:
            try:
                importances = optuna.importance.get_param_importances(
                    result.study,
                    params=names,
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed),
                )
            except (RuntimeError, ValueError) as exc:  # too few distinct values
                log.debug("no importances for %s: %s", family, exc)
        if importances:
            keys = list(importances)[::-1]
            ax.barh(
                [k.split("_", 1)[1] for k in keys],
                [importances[k] for k in keys],
                color=_family_colour(family),
            )
            ax.set_xlim(0, 1)
        else:
            ax.text(
                0.5,
                0.5,
                f"{len(complete)} complete trial(s):\ntoo few to rank",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            ax.set_yticks([])
        ax.set(title=_label(family), xlabel="importance (fANOVA)")
    fig.suptitle("Hyperparameter importances per model family")
    fig.tight_layout()
    return fig


def best_score_by_family(result: StudyResult) -> Figure:
    """The best trial's CV score (± std) and test score of each family."""
    candidates = result.candidates
    x = np.arange(len(candidates))
    cv = [c.trial.cv_metrics[cv_mean_key(result.objective)] for c in candidates]
    std = [c.trial.cv_metrics[cv_std_key(result.objective)] for c in candidates]
    test = [c.evaluation.metrics[f"test_{result.objective}"] for c in candidates]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(x - 0.2, cv, 0.4, yerr=std, capsize=4, label="CV (train split)", color="tab:blue")
    ax.bar(x + 0.2, test, 0.4, label="test split", color="tab:orange")
    ax.set_xticks(x, [_label(c.family) for c in candidates])
    ax.set(
        title=f"Best {_label(result.objective)} per model family",
        xlabel="model family (best trial)",
        ylabel=_label(result.objective),
        ylim=(0, 1.05),
    )
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig


def confusion_matrix(result: StudyResult) -> Figure:
    """The winner's confusion matrix on the test split."""
    winner = result.winner
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ConfusionMatrixDisplay.from_predictions(
        result.split.y_test,
        winner.evaluation.labels,
        labels=list(winner.evaluation.classes),
        ax=ax,
        colorbar=False,
        cmap="Blues",
    )
    ax.set(
        title=f"Confusion matrix, test split ({_label(winner.family)})",
        xlabel="predicted class",
        ylabel="true class",
    )
    fig.tight_layout()
    return fig


def _one_vs_rest(result: StudyResult, kind: str) -> Figure:
    winner = result.winner
    y_true = np.asarray(result.split.y_test)
    fig, ax = plt.subplots(figsize=(6, 5))
    for index, cls in enumerate(winner.evaluation.classes):
        positive = y_true == cls
        scores = winner.evaluation.probabilities[:, index]
        if kind == "roc":
            fpr, tpr, _ = roc_curve(positive, scores)
            ax.plot(fpr, tpr, label=f"{cls} (AUC {auc(fpr, tpr):.3f})")
        else:
            precision, recall, _ = precision_recall_curve(positive, scores)
            ax.plot(
                recall,
                precision,
                label=f"{cls} (AP {average_precision_score(positive, scores):.3f})",
            )
    if kind == "roc":
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
        ax.set(
            title=f"ROC curves, one-vs-rest, test split ({_label(winner.family)})",
            xlabel="false positive rate",
            ylabel="true positive rate",
        )
    else:
        ax.set(
            title=f"Precision-recall, one-vs-rest, test split ({_label(winner.family)})",
            xlabel="recall",
            ylabel="precision",
        )
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def calibration_curves(result: StudyResult) -> Figure:
    """Reliability of every candidate's probabilities, one panel per class (test split)."""
    classes = result.winner.evaluation.classes
    y_true = np.asarray(result.split.y_test)
    fig, axes = plt.subplots(1, len(classes), figsize=(4.5 * len(classes), 4.5), squeeze=False)
    for index, (ax, cls) in enumerate(zip(axes[0], classes, strict=False)):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
        for candidate in result.candidates:
            column = list(candidate.evaluation.classes).index(cls)
            # Few test rows per class: 5 quantile bins keep each point meaningful.
            true_rate, predicted = calibration_curve(
                y_true == cls,
                candidate.evaluation.probabilities[:, column],
                n_bins=5,
                strategy="quantile",
            )
            ax.plot(
                predicted,
                true_rate,
                marker="o",
                label=_label(candidate.family),
                color=_family_colour(candidate.family),
            )
        ax.set(
            title=f"{cls} vs rest",
            xlabel="mean predicted probability",
            ylabel="observed frequency",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        if index == 0:
            ax.legend(loc="upper left", fontsize="small")
    fig.suptitle("Calibration curves on the test split")
    fig.tight_layout()
    return fig


def permutation_feature_importance(result: StudyResult, seed: int) -> Figure:
    """How much the winner's test score drops when each feature is shuffled."""
    winner = result.winner
    scoring = {
        "f1_macro": "f1_macro",
        "balanced_accuracy": "balanced_accuracy",
        "accuracy": "accuracy",
        "roc_auc_ovr": "roc_auc_ovr",
    }[result.objective]
    importance = permutation_importance(
        winner.pipeline,
        result.split.x_test,
        result.split.y_test,
        scoring=scoring,
        n_repeats=10,
        random_state=seed,
        n_jobs=1,
    )
    order = np.argsort(importance.importances_mean)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.boxplot(
        importance.importances[order].T,
        vert=False,
        tick_labels=[_label(FEATURES[i]) for i in order],
    )
    ax.axvline(0, color="grey", linestyle="--")
    ax.set(
        title=f"Permutation feature importance, test split ({_label(winner.family)})",
        xlabel=f"drop in {_label(result.objective)} (10 shuffles)",
    )
    fig.tight_layout()
    return fig


def feature_distributions(result: StudyResult) -> Figure:
    """Each feature's distribution per class over the whole data set."""
    features, labels = result.dataset.features, result.dataset.labels
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, name in zip(axes.flat, FEATURES, strict=False):
        bins = np.histogram_bin_edges(features[name], bins=25)
        for cls in result.dataset.classes:
            # Outlines, not filled bars: three overlapping classes stay readable.
            ax.hist(
                features.loc[labels == cls, name],
                bins=bins,
                histtype="step",
                linewidth=1.8,
                label=cls,
            )
        ax.set(title=_label(name), xlabel="value", ylabel="rows")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle("Feature distributions by class (whole data set)")
    fig.tight_layout()
    return fig


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, bbox_inches="tight")  # long tick labels stay inside
    plt.close(figure)
    return path


def write_plots(result: StudyResult, directory: Path, seed: int) -> list[Path]:
    """Draw every figure of a finished study into ``directory``; returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Callable[[], Figure]] = {
        "optimization_history.png": lambda: optimization_history(result),
        "hyperparameter_importances.png": lambda: hyperparameter_importances(result, seed),
        "best_score_by_family.png": lambda: best_score_by_family(result),
        "confusion_matrix.png": lambda: confusion_matrix(result),
        "roc_curves.png": lambda: _one_vs_rest(result, "roc"),
        "precision_recall_curves.png": lambda: _one_vs_rest(result, "pr"),
        "calibration_curves.png": lambda: calibration_curves(result),
        "permutation_importance.png": lambda: permutation_feature_importance(result, seed),
        "feature_distributions.png": lambda: feature_distributions(result),
    }
    written = []
    for name in PLOT_FILES:
        with warnings.catch_warnings():
            # fANOVA and calibration warn about tiny samples; the figure says so itself.
            warnings.simplefilter("ignore", UserWarning)
            figure = figures[name]()
        written.append(_save(figure, directory / name))
    evaluation = result.winner.evaluation
    if evaluation.threshold is not None:
        positive = np.asarray(result.split.y_test) == evaluation.threshold.positive_class
        binary = binary_figures(
            positive, evaluation.positive_scores, evaluation.threshold.value, result.winner.family
        )
        written += [_save(figure, directory / name) for name, figure in binary.items()]
    return written
