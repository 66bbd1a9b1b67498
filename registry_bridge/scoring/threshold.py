"""The decision rule of a binary version: its label comes from a threshold on P(positive).

A binary version (the 2-class variant) stores ``threshold`` and ``positive_class``; a
row is labelled the positive class when its probability of that class is at least the
threshold, the other class otherwise, and the probability reported for the row is the
positive class's. Training (the recorded evaluation), publishing and activation (the
parity checks) and serving (``registry_bridge.scoring.columns.decide``) all decide with
:func:`threshold_labels`, so they cannot disagree. Plain numpy: the CLI imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def threshold_labels(
    probabilities: np.ndarray, classes: Sequence[str], threshold: float, positive_class: str
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's label column (in ``classes``) and P(positive), two-class probabilities.

    Raises:
        ValueError: ``classes`` are not two or do not include ``positive_class``.
    """
    names = [str(c) for c in classes]
    if len(names) != 2 or positive_class not in names:
        raise ValueError(
            f"a decision threshold needs two classes including {positive_class!r}, got {names}"
        )
    positive = names.index(positive_class)
    positive_probability = np.asarray(probabilities)[:, positive]
    column = np.where(positive_probability >= threshold, positive, 1 - positive).astype(np.intp)
    return column, positive_probability


def decide(
    probabilities: np.ndarray, classes: Sequence[str], threshold: float, positive_class: str
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (class names) and P(positive) of two-class ``probabilities`` at ``threshold``."""
    column, positive_probability = threshold_labels(
        probabilities, classes, threshold, positive_class
    )
    return np.asarray([str(c) for c in classes], dtype=object)[column], positive_probability
