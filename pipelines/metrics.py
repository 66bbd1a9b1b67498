"""Classification metrics shared by cross-validation, the held-out evaluation, publishing
and the promotion gate: the one implementation of each, in numpy only.

Each function gives what scikit-learn 1.9's function named in its docstring gives on the
same inputs (tests/test_metrics_parity.py checks every one to 1e-12 on random cases:
two and three classes, string labels, tied scores, a class missing from the truth or the
predictions, probabilities of exactly 0 and 1). scikit-learn is not imported here:
importing it costs about 1 s in a fresh process (``bridge activate``'s cold gate took
1.17 s against 0.037 s in a running one, issue 24), and the gate's budget is 1 s.

Where they differ from scikit-learn, on purpose:

- nothing warns: an AUC that is not defined (one class in the truth) is NaN, as
  scikit-learn returns it after its ``UndefinedMetricWarning``; rows of probabilities
  that do not quite sum to 1 are scored as they are, as scikit-learn scores them after
  its ``UserWarning``.
- the columns of ``probabilities`` follow ``classes`` in the order given. scikit-learn
  assumes sorted columns (``log_loss`` warns and reads them sorted, the multi-class AUC
  refuses unsorted labels); a fitted model's ``classes_`` is always sorted, so the two
  agree wherever training, publishing or the gate call them.

Where scikit-learn raises ValueError these do too: a true label outside ``classes``,
fewer than two classes, probabilities outside [0, 1] or not finite, a multi-class row
that does not sum to 1 (``np.allclose``) for the AUC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

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


def _codes(values: Sequence[Any] | np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    """Each value's index in ``classes``; -1 for a value that is not one of them."""
    index = {c: i for i, c in enumerate(classes)}
    return np.fromiter((index.get(v, -1) for v in values), dtype=np.intp, count=len(values))


def _checked_classes(classes: Sequence[Any]) -> list[Any]:
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be unique, got {classes}")
    if len(classes) < 2:
        raise ValueError(f"the metrics need at least two classes, got {classes}")
    return classes


def _true_codes(y_true: Sequence[Any] | np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    codes = _codes(y_true, classes)
    if (codes < 0).any():
        undeclared = sorted({str(v) for v, c in zip(y_true, codes, strict=True) if c < 0})
        raise ValueError(f"y_true contains values {undeclared} not in classes {list(classes)}")
    return codes


def _probabilities(probabilities: np.ndarray, columns: int) -> np.ndarray:
    """``probabilities`` as scikit-learn's ``check_array`` leaves them: float64, float32
    and float16 kept, anything else as float64; 2-D with one column per class."""
    proba = np.asarray(probabilities)
    if proba.dtype not in (np.float64, np.float32, np.float16):
        proba = proba.astype(np.float64)
    if proba.ndim != 2 or proba.shape[1] != columns:
        raise ValueError(f"probabilities must have shape (rows, {columns}), got {proba.shape}")
    if not np.isfinite(proba).all():
        raise ValueError("probabilities contain NaN or infinity")
    return proba


def accuracy(y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray) -> float:
    """The share of labels that are right: ``accuracy_score(y_true, y_pred)``."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def balanced_accuracy(
    y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray
) -> float:
    """The mean recall of the classes present in the truth: ``balanced_accuracy_score``
    (a predicted class absent from the truth has no recall and is left out; scikit-learn
    also warns then)."""
    truth, said = np.asarray(y_true), np.asarray(y_pred)
    present, rows = np.unique(truth, return_inverse=True)
    rows = rows.reshape(-1)
    right = truth == said
    k = len(present)
    per_class = np.bincount(rows[right], minlength=k) / np.bincount(rows, minlength=k)
    return float(np.mean(per_class))


def precision_recall_f1(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    classes: Sequence[Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class of ``classes`` (in that order): precision, recall and F1, 0 where a
    denominator is 0: ``precision_recall_fscore_support(labels=classes, zero_division=0)``.
    Labels outside ``classes`` count for no class."""
    k = len(classes)
    truth, said = _codes(y_true, classes), _codes(y_pred, classes)
    tp = np.bincount(truth[(truth == said) & (truth >= 0)], minlength=k).astype(np.float64)
    true_sum = np.bincount(truth[truth >= 0], minlength=k).astype(np.float64)
    pred_sum = np.bincount(said[said >= 0], minlength=k).astype(np.float64)

    def divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        zero = denominator == 0
        result = numerator / np.where(zero, 1.0, denominator)
        result[zero] = 0.0
        return result

    # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (true + predicted), as scikit-learn writes it.
    return divide(tp, pred_sum), divide(tp, true_sum), divide(2.0 * tp, true_sum + pred_sum)


def f1_macro(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    classes: Sequence[Any],
) -> float:
    """The unweighted mean F1 over ``classes``:
    ``f1_score(average="macro", labels=classes, zero_division=0)``."""
    return float(np.mean(precision_recall_f1(y_true, y_pred, classes)[2]))


def roc_auc(positive: Sequence[bool] | np.ndarray, scores: np.ndarray) -> float:
    """The ROC AUC of ``scores`` for telling the ``positive`` rows from the others:
    ``roc_auc_score(positive, scores)``; NaN when the rows are all of one kind (scikit-learn
    warns and returns NaN).

    It is the Mann-Whitney statistic with mid-ranks for tied scores, the area under
    scikit-learn's ROC curve (which joins tied scores by one straight segment).
    """
    truth = np.asarray(positive, dtype=bool).reshape(-1)
    values = np.asarray(scores).reshape(-1)
    if values.shape != truth.shape:
        raise ValueError(f"{truth.size} labels but {values.size} scores")
    if not np.isfinite(values).all():
        raise ValueError("scores contain NaN or infinity")
    n_positive = int(truth.sum())
    n_negative = truth.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Mid-ranks (1-based): a run of equal scores at sorted places i..j shares (i + j + 2) / 2.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], values.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    u = ranks[truth].sum() - n_positive * (n_positive + 1) / 2.0
    return float(u / (n_positive * n_negative))


