"""Live quality: the labels sent as feedback against the decisions the API made.

Per version, over a window of request times: the labelled count and the coverage
(labelled / captured), accuracy and macro F1, for a binary version sensitivity and
specificity of its positive class (the stored decision is already at the version's
threshold), the confusion matrix (rows: the label, columns: the decision, in the
version's class order), and the difference from the version's test metrics at publish.
A version is flagged (``quality_drop``) when at least ``monitor.min_labelled`` records
are labelled and its live accuracy is more than ``monitor.max_quality_drop`` below its
test accuracy; ``bridge monitor`` then exits 3, as on drift.

Macro F1 follows scikit-learn's ``f1_score(average="macro", labels=classes,
zero_division=0)``, the way the test metrics were computed: every class of the version
counts, a class neither labelled nor decided scores 0. Plain numpy (the API imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from conf.settings import MonitorSettings
from registry_bridge.entities import ModelVersion
from registry_bridge.monitoring.feedback import Labelled, read_labelled
from registry_bridge.monitoring.inference_log import count_captured
from registry_bridge.store import ModelStore

# The live figures compared with the version's test_<metric> at publish.
COMPARED = ("accuracy", "f1_macro", "sensitivity", "specificity")


def confusion(truth: np.ndarray, decision: np.ndarray, classes: int) -> np.ndarray:
    """Counts of (label, decision) pairs, a ``classes × classes`` matrix (rows: the label);
    records without a decision (code -1) are left out."""
    decided = decision >= 0
    cells = truth[decided] * classes + decision[decided]
    return np.bincount(cells, minlength=classes * classes).reshape(classes, classes)


def figures(
    matrix: np.ndarray, classes: Sequence[str], positive_class: str | None = None
) -> dict[str, float | None]:
    """Accuracy and macro F1 of a confusion matrix; sensitivity and specificity of
    ``positive_class`` for two classes (None where a denominator is 0)."""
    total = int(matrix.sum())
    tp = np.diag(matrix).astype(float)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    result: dict[str, float | None] = {
        "accuracy": float(tp.sum() / total) if total else None,
        "f1_macro": float(f1.mean()) if total else None,
    }
    if positive_class is not None and len(classes) == 2 and positive_class in classes:
        p = list(classes).index(positive_class)
        q = 1 - p
        positives, negatives = matrix[p].sum(), matrix[q].sum()
        result["sensitivity"] = float(matrix[p, p] / positives) if positives else None
        result["specificity"] = float(matrix[q, q] / negatives) if negatives else None
    return result


def version_quality(
    version: ModelVersion | None,
    number: int,
    labelled: Labelled | None,
    captured: int,
    rules: MonitorSettings,
) -> dict[str, Any]:
    """One version's ``quality`` entry (``version`` None: its metadata is gone)."""
    classes = list(version.classes if version is not None else labelled.classes if labelled else [])
    positive = version.positive_class if version is not None and len(classes) == 2 else None
    k = len(classes)
    if labelled is not None and tuple(classes) != labelled.classes:  # same version: same classes
        index = {c: i for i, c in enumerate(classes)}
        table = np.array([index.get(c, -1) for c in labelled.classes] + [-1])
        truth, decision = table[labelled.truth], table[labelled.decision]
        known = truth >= 0
        truth, decision = truth[known], decision[known]
    elif labelled is not None:
        truth, decision = labelled.truth, labelled.decision
    else:
        truth = decision = np.empty(0, dtype=np.int64)
    matrix = confusion(truth, decision, k) if k else np.zeros((0, 0), dtype=np.int64)
    count = int(matrix.sum())
    live = figures(matrix, classes, positive)
    metrics = version.metrics if version is not None else {}
    test = {m: float(metrics[f"test_{m}"]) for m in COMPARED if f"test_{m}" in metrics}
    delta: dict[str, float | None] = {}
    for m in COMPARED:
        if m in test and m in live:
            value = live[m]
            delta[m] = None if value is None else value - test[m]
    judged = count >= rules.min_labelled
    accuracy = live["accuracy"]
    drop = (
        test["accuracy"] - accuracy
        if judged and accuracy is not None and "accuracy" in test
        else None
    )
    flagged = bool(drop is not None and drop > rules.max_quality_drop)
    if count == 0:
        status = "no_labels"
    elif not judged:
        status = "insufficient_labels"
    else:
        status = "quality_drop" if flagged else "ok"
    entry: dict[str, Any] = {
        "version": number,
        "status": status,
        "labelled": count,
        "captured": captured,
        "coverage": (count / captured) if captured else None,
        **live,
        "confusion": {
            "labels": classes,
            "rows": "label",
            "columns": "decision",
            "matrix": matrix.tolist(),
        },
        "test_metrics": test,
        "test_metrics_delta": delta,
        "judged": judged,
        "quality_drop": flagged,
    }
    if len(classes) == 2 and version is not None:
        entry["positive_class"] = version.positive_class
        entry["threshold"] = version.threshold
    return entry


