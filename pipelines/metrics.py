"""Classification metrics shared by cross-validation and the held-out evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import clone
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold

from conf.contract import cv_mean_key, cv_std_key

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

# The metrics every trial reports (cv_<m>_mean / cv_<m>_std) and every candidate
# reports on the test split (test_<m>); see docs/run-contract.md.
METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "log_loss")
# The course lab's evaluation of a binary model at its decision threshold, positive =
# Abnormal (test_<m> on a binary candidate; docs/run-contract.md).
BINARY_METRICS: tuple[str, ...] = (
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "fpr",
    "fnr",
    "fdr",
    "accuracy",
    "auc",
)


def classification_metrics(
    y_true: Sequence[str], labels: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """The METRICS of one prediction (labels + probabilities in ``classes`` column order)."""
    truth = np.asarray(y_true)
    classes = list(classes)
    if len(classes) == 2:
        # roc_auc_score wants the positive class's column for a binary problem.
        roc_auc = roc_auc_score(truth, probabilities[:, 1], labels=classes)
    else:
        roc_auc = roc_auc_score(truth, probabilities, multi_class="ovr", labels=classes)
    return {
        "accuracy": float(accuracy_score(truth, labels)),
        "balanced_accuracy": float(balanced_accuracy_score(truth, labels)),
        "f1_macro": float(
            f1_score(truth, labels, average="macro", labels=classes, zero_division=0)
        ),
        "roc_auc_ovr": float(roc_auc),
        "log_loss": float(log_loss(truth, probabilities, labels=classes)),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def binary_metrics(
    positive: Sequence[bool] | np.ndarray,
    predicted_positive: Sequence[bool] | np.ndarray,
    scores: np.ndarray,
) -> dict[str, float]:
    """The lab's BINARY_METRICS and the confusion counts (``tp``, ``fp``, ``tn``, ``fn``).

    Args:
        positive: whether each row truly is the positive class.
        predicted_positive: whether the model (at its threshold) says it is.
        scores: P(positive) of each row (for the AUC).
    """
    truth = np.asarray(positive, dtype=bool)
    said = np.asarray(predicted_positive, dtype=bool)
    tp, fp = float(np.sum(truth & said)), float(np.sum(~truth & said))
    tn, fn = float(np.sum(~truth & ~said)), float(np.sum(truth & ~said))
    both_classes = truth.any() and not truth.all()
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "fpr": _ratio(fp, fp + tn),
        "fnr": _ratio(fn, fn + tp),
        "fdr": _ratio(fp, fp + tp),
        "accuracy": _ratio(tp + tn, len(truth)),
        "auc": float(roc_auc_score(truth, scores)) if both_classes else float("nan"),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def threshold_sweep(
    positive: Sequence[bool] | np.ndarray, scores: np.ndarray, thresholds: np.ndarray
) -> dict[str, np.ndarray]:
    """BINARY_METRICS (AUC aside) and F1 at each of ``thresholds``, for the plots."""
    rows = [binary_metrics(positive, scores >= t, scores) for t in thresholds]
    sweep = {name: np.array([r[name] for r in rows]) for name in BINARY_METRICS if name != "auc"}
    precision, recall = sweep["precision"], sweep["sensitivity"]
    sweep["f1"] = np.where(
        precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0
    )
    return sweep


def evaluation_metrics(
    y_true: Sequence[str],
    labels: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
    positive_class: str | None = None,
) -> dict[str, float]:
    """METRICS, per-class metrics and, for a binary model, the lab's at its labels."""
    metrics = {
        **classification_metrics(y_true, labels, probabilities, classes),
        **per_class_metrics(y_true, labels, classes),
    }
    if positive_class is not None:
        column = [str(c) for c in classes].index(positive_class)
        metrics.update(
            binary_metrics(
                np.asarray(y_true) == positive_class,
                np.asarray(labels) == positive_class,
                np.asarray(probabilities)[:, column],
            )
        )
    return metrics


def per_class_metrics(
    y_true: Sequence[str], labels: Sequence[str], classes: Sequence[str]
) -> dict[str, float]:
    """``precision_<class>``, ``recall_<class>`` and ``f1_<class>`` for every class."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, labels, labels=list(classes), zero_division=0
    )
    result: dict[str, float] = {}
    for index, name in enumerate(classes):
        result[f"precision_{name}"] = float(precision[index])
        result[f"recall_{name}"] = float(recall[index])
        result[f"f1_{name}"] = float(f1[index])
    return result


def summarise_folds(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """``cv_<m>_mean`` and ``cv_<m>_std`` over the folds scored so far."""
    summary: dict[str, float] = {}
    for name in METRICS:
        values = np.array([fold[name] for fold in fold_metrics], dtype=float)
        summary[cv_mean_key(name)] = float(values.mean())
        summary[cv_std_key(name)] = float(values.std())
    return summary


def cross_validate(
    pipeline: Pipeline,
    features: pd.DataFrame,
    labels: pd.Series,
    folds: int,
    seed: int,
    on_fold: Callable[[int, list[dict[str, float]]], None] | None = None,
) -> list[dict[str, float]]:
    """Score ``pipeline`` by stratified k-fold CV, one METRICS dict per fold.

    Folds run one after the other so ``on_fold(index, scores_so_far)`` can report
    intermediate values and stop a bad trial early (by raising ``optuna.TrialPruned``).
    """
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores: list[dict[str, float]] = []
    for index, (train_rows, test_rows) in enumerate(splitter.split(features, labels)):
        model = clone(pipeline).fit(features.iloc[train_rows], labels.iloc[train_rows])
        held_out = features.iloc[test_rows]
        scores.append(
            classification_metrics(
                labels.iloc[test_rows],
                model.predict(held_out),
                model.predict_proba(held_out),
                model.classes_,
            )
        )
        if on_fold is not None:
            on_fold(index, scores)
    return scores
