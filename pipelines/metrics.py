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


def classification_metrics(
    y_true: Sequence[str], labels: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """The METRICS of one prediction (labels + probabilities in ``classes`` column order)."""
    y_true = np.asarray(y_true)
    classes = list(classes)
    if len(classes) == 2:
        # roc_auc_score wants the positive class's column for a binary problem.
        roc_auc = roc_auc_score(y_true, probabilities[:, 1], labels=classes)
    else:
        roc_auc = roc_auc_score(y_true, probabilities, multi_class="ovr", labels=classes)
    return {
        "accuracy": float(accuracy_score(y_true, labels)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, labels)),
        "f1_macro": float(
            f1_score(y_true, labels, average="macro", labels=classes, zero_division=0)
        ),
        "roc_auc_ovr": float(roc_auc),
        "log_loss": float(log_loss(y_true, probabilities, labels=classes)),
    }


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
