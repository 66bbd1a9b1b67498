"""Choosing a binary model's decision threshold on its cross-validation folds.

The rule (setting ``training.threshold_rule``) is Youden's J (the threshold with the
largest sensitivity + specificity - 1), the F1 of the positive class, or a fixed value.
It is applied to the out-of-fold probabilities of the training split, so the test split
stays unseen until the model, threshold included, is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_predict

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

RULES = ("youden", "f1")


@dataclass(frozen=True)
class Threshold:
    """A binary model's decision threshold on P(``positive_class``) and how it was chosen."""

    value: float
    rule: str  # "youden", "f1" or "fixed"
    positive_class: str

    def to_card(self) -> dict[str, Any]:
        """The model card's (and the version document's) fields."""
        return {
            "threshold": self.value,
            "threshold_rule": self.rule,
            "positive_class": self.positive_class,
        }


def rule_threshold(positive: np.ndarray, scores: np.ndarray, rule: str) -> tuple[float, str]:
    """The threshold ``rule`` picks for true ``positive`` flags and their ``scores``.

    Returns:
        (threshold, rule name): ``"fixed"`` when ``rule`` is a number.
    """
    if rule == "youden":
        fpr, tpr, thresholds = roc_curve(positive, scores)
        finite = np.isfinite(thresholds)  # roc_curve's first threshold is +inf
        best = int(np.argmax((tpr - fpr)[finite]))
        return float(thresholds[finite][best]), rule
    if rule == "f1":
        precision, recall, thresholds = precision_recall_curve(positive, scores)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        return float(thresholds[int(np.argmax(f1))]), rule
    return float(rule), "fixed"


def out_of_fold_scores(
    pipeline: Pipeline,
    features: pd.DataFrame,
    labels: pd.Series,
    positive_class: str,
    folds: int,
    seed: int,
) -> np.ndarray:
    """P(positive) of each training row from the fold model that did not see it."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(
        pipeline, features, labels, cv=splitter, method="predict_proba"
    )
    classes = sorted(str(c) for c in set(labels))  # predict_proba's column order
    return probabilities[:, classes.index(positive_class)]


def choose_threshold(
    pipeline: Pipeline,
    features: pd.DataFrame,
    labels: pd.Series,
    positive_class: str,
    rule: str,
    folds: int,
    seed: int,
) -> Threshold:
    """The threshold ``rule`` gives on the out-of-fold probabilities of the training rows."""
    if rule not in RULES:
        return Threshold(float(rule), "fixed", positive_class)
    scores = out_of_fold_scores(pipeline, features, labels, positive_class, folds, seed)
    value, name = rule_threshold(np.asarray(labels) == positive_class, scores, rule)
    return Threshold(value, name, positive_class)