def roc_auc_ovr(
    y_true: Sequence[Any] | np.ndarray, probabilities: np.ndarray, classes: Sequence[Any]
) -> float:
    """For two classes the AUC of the second class's column; for more, the mean over the
    classes of each one-vs-rest AUC (NaN when a class is missing from the truth, as
    scikit-learn's mean of its NaN): ``roc_auc_score(y_true, probabilities[:, 1])`` and
    ``roc_auc_score(y_true, probabilities, multi_class="ovr", labels=classes)``."""
    classes = _checked_classes(classes)
    truth = _true_codes(y_true, classes)
    proba = _probabilities(probabilities, len(classes))
    if len(classes) == 2:
        return roc_auc(truth == 1, proba[:, 1])
    if not np.allclose(1, proba.sum(axis=1)):
        raise ValueError("probabilities of more than two classes must sum to 1 in each row")
    return float(np.mean([roc_auc(truth == c, proba[:, c]) for c in range(len(classes))]))


def log_loss(
    y_true: Sequence[Any] | np.ndarray, probabilities: np.ndarray, classes: Sequence[Any]
) -> float:
    """The mean negative log-probability of the true class: ``log_loss(y_true,
    probabilities, labels=classes)``. As scikit-learn 1.9 does, probabilities are clipped
    to [eps, 1 - eps] (eps of their float type) and not renormalised."""
    classes = _checked_classes(classes)
    truth = _true_codes(y_true, classes)
    proba = _probabilities(probabilities, len(classes))
    if proba.max() > 1:
        raise ValueError(f"probabilities contain values greater than 1: {proba.max()}")
    if proba.min() < 0:
        raise ValueError(f"probabilities contain values lower than 0: {proba.min()}")
    eps = np.finfo(proba.dtype).eps
    proba = np.clip(proba, eps, 1 - eps)
    one_hot = (truth[:, None] == np.arange(len(classes))).astype(proba.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = one_hot * np.log(proba)
    loss = -np.sum(np.where(one_hot == 0.0, np.zeros((), dtype=terms.dtype), terms), axis=1)
    return float(np.average(loss))


def classification_metrics(
    y_true: Sequence[str], labels: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """The METRICS of one prediction (labels + probabilities in ``classes`` column order)."""
    truth = np.asarray(y_true)
    classes = list(classes)
    return {
        "accuracy": accuracy(truth, labels),
        "balanced_accuracy": balanced_accuracy(truth, labels),
        "f1_macro": f1_macro(truth, labels, classes),
        "roc_auc_ovr": roc_auc_ovr(truth, probabilities, classes),
        "log_loss": log_loss(truth, probabilities, classes),
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
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "fpr": _ratio(fp, fp + tn),
        "fnr": _ratio(fn, fn + tp),
        "fdr": _ratio(fp, fp + tp),
        "accuracy": _ratio(tp + tn, len(truth)),
        "auc": roc_auc(truth, scores),
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
    precision, recall, f1 = precision_recall_f1(y_true, labels, classes)
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
    # Imported here, not with the module: scikit-learn costs about 1 s to import, and the
    # promotion gate of a fresh `bridge activate` imports this module for its metrics
    # only (1.17 s against a 1 s goal with scikit-learn imported, measured; issue 24).
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

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
