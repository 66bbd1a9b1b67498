"""The decision rule of a binary version: its label comes from a threshold on P(positive).

A binary version (the 2-class variant) stores ``threshold`` and ``positive_class``; a
row is labelled the positive class when its probability of that class is at least the
threshold, the other class otherwise, and the probability reported for the row is the
positive class's. Training (the recorded evaluation), publishing (the parity check)
and serving (the scoring core) all decide with :func:`decide`, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def decide(
    probabilities: np.ndarray, classes: Sequence[str], threshold: float, positive_class: str
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(positive) of rows of two-class ``probabilities`` (``classes`` order).

    Raises:
        ValueError: ``classes`` are not two or do not include ``positive_class``.
    """
    names = [str(c) for c in classes]
    if len(names) != 2 or positive_class not in names:
        raise ValueError(
            f"a decision threshold needs two classes including {positive_class!r}, got {names}"
        )
    column = names.index(positive_class)
    negative = names[1 - column]
    positive_probability = np.asarray(probabilities)[:, column]
    labels = np.where(positive_probability >= threshold, positive_class, negative).astype(object)
    return labels, positive_probability