def quality_section(
    store: ModelStore,
    rules: MonitorSettings,
    name: str,
    since: datetime,
    until: datetime,
    version: int | None = None,
    shown_version: int | None = None,
) -> dict[str, Any]:
    """``{"quality": [per version], "quality_drop", "quality_rules"}`` for the monitor report.

    Args:
        version: only this version; None: every version with labels in the window, and
            ``shown_version`` (the report's) even without any.
    """
    labelled = read_labelled(store.db, name, since, until, version)
    numbers = {version} if version is not None else set(labelled)
    if version is None and shown_version is not None:
        numbers.add(shown_version)
    known = {v.version: v for v in store.search_model_versions(name, include_deleted=True)}
    entries = [
        version_quality(
            known.get(n),
            n,
            labelled.get(n),
            count_captured(store.db, name, n, since),
            rules,
        )
        for n in sorted(numbers)
    ]
    return {
        "quality": entries,
        "quality_drop": any(e["quality_drop"] for e in entries),
        "quality_rules": {
            "max_quality_drop": rules.max_quality_drop,
            "min_labelled": rules.min_labelled,
            "metric": "accuracy",
        },
    }


def add_quality(
    report: dict[str, Any], store: ModelStore, rules: MonitorSettings, version: int | None
) -> dict[str, Any]:
    """The drift ``report`` with its window's :func:`quality_section` added (and returned)."""
    report.update(
        quality_section(
            store,
            rules,
            report["name"],
            datetime.fromisoformat(report["since"]),
            datetime.fromisoformat(report["until"]),
            version,
            report["version"],
        )
    )
    return report


def _shown(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def quality_table(report: dict[str, Any]) -> str:
    """The quality part of ``bridge monitor``'s text: one block per version."""
    entries = report.get("quality") or []
    rules = report.get("quality_rules") or {}
    lines = [
        f"live quality (labels sent as feedback; flagged when accuracy is more than "
        f"{rules.get('max_quality_drop', 0):.2f} below test, from "
        f"{rules.get('min_labelled', 0)} labelled):"
    ]
    for e in entries:
        coverage = "-" if e["coverage"] is None else f"{e['coverage']:.1%}"
        head = (
            f"  v{e['version']}: {e['labelled']} labelled of {e['captured']} captured "
            f"({coverage}) - {e['status'].replace('_', ' ')}"
        )
        lines.append(head.upper() if e["quality_drop"] else head)
        if not e["labelled"]:
            continue
        test, delta = e["test_metrics"], e["test_metrics_delta"]
        for metric in COMPARED:
            if metric not in e:
                continue
            compared = (
                f"  test {_shown(test[metric])}  change {_shown(delta.get(metric), True)}"
                if metric in test
                else ""
            )
            lines.append(f"    {metric:<12} {_shown(e[metric])}{compared}")
        labels = e["confusion"]["labels"]
        width = max([len(c) for c in labels] + [8])
        lines.append("    confusion (rows: label, columns: decision)")
        lines.append("    " + " " * width + "".join(f" {c[:width]:>{width}}" for c in labels))
        for label, row in zip(labels, e["confusion"]["matrix"], strict=True):
            lines.append(f"    {label:<{width}}" + "".join(f" {n:>{width}}" for n in row))
    if not entries:
        lines.append("  no version")
    return "\n".join(lines)
